"""The archive on an S3-compatible object store, from the outside.

``flask --app wsgi archive serve`` as a child process with ``STORAGE_URL=s3://...`` against moto's S3
server (a real HTTP endpoint, started here); DCMTK storescu stores, storescp receives a C-MOVE. The
store is stopped mid-way (an outage), the archive killed with kill -9, started with wrong credentials.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
import uuid

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

from archive_core.part10 import dataset_offset
from tests.helpers import dcmtk, free_port, make_ct, move_to_storescp
from tests.servers import ArchiveProcess, S3Server, flask_cli

pytestmark = pytest.mark.dcmtk


def _study(tmp_path, n: int = 3) -> dict[str, bytes]:
    """*n* CT files of one study (the last one 2 MB of pixel data); SOP Instance UID -> dataset bytes sent."""
    study, series = generate_uid(), generate_uid()
    sent = {}
    for i in range(n):
        ds = make_ct(study_uid=study, series_uid=series, InstanceNumber=i + 1, rows=1024 if i == n - 1 else 16)
        path = tmp_path / f"ct{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        data = path.read_bytes()
        sent[str(ds.SOPInstanceUID)] = data[dataset_offset(data):]
    return sent


def _storescu(port: int, tmp_path, count: int) -> subprocess.CompletedProcess:
    return dcmtk("storescu", "-aec", "ARCHIVAGE", "127.0.0.1", str(port),
                 *(str(tmp_path / f"ct{i}.dcm") for i in range(count)))


def _archive(tmp_path, server: S3Server, bucket: str) -> ArchiveProcess:
    env = {**server.env, "ARCHIVAGE_STORAGE_URL": f"s3://{bucket}/objects",
           "ARCHIVAGE_ARCHIVE_TIER_STORAGE_URL": f"s3://{bucket}/archive-tier",
           "ARCHIVAGE_S3_ENDPOINT_URL": server.url, "ARCHIVAGE_S3_ADDRESSING_STYLE": "path",
           "ARCHIVAGE_S3_RETRY_SECONDS": "0.5"}
    return ArchiveProcess(tmp_path / "instance-serve", env=env)


def _in_bucket(server: S3Server, bucket: str) -> dict[str, bytes]:
    """SOP Instance UID -> dataset bytes of each object under the bucket's ``objects/`` prefix."""
    return {key.rsplit("/", 1)[-1][:-len(".dcm")]: data[dataset_offset(data):]
            for key, data in server.objects(bucket, "objects/").items()}


def _journal(archive: ArchiveProcess) -> list[str]:
    return sorted(p.name for p in (archive.instance_path / "journal" / "incoming").glob("*.dcm"))


def _indexed(archive: ArchiveProcess) -> set[str]:
    with sqlite3.connect(archive.instance_path / "archivage.sqlite3") as db:
        return {uid for (uid,) in db.execute("SELECT sop_instance_uid FROM instance")}


def _wait(condition, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)  # another process uploads: there is nothing to wait on but the bucket
    return False


def test_storescu_objects_land_in_the_bucket_and_a_move_sends_them_byte_identical(tmp_path, s3_server):
    bucket = s3_server.create_bucket(f"pacs-{uuid.uuid4().hex[:12]}")
    archive = _archive(tmp_path, s3_server, bucket).start()
    try:
        sent = _study(tmp_path)
        done = _storescu(archive.port, tmp_path, len(sent))
        assert done.returncode == 0, done.stdout + done.stderr
        # Released: every object is in the bucket as received, indexed, and out of the local journal.
        assert _in_bucket(s3_server, bucket) == sent
        assert _indexed(archive) == set(sent) and _journal(archive) == []
        assert not (archive.instance_path / "storage" / "objects").exists()  # nothing kept on local disk

        receiver_port = free_port()
        for ae, port in (("WORKSTATION", 104), ("DEST", receiver_port)):
            added = archive.cli("peers", "add", ae, "127.0.0.1", str(port))
            assert added.returncode == 0, added.stderr
        study_uid = dcmread(tmp_path / "ct0.dcm").StudyInstanceUID
        got = move_to_storescp(archive.port, study_uid, receiver_port, tmp_path / "received")
        assert got == sent
        fsck = archive.cli("archive", "fsck")  # reads every object back from the bucket, checksums
        assert fsck.returncode == 0 and "checked 3 instances, 0 problems" in fsck.stdout, fsck.stdout + fsck.stderr
    finally:
        archive.stop()


def test_an_unreachable_store_still_acknowledges_and_uploads_when_it_is_back(tmp_path):
    """Bad input: the object store goes away (its server stopped) while a modality stores. Every C-STORE
    is still acknowledged from the local journal; once the store answers again the objects are uploaded,
    confirmed, indexed and leave the journal: nothing acknowledged is lost."""
    server = S3Server(tmp_path / "moto")
    bucket = server.create_bucket("pacs-outage")
    archive = _archive(tmp_path, server, bucket).start()
    try:
        server.stop()
        sent = _study(tmp_path)
        done = _storescu(archive.port, tmp_path, len(sent))
        assert done.returncode == 0, done.stdout + done.stderr  # acknowledged (and released) without the store
        assert len(_journal(archive)) == 3 and _indexed(archive) == set()
        server.start()  # moto comes back empty: the operator restores the bucket
        server.create_bucket(bucket)
        assert _wait(lambda: _journal(archive) == []), archive.log()
        assert _in_bucket(server, bucket) == sent
        assert _indexed(archive) == set(sent)
        assert "objects wait in the journal" in archive.log()
        fsck = archive.cli("archive", "fsck")
        assert fsck.returncode == 0 and "checked 3 instances, 0 problems" in fsck.stdout, fsck.stdout + fsck.stderr
    finally:
        archive.stop()
        server.stop()


