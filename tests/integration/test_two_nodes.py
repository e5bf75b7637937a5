"""Two archive nodes, one PostgreSQL index, one S3-compatible object store: a cluster, from the outside.

Two ``flask --app wsgi archive serve`` child processes, each with its own instance folder (its local
journal) and its own DICOM port, share the tests' PostgreSQL server and moto's S3 server, as nodes
on two machines behind a modality configuration or a TCP load balancer do. Modalities store through
both at once (DCMTK storescu on one, pynetdicom on the other); a workstation queries and retrieves
through the *other* node; one node is killed with kill -9 while a storescu is sending to it, then
started again. What the senders saw acknowledged (C-STORE success, recorded on the sending side) is
what must be in the index and the bucket, byte for byte.
"""

from __future__ import annotations

import hashlib
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)
from sqlalchemy import create_engine, text

from archive_core.part10 import dataset_offset
from tests.helpers import free_port, make_ct, move_to_storescp, qr_identifier, require_tool, tool_env
from tests.servers import ArchiveProcess

pytestmark = [pytest.mark.dcmtk, pytest.mark.postgres, pytest.mark.filterwarnings("ignore::ResourceWarning")]


def _node(tmp_path: Path, name: str, database_url: str, s3_server, bucket: str) -> ArchiveProcess:
    env = {**s3_server.env, "ARCHIVAGE_DATABASE_URL": database_url,
           "ARCHIVAGE_STORAGE_URL": f"s3://{bucket}/objects",
           "ARCHIVAGE_ARCHIVE_TIER_STORAGE_URL": f"s3://{bucket}/archive-tier",
           "ARCHIVAGE_S3_ENDPOINT_URL": s3_server.url, "ARCHIVAGE_S3_ADDRESSING_STYLE": "path"}
    return ArchiveProcess(tmp_path / name / "instance", env=env)


def _write_study(folder: Path, count: int, *, rows: int = 16, patient_id: str = "PAT001") -> dict[str, Path]:
    """*count* CT files of one new study in *folder*; SOP Instance UID -> file."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    files = {}
    for i in range(count):
        ds = make_ct(study_uid=study, series_uid=series, InstanceNumber=i + 1, rows=rows, patient_id=patient_id)
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files[str(ds.SOPInstanceUID)] = path
    return files


def _dataset_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return data[dataset_offset(data):]


def _acknowledged_by_storescu(log: str) -> list[Path]:
    """The files storescu (-v) saw a C-STORE success for: each "Sending file" followed by a success response."""
    acked, current = [], None
    for line in log.splitlines():
        if "Sending file: " in line:
            current = Path(line.split("Sending file: ", 1)[1].strip())
        elif "Received Store Response (Success)" in line and current is not None:
            acked.append(current)
            current = None
    return acked


def _storescu(node: ArchiveProcess, files: list[Path], log_path: Path) -> subprocess.Popen:
    command_file = log_path.with_suffix(".args")
    command_file.write_text("".join(f'"{p}"\n' for p in files))
    with log_path.open("wb") as log:
        return subprocess.Popen([require_tool("storescu"), "-v", "-aet", "MODALITY", "-aec", "ARCHIVAGE",
                                 "127.0.0.1", str(node.port), f"@{command_file}"],
                                env=tool_env(), stdout=log, stderr=subprocess.STDOUT)


def _pynetdicom_store(node: ArchiveProcess, files: dict[str, Path], acked: dict[str, bytes],
                      errors: list[str]) -> None:
    """Send *files* on one association; record each acknowledged object's dataset bytes in *acked*."""
    ae = AE(ae_title="MODALITY2")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="ARCHIVAGE")
    if not assoc.is_established:
        errors.append("association refused")
        return
    try:
        for uid, path in files.items():
            status = assoc.send_c_store(dcmread(path))
            if "Status" in status and status.Status == 0x0000:
                acked[uid] = _dataset_bytes(path)
            else:
                errors.append(f"{uid}: {status}")
    finally:
        assoc.release()


def _find_studies(node: ArchiveProcess, study_uid: str) -> list[str]:
    """C-FIND (study root, STUDY level) for *study_uid* through *node*: the NumberOfStudyRelatedInstances answered."""
    ae = AE(ae_title="WORKSTATION")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="ARCHIVAGE")
    assert assoc.is_established
    try:
        identifier = qr_identifier("STUDY", StudyInstanceUID=study_uid, NumberOfStudyRelatedInstances="")
        return [str(ds.NumberOfStudyRelatedInstances) for status, ds in
                assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)
                if status and status.Status in (0xFF00, 0xFF01)]
    finally:
        assoc.release()


def _get_study(node: ArchiveProcess, study_uid: str) -> dict[str, bytes]:
    """C-GET of *study_uid* through *node* (pynetdicom, as a viewer would): SOP Instance UID -> dataset bytes."""
    from pynetdicom import build_role, evt

    got: dict[str, bytes] = {}

    def on_store(event):
        got[str(event.request.AffectedSOPInstanceUID)] = bytes(event.request.DataSet.getvalue())
        return 0x0000

    ae = AE(ae_title="WORKSTATION")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="ARCHIVAGE",
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    try:
        statuses = [s.Status for s, _ in assoc.send_c_get(qr_identifier("STUDY", StudyInstanceUID=study_uid),
                                                         StudyRootQueryRetrieveInformationModelGet)]
        assert statuses and statuses[-1] == 0x0000, statuses
    finally:
        assoc.release()
    return got


