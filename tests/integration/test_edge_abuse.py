"""The SCP's edge under abuse: silent connections, idle associations, oversized and huge objects.

Each test runs against ``flask --app wsgi archive serve`` as a child process (or, for the idle
timeout, the server started in-process as ``archive serve`` starts it), with real clients:
DCMTK ``storescu`` and pynetdicom.
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import time
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from archive_core.part10 import dataset_offset
from tests.helpers import archive_server, make_ct, require_tool, tool_env
from tests.servers import ArchiveProcess

PER_ADDRESS = 3
TOTAL = 5
ACSE_TIMEOUT = 2
MAX_OBJECT = 1_000_000


@pytest.fixture(scope="module")
def edge_server(tmp_path_factory):
    """``archive serve`` with small limits, so that the tests reach them quickly.

    Its temporary folder is its own, to be looked at: nothing received may be left there either.
    """
    tmpdir = tmp_path_factory.mktemp("edge-tmp")
    server = ArchiveProcess(
        tmp_path_factory.mktemp("edge") / "instance",
        env={
            "TMPDIR": str(tmpdir),
            "ARCHIVAGE_DICOM_MAX_ASSOCIATIONS": str(TOTAL),
            "ARCHIVAGE_DICOM_MAX_ASSOCIATIONS_PER_ADDRESS": str(PER_ADDRESS),
            "ARCHIVAGE_DICOM_ACSE_TIMEOUT": str(ACSE_TIMEOUT),
            "ARCHIVAGE_DICOM_MAX_OBJECT_BYTES": str(MAX_OBJECT),
        },
    )
    server.tmpdir = tmpdir
    server.start()
    yield server
    server.stop()


def _associate(port: int, *, ae_title: str = "MODALITY", source: str = "127.0.0.1"):
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    return ae.associate("127.0.0.1", port, ae_title="ARCHIVAGE", bind_address=(source, 0))


def _rejection(assoc) -> tuple[int, int, int] | None:
    """(result, source, diagnostic) of the A-ASSOCIATE-RJ the association got, or None."""
    if not assoc.is_rejected:
        return None
    rj = assoc.acceptor.primitive
    return (rj.result, rj.result_source, rj.diagnostic)


def _stored_datasets(instance_path: Path) -> dict[str, bytes]:
    """SOP Instance UID -> the dataset bytes of every object under the store's objects/."""
    out = {}
    for path in (instance_path / "storage" / "objects").rglob("*.dcm"):
        data = path.read_bytes()
        out[path.stem] = data[dataset_offset(data):]
    return out


def _store_with_pynetdicom(port: int, ds, *, source: str = "127.0.0.1") -> int:
    assoc = _associate(port, source=source)
    assert assoc.is_established, _rejection(assoc)
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def _dataset_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return data[dataset_offset(data):]


