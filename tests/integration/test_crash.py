"""A kill -9 in the middle of a stream loses nothing that was acknowledged; the journal is replayed."""

from __future__ import annotations

import hashlib
import sqlite3
import threading

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from tests.helpers import dataset_after_meta, encoded_dataset, make_ct, store_until_refused
from tests.servers import ArchiveProcess

STREAM = 300
KILL_AFTER = 100


def test_kill_9_mid_stream_keeps_every_acknowledged_instance(tmp_path):
    server = ArchiveProcess(tmp_path / "instance").start()
    try:
        study, series = "1.2.826.0.1.3680043.8.498.900", "1.2.826.0.1.3680043.8.498.900.1"
        sent = {}
        acked: list[str] = []
        ae = AE(ae_title="CRASHTEST")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", server.port, ae_title="ARCHIVAGE")
        assert assoc.is_established
        raw_socket = assoc.dul.socket.socket  # pynetdicom drops it unclosed when the peer dies under it
        killer = threading.Thread(target=server.kill, name="kill-9")

        def acknowledged(uid: str) -> None:
            acked.append(uid)
            if len(acked) == KILL_AFTER:
                killer.start()  # from another thread, while the stream goes on

        store_until_refused(assoc, (make_ct(study_uid=study, series_uid=series, InstanceNumber=n + 1)
                                    for n in range(STREAM)), sent, acknowledged)
        killer.join(30)
        assoc.abort()
        raw_socket.close()
        assert server.proc.returncode == -9
        assert KILL_AFTER <= len(acked) < STREAM, "the kill did not land in the middle of the stream"

        server.start()  # the restart replays the journal before it answers C-ECHO
        with sqlite3.connect(server.instance_path / "archivage.sqlite3") as db:
            rows = dict(db.execute("SELECT sop_instance_uid, storage_key || '|' || checksum_sha256 FROM instance"))
        missing = [uid for uid in acked if uid not in rows]
        assert missing == [], f"{len(missing)} acknowledged instances lost"
        for uid in acked:
            key, checksum = rows[uid].split("|")
            stored = (server.instance_path / "storage" / "objects" / key).read_bytes()
            assert dataset_after_meta(stored) == sent[uid]
            assert hashlib.sha256(sent[uid]).hexdigest() == checksum
        fsck = server.cli("archive", "fsck")
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    finally:
        server.stop()


def test_restart_replays_the_journal_and_drops_unfinished_temporary_files(settings, migrated):
    """A crash after the acknowledgement but before indexing, and one in the middle of a write."""
    from archive_core.archive import Archive
    from archive_core.index.identity import Identity
    from archive_core.index.models import Instance
    from archive_core.net.server import start_server
    from sqlalchemy import select

    acknowledged = make_ct()
    unfinished = make_ct()
    crashed = Archive.open(settings)  # the indexer never starts: as if killed right after the ack
    raw = encoded_dataset(acknowledged)
    crashed.ingestor.receive(raw, acknowledged, transfer_syntax_uid=ExplicitVRLittleEndian,
                             identity=Identity.of(acknowledged), source_ae="CT1")
    tmp = crashed.store.incoming_dir / f"00000000000000000001-000000002-{unfinished.SOPInstanceUID}.dcm.tmp"
    tmp.write_bytes(b"\x00" * 128 + b"DICM" + encoded_dataset(unfinished))
    crashed.engine.dispose()
    assert tmp.exists() and len(list(crashed.store.incoming_dir.glob("*.dcm"))) == 1

    restarted = Archive.open(settings)
    running = start_server(restarted, host="127.0.0.1", port=0)
    try:
        with restarted.sessions() as s:
            uids = set(s.scalars(select(Instance.sop_instance_uid)))
            key = s.scalar(select(Instance.storage_key).where(Instance.sop_instance_uid == acknowledged.SOPInstanceUID))
        assert uids == {acknowledged.SOPInstanceUID}
        assert dataset_after_meta(restarted.store.read_bytes(key)) == raw
        assert list(restarted.store.incoming_dir.iterdir()) == []
    finally:
        running.stop()
        restarted.close()


def test_replay_keeps_an_object_identified_by_its_request_only(settings, migrated):
    """A journal entry whose dataset lacks its SOP Instance UID (acknowledged by a version before the
    rule that refuses such datasets) is replayed under the UID its file meta holds, not quarantined."""
    from archive_core.archive import Archive
    from archive_core.index.identity import Identity
    from archive_core.index.models import Instance
    from archive_core.net.server import start_server
    from sqlalchemy import select

    ds = make_ct()
    sop_uid = ds.SOPInstanceUID
    del ds.SOPInstanceUID
    crashed = Archive.open(settings)
    crashed.ingestor.receive(encoded_dataset(ds), ds, transfer_syntax_uid=ExplicitVRLittleEndian,
                             identity=Identity.of(ds, sop_class_uid=ds.SOPClassUID, sop_instance_uid=sop_uid,
                                                  dataset_must_agree=False))
    crashed.engine.dispose()

    restarted = Archive.open(settings)
    running = start_server(restarted, host="127.0.0.1", port=0)
    try:
        with restarted.sessions() as s:
            assert set(s.scalars(select(Instance.sop_instance_uid))) == {sop_uid}
        assert not (restarted.store.root / "quarantine").exists()
    finally:
        running.stop()
        restarted.close()


def test_replay_keeps_an_import_external(settings, migrated):
    """`archive import --external` interrupted before indexing: the replayed study is still an outside prior."""
    from archive_core.archive import Archive
    from archive_core.index.identity import Identity
    from archive_core.index.models import Study
    from sqlalchemy import select

    prior, own = make_ct(), make_ct()
    crashed = Archive.open(settings)
    for ds, external in ((prior, True), (own, None)):
        crashed.ingestor.receive(encoded_dataset(ds), ds, transfer_syntax_uid=ExplicitVRLittleEndian,
                                 identity=Identity.of(ds), external=external)
    crashed.engine.dispose()

    restarted = Archive.open(settings)
    try:
        assert restarted.ingestor.replay() == 2
        with restarted.sessions() as s:
            flags = dict(s.execute(select(Study.study_uid, Study.external)).all())
        assert flags == {prior.StudyInstanceUID: True, own.StudyInstanceUID: False}
    finally:
        restarted.close()


def test_a_second_archive_on_the_same_storage_refuses_to_start(tmp_path):
    """Two servers on one journal would replay and move each other's entries."""
    first = ArchiveProcess(tmp_path / "instance").start()
    second = ArchiveProcess(tmp_path / "instance")
    try:
        with pytest.raises(RuntimeError, match="owns the ingest journal"):
            second.start(timeout=60)
        assert second.proc.returncode == 1
        first.kill()  # the kernel lets go of a dead owner's lock: a restart after kill -9 works
        second.start()
    finally:
        second.stop()
        first.stop()