def _indexed(database_url: str) -> dict[str, tuple[str, str]]:
    """SOP Instance UID -> (checksum, storage key) of every visible row of the shared index."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT sop_instance_uid, checksum_sha256, storage_key FROM instance "
                                     "WHERE deleted_at IS NULL")).all()
    finally:
        engine.dispose()
    return {uid: (checksum, key) for uid, checksum, key in rows}


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)  # another process's progress (a log file): there is no event to wait on


def test_two_nodes_share_index_and_bucket_and_a_kill_9_mid_stream_loses_nothing_acknowledged(
        tmp_path, postgres_url, s3_server):
    """Bad input: one node dies by kill -9 while storescu is sending to it (and the other node is
    receiving at the same time). Every object a sender saw acknowledged, on either node, is indexed
    once in PostgreSQL with the SHA-256 of the bytes sent and is in the bucket byte-identical; studies
    stored through one node are found (C-FIND) and retrieved (C-MOVE to storescp, C-GET) through the
    other as soon as the storing association is released; `archive fsck` on each node is clean."""
    from tests.conftest import _reset_postgres

    _reset_postgres(postgres_url)
    bucket = s3_server.create_bucket(f"cluster-{uuid.uuid4().hex[:12]}")
    a = _node(tmp_path, "node-a", postgres_url, s3_server, bucket).start()
    b = _node(tmp_path, "node-b", postgres_url, s3_server, bucket)
    try:
        b.start()  # its own journal, its own port: nothing the first node holds stops it
        dest_port = free_port()
        for ae, port in (("WORKSTATION", 104), ("DEST", dest_port)):
            added = b.cli("peers", "add", ae, "127.0.0.1", str(port))  # one registry: the shared database
            assert added.returncode == 0, added.stderr

        # 1. Ingest through both at once: storescu to A, pynetdicom to B.
        via_a = _write_study(tmp_path / "study-a", 12, patient_id="PAT-A")
        via_b = _write_study(tmp_path / "study-b", 12, patient_id="PAT-B")
        acked_b: dict[str, bytes] = {}
        errors: list[str] = []
        sender_b = threading.Thread(target=_pynetdicom_store, args=(b, via_b, acked_b, errors))
        sender_b.start()
        storescu_a = _storescu(a, list(via_a.values()), tmp_path / "storescu-a.log")
        assert storescu_a.wait(60) == 0, (tmp_path / "storescu-a.log").read_text()[-2000:]
        sender_b.join(60)
        assert not errors and len(acked_b) == len(via_b), errors
        acked = {uid: _dataset_bytes(path) for uid, path in via_a.items()
                 if path in _acknowledged_by_storescu((tmp_path / "storescu-a.log").read_text())}
        assert len(acked) == len(via_a)
        acked.update(acked_b)

        # 2. Right after each release, the other node finds and retrieves what was stored.
        study_a = str(dcmread(next(iter(via_a.values()))).StudyInstanceUID)
        study_b = str(dcmread(next(iter(via_b.values()))).StudyInstanceUID)
        assert _find_studies(b, study_a) == [str(len(via_a))]
        assert _find_studies(a, study_b) == [str(len(via_b))]
        assert move_to_storescp(b.port, study_a, dest_port, tmp_path / "moved") == {u: acked[u] for u in via_a}
        assert _get_study(a, study_b) == {u: acked[u] for u in via_b}

        # 3. kill -9 node A while storescu is sending to it; node B keeps receiving meanwhile.
        # ~20 MB: storescu is still sending when the node dies, even on a fast machine.
        doomed = _write_study(tmp_path / "study-c", 150, rows=256, patient_id="PAT-C")
        beside = _write_study(tmp_path / "study-d", 10, patient_id="PAT-D")
        acked_d: dict[str, bytes] = {}
        sender_d = threading.Thread(target=_pynetdicom_store, args=(b, beside, acked_d, errors))
        log_c = tmp_path / "storescu-c.log"
        storescu_c = _storescu(a, list(doomed.values()), log_c)
        sender_d.start()
        _wait_for(lambda: len(_acknowledged_by_storescu(log_c.read_text(errors="replace"))) >= 5, 30,
                  "storescu did not get 5 acknowledgements")
        a.kill()
        assert storescu_c.wait(30) != 0  # the sender saw the association die
        sender_d.join(60)
        assert not errors and len(acked_d) == len(beside), errors
        acked_c = _acknowledged_by_storescu(log_c.read_text(errors="replace"))
        assert 5 <= len(acked_c) < len(doomed), "the kill did not land mid-stream"
        by_path = {path: uid for uid, path in doomed.items()}
        acked.update({by_path[p]: _dataset_bytes(p) for p in acked_c})
        acked.update(acked_d)

        a.start()  # same instance folder (its journal is replayed), same port
        # The replay ends before the node answers; a query through B sees what A acknowledged.
        study_c = str(dcmread(next(iter(doomed.values()))).StudyInstanceUID)
        found = _find_studies(b, study_c)
        assert found and int(found[0]) >= len(acked_c), found

        index = _indexed(postgres_url)
        assert set(acked) <= set(index), sorted(set(acked) - set(index))[:5]
        for uid, data in acked.items():
            assert index[uid][0] == hashlib.sha256(data).hexdigest(), uid  # checksum of what was sent
        objects = s3_server.objects(bucket, "objects/")
        for uid, data in acked.items():
            stored = objects[index[uid][1]]
            assert stored[dataset_offset(stored):] == data, uid
        assert _get_study(b, study_c).keys() >= {by_path[p] for p in acked_c}

        for node in (a, b):
            fsck = node.cli("archive", "fsck")
            assert fsck.returncode == 0, fsck.stdout + fsck.stderr
            assert f"checked {len(index)} instances, 0 problems" in fsck.stdout, fsck.stdout + fsck.stderr
    finally:
        a.stop()
        b.stop()