def test_fifty_silent_connections_do_not_keep_a_modality_out(edge_server, tmp_path):
    """Bad input: 50 TCP connections that never send an A-ASSOCIATE-RQ (ten times the limit).

    Before, pynetdicom counted them as associations: every modality was refused until its
    30 s ACSE timeout closed them. DCMTK storescu and pynetdicom must still store at once.
    """
    storescu = require_tool("storescu")
    silent = [socket.create_connection(("127.0.0.1", edge_server.port), timeout=5) for _ in range(50)]
    try:
        ct = make_ct(patient_id="EDGE1")
        path = tmp_path / "ct.dcm"
        ct.save_as(path, enforce_file_format=True)
        started = time.monotonic()
        done = subprocess.run(
            [storescu, "-aet", "MODALITY", "-aec", "ARCHIVAGE", "127.0.0.1", str(edge_server.port), str(path)],
            env=tool_env(), capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        other = make_ct(patient_id="EDGE1")
        assert _store_with_pynetdicom(edge_server.port, other) == 0x0000
        assert time.monotonic() - started < 5
        stored = _stored_datasets(edge_server.instance_path)
        assert stored[ct.SOPInstanceUID] == _dataset_bytes(path)
        assert other.SOPInstanceUID in stored
    finally:
        for s in silent:
            s.close()


def test_a_silent_connection_is_closed_after_the_acse_timeout(edge_server):
    """Bad input: a connection that stays silent; the server closes it after DICOM_ACSE_TIMEOUT."""
    with socket.create_connection(("127.0.0.1", edge_server.port), timeout=ACSE_TIMEOUT + 10) as s:
        started = time.monotonic()
        assert s.recv(1) == b""  # end of stream: the server closed it
        assert time.monotonic() - started < ACSE_TIMEOUT + 5


def test_idle_associations_from_one_address_leave_room_for_others(edge_server):
    """Bad input: an unregistered AE opens idle associations from one address until refused.

    The one over DICOM_MAX_ASSOCIATIONS_PER_ADDRESS gets an A-ASSOCIATE-RJ (transient, local
    limit exceeded); a modality on another address still stores; the total limit refuses a
    third address once all slots are taken, and a released slot is free again.
    """
    idle = [_associate(edge_server.port, ae_title="INTRUS") for _ in range(PER_ADDRESS)]
    try:
        assert all(a.is_established for a in idle)
        refused = _associate(edge_server.port, ae_title="INTRUS")
        assert _rejection(refused) == (0x02, 0x03, 0x02)  # rejected-transient, local limit exceeded
        assert "(calling AE INTRUS) rejected" in edge_server.log()

        ct = make_ct(patient_id="EDGE2")
        assert _store_with_pynetdicom(edge_server.port, ct, source="127.0.0.2") == 0x0000
        assert ct.SOPInstanceUID in _stored_datasets(edge_server.instance_path)

        # Fill the remaining slots from 127.0.0.2; a third address is then over the total.
        more = [_associate(edge_server.port, source="127.0.0.2") for _ in range(TOTAL - PER_ADDRESS)]
        idle += more
        assert all(a.is_established for a in more)
        assert _rejection(_associate(edge_server.port, source="127.0.0.3")) == (0x02, 0x03, 0x02)
    finally:
        for a in idle:
            if a.is_established:
                a.release()
    # Released associations free their slots.
    assert _store_with_pynetdicom(edge_server.port, make_ct(), source="127.0.0.3") == 0x0000


def test_an_object_over_the_maximum_size_is_refused_and_nothing_is_stored(edge_server, tmp_path):
    """Bad input: a 2 MB CT where DICOM_MAX_OBJECT_BYTES is 1 MB, sent by storescu and pynetdicom.

    Answered 0xA700 with an Error Comment naming the limit; neither the store nor its journal keeps
    any of it; an object under the limit is stored on the same association.
    """
    big = make_ct(patient_id="EDGE3", rows=1024)  # 2 MiB of pixel data
    small = make_ct(patient_id="EDGE3")
    assoc = _associate(edge_server.port)
    assert assoc.is_established
    try:
        refused = assoc.send_c_store(big)
        accepted = assoc.send_c_store(small)
    finally:
        assoc.release()
    assert int(refused.Status) == 0xA700
    assert "limit" in str(refused.ErrorComment)
    assert int(accepted.Status) == 0x0000

    path = tmp_path / "big.dcm"
    big2 = make_ct(patient_id="EDGE3", rows=1024)
    big2.save_as(path, enforce_file_format=True)
    done = subprocess.run(
        [require_tool("storescu"), "-v", "-aec", "ARCHIVAGE", "127.0.0.1", str(edge_server.port), str(path)],
        env=tool_env(), capture_output=True, text=True, timeout=60,
    )
    assert "Received Store Response (Refused: OutOfResources)" in done.stdout + done.stderr

    stored = _stored_datasets(edge_server.instance_path)
    assert small.SOPInstanceUID in stored
    assert big.SOPInstanceUID not in stored and big2.SOPInstanceUID not in stored
    journal = edge_server.instance_path / "storage" / "incoming"
    assert not [p for p in journal.iterdir() if big.SOPInstanceUID in p.name or big2.SOPInstanceUID in p.name]
    # What arrived of the refused objects is gone too (it was received into the journal's folder).
    assert not list(journal.glob("receiving-*")) and list(edge_server.tmpdir.iterdir()) == []


def test_an_idle_association_is_aborted_after_the_network_timeout(tmp_path):
    """Bad input: an association that stays open doing nothing; DICOM_NETWORK_TIMEOUT aborts it."""
    with archive_server(tmp_path, DICOM_NETWORK_TIMEOUT=1) as (_archive, running):
        assoc = _associate(running.port, ae_title="IDLE")
        assert assoc.is_established
        deadline = time.monotonic() + 10
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.1)
        assert assoc.is_aborted
        # The server is still there for others.
        assert _store_with_pynetdicom(running.port, make_ct()) == 0x0000