def test_a_kill_9_during_an_outage_loses_nothing(tmp_path):
    """Bad input: the store is away, the archive acknowledges, then dies by kill -9 and is started again
    while the store is still away (it starts: the journal waits). When the store is back, the replayed
    journal is uploaded and indexed."""
    server = S3Server(tmp_path / "moto")
    bucket = server.create_bucket("pacs-crash")
    archive = _archive(tmp_path, server, bucket).start()
    try:
        server.stop()
        sent = _study(tmp_path)
        assert _storescu(archive.port, tmp_path, len(sent)).returncode == 0
        archive.kill()
        assert len(_journal(archive)) == 3
        archive.start()  # the store still unreachable: a warning, not a refusal
        server.start()
        server.create_bucket(bucket)
        assert _wait(lambda: _journal(archive) == []), archive.log()
        assert _in_bucket(server, bucket) == sent and _indexed(archive) == set(sent)
    finally:
        archive.stop()
        server.stop()


def test_wrong_credentials_stop_the_archive_at_start_up(tmp_path):
    """Bad input: credentials the S3 server rejects (moto checking them). `archive serve` exits at once
    with a message that says which store refused and what to check; it never prints the secret."""
    server = S3Server(tmp_path / "moto-auth", auth=True)
    try:
        instance = tmp_path / "instance"
        done = flask_cli(instance, "archive", "serve", timeout=60, env={
            "ARCHIVAGE_STORAGE_URL": "s3://pacs/objects", "ARCHIVAGE_S3_ENDPOINT_URL": server.url,
            "ARCHIVAGE_S3_ADDRESSING_STYLE": "path", "AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG1",
            "AWS_SECRET_ACCESS_KEY": "wrong-secret-value", "AWS_DEFAULT_REGION": "us-east-1"})
    finally:
        server.stop()
    assert done.returncode != 0
    assert "storage refused" in done.stderr and "refused our credentials" in done.stderr, done.stderr[-2000:]
    assert "s3://pacs/objects/" in done.stderr and "wrong-secret-value" not in done.stdout + done.stderr


def test_two_scp_workers_journal_locally_upload_through_the_parent_and_retrieve_from_the_bucket(tmp_path):
    """DICOM_WORKERS=2 on an s3:// store. Each worker writes its acknowledged objects to its own local
    journal folder under STORAGE_JOURNAL_PATH (``journal/incoming/worker-N``), never to a folder store.
    Bad input: the object store is away while both workers store, then one worker is killed with
    kill -9 holding acknowledged entries. The parent replays that folder; when the store is back every
    acknowledged object is uploaded from both folders and indexed; a C-GET on each worker then streams
    the objects back from the bucket, byte-identical."""
    from tests.helpers import encoded_dataset as _encoded
    from tests.integration.test_workers import WORKERS, _one_association_per_worker, _workers, make_query

    server = S3Server(tmp_path / "moto")
    bucket = server.create_bucket("pacs-workers")
    archive = _archive(tmp_path, server, bucket)
    archive.env.update(WORKERS)
    archive.start()
    journal = archive.instance_path / "journal" / "incoming"
    try:
        server.stop()
        study = generate_uid()
        sent: dict[str, bytes] = {}
        by_pid = _one_association_per_worker(archive)
        for n, assoc in enumerate(by_pid.values()):
            for i in range(3):
                ds = make_ct(study_uid=study, InstanceNumber=10 * n + i + 1)
                assert assoc.send_c_store(ds).Status == 0x0000  # acknowledged from the worker's journal
                sent[str(ds.SOPInstanceUID)] = _encoded(ds)
            assoc.release()  # not held while the store is away
        folders = {p.name: len(list(p.glob("*.dcm"))) for p in journal.glob("worker-*")}
        assert sorted(folders.values()) == [3, 3], folders
        assert not (archive.instance_path / "storage" / "incoming").exists()  # no folder store's journal

        victim = next(iter(by_pid))
        subprocess.run(["kill", "-9", str(victim)], check=True)
        assert _wait(lambda: "restarted" in archive.log()), archive.log()[-3000:]
        assert _indexed(archive) == set()  # the store still away: nothing visible, nothing lost

        server.start()
        server.create_bucket(bucket)
        assert _wait(lambda: not any(journal.rglob("*.dcm"))), archive.log()[-3000:]
        assert _indexed(archive) == set(sent)
        assert _in_bucket(server, bucket) == sent

        assert len(_workers(archive)) == 2
        for pid, assoc in _one_association_per_worker(archive, get=True).items():
            statuses = [s.Status for s, _ in assoc.send_c_get(make_query(study),
                                                               StudyRootQueryRetrieveInformationModelGet)]
            assert statuses[-1] == 0x0000 and len(assoc.received) == 6, f"C-GET on worker {pid}"
            assert {str(ds.SOPInstanceUID): _encoded(ds) for ds in assoc.received} == sent
            assoc.release()
    finally:
        archive.stop()
        server.stop()