def test_a_c_move_longer_than_the_idle_timeout_keeps_its_association(tmp_path):
    """A C-MOVE to a slow workstation takes twice DICOM_NETWORK_TIMEOUT; meanwhile the
    requesting association receives nothing. It must not be aborted the moment the move ends:
    the requester goes on with a C-ECHO on the same association.

    The workstation is a pynetdicom SCP in this same process: the server's chunked receive must
    not empty the datasets other associations receive (``event.encoded_dataset()``).
    """
    from pydicom.dataset import Dataset
    from pynetdicom import evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

    from archive_core.db import write_session
    from archive_core.peers import add_peer

    workstation = AE(ae_title="SLOWWS")
    workstation.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)

    received = {}

    def slow_store(event):
        received[str(event.request.AffectedSOPInstanceUID)] = event.encoded_dataset(include_meta=False)
        time.sleep(1)  # under the DIMSE timeout of our sub-association (DICOM_NETWORK_TIMEOUT), 4 in all over it
        return 0x0000

    destination = workstation.start_server(("127.0.0.1", 0), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, slow_store)])
    try:
        with archive_server(tmp_path, DICOM_NETWORK_TIMEOUT=2) as (archive, running):
            study_uid = make_ct().StudyInstanceUID
            for n in range(4):
                assert _store_with_pynetdicom(running.port, make_ct(study_uid=study_uid, InstanceNumber=n)) == 0
            with write_session(archive.sessions) as s:
                add_peer(s, "SLOWWS", "127.0.0.1", destination.server_address[1])
                add_peer(s, "WORKSTATION", "127.0.0.1", 104)
            ae = AE(ae_title="WORKSTATION")
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", running.port, ae_title="ARCHIVAGE")
            assert assoc.is_established
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = study_uid
            started = time.monotonic()
            responses = assoc.send_c_move(query, "SLOWWS", StudyRootQueryRetrieveInformationModelMove)
            statuses = [int(st.Status) for st, _ in responses]
            assert statuses[-1] == 0x0000 and time.monotonic() - started > 3
            time.sleep(0.3)  # the server's reactor looks at its idle timer right after the move
            assert assoc.is_established
            assert int(assoc.send_c_echo().Status) == 0x0000
            assoc.release()
        assert received == _stored_datasets(tmp_path) and len(received) == 4
    finally:
        destination.shutdown()


# -- a huge object -------------------------------------------------------------------------------

HUGE_PIXEL_BYTES = 500 * 1024 * 1024
MB = 1024 * 1024


def _write_huge_ct(path: Path) -> str:
    """A CT of 500 MB of OB pixel data written in 1 MiB chunks (the test never holds it); its SHA-256."""
    ds = make_ct(patient_id="HUGE1")
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    chunk = bytes(range(256)) * 4096
    with open(path, "ab") as f:
        # (7FE0,0010) OB, explicit VR little endian: tag, VR, 2 reserved bytes, 4-byte length.
        f.write(b"\xe0\x7f\x10\x00OB\x00\x00" + HUGE_PIXEL_BYTES.to_bytes(4, "little"))
        for _ in range(HUGE_PIXEL_BYTES // len(chunk)):
            f.write(chunk)
    return ds.SOPInstanceUID


def _dataset_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        offset = dataset_offset(f.read(64 * 1024))
        f.seek(offset)
        digest = hashlib.sha256()
        while block := f.read(MB):
            digest.update(block)
    return digest.hexdigest()


def _memory_kb(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


@pytest.mark.slow
def test_a_500_mb_object_costs_less_than_100_mb_of_memory(tmp_path):
    """Bad input: one 500 MB C-STORE (storescu streams it from disk) to ``archive serve``.

    Before, a 150 MB object took the process from about 100 MB to 739 MB. Now its peak resident
    memory grows by less than 100 MB, and the object is stored byte for byte.
    """
    storescu = require_tool("storescu")
    server = ArchiveProcess(tmp_path / "instance").start()
    try:
        warm = tmp_path / "warm.dcm"
        make_ct(patient_id="HUGE1").save_as(warm, enforce_file_format=True)
        path = tmp_path / "huge.dcm"
        sop_uid = _write_huge_ct(path)
        expected = _dataset_sha256(path)

        def send(file: Path) -> subprocess.CompletedProcess:
            return subprocess.run(
                [storescu, "-v", "-aec", "ARCHIVAGE", "127.0.0.1", str(server.port), str(file)],
                env=tool_env(), capture_output=True, text=True, timeout=600,
            )

        assert send(warm).returncode == 0  # the code paths of a store are loaded before measuring
        before = _memory_kb(server.proc.pid)
        done = send(path)
        after = _memory_kb(server.proc.pid)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Received Store Response (Success)" in done.stdout + done.stderr

        stored = list((server.instance_path / "storage" / "objects").rglob(f"{sop_uid}.dcm"))
        assert len(stored) == 1
        assert _dataset_sha256(stored[0]) == expected
        grown_peak_mb = (after["VmHWM"] - before["VmRSS"]) / 1024
        grown_mb = (after["VmRSS"] - before["VmRSS"]) / 1024
        print(f"500 MB C-STORE: VmRSS {before['VmRSS'] // 1024} -> {after['VmRSS'] // 1024} MB, "
              f"VmHWM {after['VmHWM'] // 1024} MB")
        assert grown_peak_mb < 100, (before, after)
        assert grown_mb < 100, (before, after)

        # Bad input: the same object again, the sender killed half-way. What arrived was never
        # acknowledged: its file leaves the journal's folder when the connection drops.
        journal = server.instance_path / "storage" / "incoming"
        sender = subprocess.Popen([storescu, "-aec", "ARCHIVAGE", "127.0.0.1", str(server.port), str(path)],
                                  env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not list(journal.glob("receiving-*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert list(journal.glob("receiving-*.tmp")), "the transfer never started"
        sender.kill()
        sender.wait()
        deadline = time.monotonic() + 30
        while list(journal.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(journal.iterdir()) == []
    finally:
        server.stop()
