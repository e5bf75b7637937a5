"""The ingest journal belongs to the running archive: other processes look at it but never touch it."""

from __future__ import annotations

from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import select

from archive_core.index.identity import Identity
from archive_core.index.received import parse
from archive_core.index.models import Instance
from tests.helpers import make_ct


def _receive(archive, ds=None):
    ds = ds or make_ct()
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    raw = buf.getvalue()
    outcome = archive.ingestor.receive(raw, parse(raw, ExplicitVRLittleEndian), transfer_syntax_uid=ExplicitVRLittleEndian,
                                       identity=Identity.of(ds))
    return ds, outcome


def _in_progress(archive):
    """A write the running server has not finished yet."""
    tmp = archive.store.incoming_dir / "00000000000000000009-000000009-1.2.3.dcm.tmp"
    tmp.write_bytes(b"half a dataset")
    return tmp


def _uids(archive):
    with archive.sessions() as s:
        return set(s.scalars(select(Instance.sop_instance_uid)))


def test_listing_the_journal_leaves_writes_in_progress_alone(archive):
    tmp = _in_progress(archive)
    assert archive.store.incoming() == []
    assert tmp.exists()
    assert archive.store.discard_unfinished() == 1  # what a restart does, before it receives anything
    assert not tmp.exists()


def test_fsck_beside_a_live_server_leaves_its_writes_alone(app, runner):
    archive = app.extensions["archivage"].archive
    tmp = _in_progress(archive)
    result = runner.invoke(args=["archive", "fsck"])
    assert result.exit_code == 0, result.output
    assert tmp.exists()


def test_scheduler_backlog_job_leaves_writes_in_progress_alone(app):
    from backoffice.scheduler import journal_backlog_job

    tmp = _in_progress(app.extensions["archivage"].archive)
    with app.app_context():
        journal_backlog_job()
    assert tmp.exists()


def test_import_beside_a_live_server_does_not_take_its_journal(archive, settings, tmp_path):
    """The server's acknowledged-but-not-yet-indexed entries are its own indexer's to take."""
    from archive_core.archive import Archive
    from archive_core.maintenance import import_path

    tmp = _in_progress(archive)
    servers_entry, _ = _receive(archive)  # the server's indexer is not running: the entry waits
    folder = tmp_path / "cd"
    folder.mkdir()
    imported = make_ct()
    imported.save_as(folder / "a.dcm", enforce_file_format=True)
    importer = Archive.open(settings)  # another process on the same instance
    try:
        report = import_path(importer, folder)
    finally:
        importer.close()
    assert report.stored == 1
    assert tmp.exists()
    assert _uids(archive) == {imported.SOPInstanceUID}
    assert len(archive.store.incoming()) == 1  # still waiting for its owner
    archive.ingestor.start()
    assert archive.ingestor.wait_indexed(timeout=30)
    assert _uids(archive) == {imported.SOPInstanceUID, servers_entry.SOPInstanceUID}


def test_indexer_thread_survives_a_batch_that_cannot_be_committed(archive):
    lost, outcome = _receive(archive)
    # Someone else moved the journal entry away before our indexer got to it.
    (path,) = archive.store.incoming()
    path.unlink()
    archive.ingestor.start(replay=False)
    assert archive.ingestor.wait_indexed(outcome.seq, timeout=30)
    later, outcome = _receive(archive)
    assert archive.ingestor.wait_indexed(outcome.seq, timeout=30)
    assert later.SOPInstanceUID in _uids(archive)


def test_identical_duplicate_of_a_pending_object_waits_for_its_indexing(archive):
    """Another modality re-sends an object still in the journal: its release must wait for it too."""
    ds, first = _receive(archive)
    _, again = _receive(archive, ds)
    assert again.duplicate and again.seq == first.seq > 0
    archive.ingestor.start(replay=False)
    assert archive.ingestor.wait_indexed(again.seq, timeout=30)
    assert ds.SOPInstanceUID in _uids(archive)
    _, after = _receive(archive, ds)
    assert after.duplicate and after.seq == 0  # indexed: nothing to wait for


def test_a_dataset_received_on_disk_is_stored_byte_for_byte(archive, tmp_path):
    """A chunked receive: the dataset lies in pynetdicom's temporary Part 10 file, not in memory.

    The journal entry (then the stored object) holds our header and exactly the received bytes;
    the file that arrived is left to its owner (pynetdicom deletes it).
    """
    from archive_core.index.received import dataset_in_file
    from archive_core.part10 import dataset_offset

    ds = make_ct(rows=512)
    received = tmp_path / "pynetdicom-temp.dcm"
    ds.save_as(received, enforce_file_format=True)
    data = dataset_in_file(received)
    outcome = archive.ingestor.receive(data, parse(data, ExplicitVRLittleEndian),
                                       transfer_syntax_uid=ExplicitVRLittleEndian, identity=Identity.of(ds),
                                       source_ae="CT1")
    archive.ingestor.start(replay=False)
    assert archive.ingestor.wait_indexed(outcome.seq, timeout=30)
    stored = archive.store.read_bytes(Identity.of(ds).key)
    sent = received.read_bytes()
    assert stored[dataset_offset(stored):] == sent[dataset_offset(sent):]
    assert b"CT1" in stored[:dataset_offset(stored)]  # our file meta, with the source AE
    assert received.exists()


def test_a_received_file_shorter_than_announced_leaves_nothing_in_the_journal(archive, tmp_path):
    """Bad input: the file on disk ends before the range being copied (it was cut short)."""
    import pytest

    from archive_core.storage import FileRange

    source = tmp_path / "short.bin"
    source.write_bytes(b"x" * 1000)
    with pytest.raises(EOFError):
        archive.store.write_incoming("1-1-1.2.3.dcm", [b"header", FileRange(source, 0, 5000)])
    assert list(archive.store.incoming_dir.iterdir()) == []


def test_a_dataset_received_into_the_journal_folder_is_renamed_not_copied(archive):
    """The SCP's chunked receive (archive_core/net/chunked.py): pynetdicom writes its own header,
    then fragments each followed by a flush, into a ReceiveFile; the file starts with our header
    and becomes the journal entry, then the stored object, by renames only (same inode)."""
    import os

    from pydicom.filebase import DicomBytesIO as _Buf

    from archive_core.index.identity import Identity as _Identity
    from archive_core.net.chunked import ReceiveFile
    from archive_core.part10 import PREAMBLE, dataset_offset, file_header

    ds = make_ct(rows=256)
    buf = _Buf()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    raw = buf.getvalue()
    ident = _Identity.of(ds)
    header = file_header(sop_class_uid=ident.sop_class_uid, sop_instance_uid=ident.sop_instance_uid,
                         transfer_syntax_uid=ExplicitVRLittleEndian, source_ae="CT1")
    received = ReceiveFile(archive.store.incoming_dir, header, max_bytes=0)
    for piece in (b"\x00" * 128, b"DICM", b"pynetdicom's own file meta"):  # dropped
        received.write(piece)
    for start in range(0, len(raw), 16384):
        received.write(raw[start:start + 16384])
        received.file.flush()
    inode = os.stat(received.name).st_ino
    outcome = archive.ingestor.receive(received.dataset(), parse(received.dataset(), ExplicitVRLittleEndian),
                                       transfer_syntax_uid=ExplicitVRLittleEndian, identity=ident, source_ae="CT1")
    received.close()
    archive.ingestor.start(replay=False)
    assert archive.ingestor.wait_indexed(outcome.seq, timeout=30)
    stored_path = archive.store.path_of(ident.key)
    stored = stored_path.read_bytes()
    assert stored == header + raw and stored[:132] == PREAMBLE and dataset_offset(stored) == len(header)
    assert os.stat(stored_path).st_ino == inode
    assert list(archive.store.incoming_dir.iterdir()) == []


def test_a_received_dataset_over_the_limit_is_refused_and_its_file_emptied(archive):
    """Bad input: fragments past max_bytes; the file stops growing and the dataset is refused."""
    import os

    import pytest

    from archive_core.errors import ObjectTooLarge
    from archive_core.net.chunked import ReceiveFile

    received = ReceiveFile(archive.store.incoming_dir, b"H" * 10, max_bytes=1000)
    received.write(b"pynetdicom header")
    for _ in range(5):
        received.write(b"x" * 400)
        received.file.flush()
    assert os.path.getsize(received.name) == 0
    with pytest.raises(ObjectTooLarge):
        received.dataset()
    received.close()


def test_writers_renaming_into_the_journal_at_once_share_its_folder_fsync(tmp_path, monkeypatch):
    """Group commit of the journal folder: eight writers arrive while one folder fsync runs; they
    share the next one instead of eight (the first one's rename came before any of theirs, so
    theirs must wait for a sync that starts after them). A broken implementation either syncs
    eight times or lets a writer return before any sync covering its rename."""
    import threading
    import time

    from archive_core.storage import journal

    started: list[float] = []
    finished: list[float] = []
    first_running = threading.Event()
    release_first = threading.Event()

    def slow_fsync(path):
        started.append(time.monotonic())
        if len(started) == 1:
            first_running.set()
            release_first.wait(10)
        finished.append(time.monotonic())

    # The folder fsync replaced by a slow fake, in this test only: what is measured is who waits for whom.
    monkeypatch.setattr(journal, "fsync_dir", slow_fsync)
    sync = journal._GroupSync(tmp_path)
    first = threading.Thread(target=sync.sync)
    first.start()
    assert first_running.wait(10)
    returned: list[float] = []
    arrivals = []
    followers = []
    for _ in range(8):
        arrivals.append(time.monotonic())
        t = threading.Thread(target=lambda: (sync.sync(), returned.append(time.monotonic())))
        t.start()
        followers.append(t)
    time.sleep(0.2)
    assert returned == []  # none may return on the strength of a sync that started before it came
    release_first.set()
    for t in [first, *followers]:
        t.join(10)
    assert len(started) == 2  # the first writer's sync, and one for the eight that came meanwhile
    assert started[1] > max(arrivals)
    assert len(returned) == 8 and min(returned) >= finished[1]


def test_the_listing_covers_every_worker_journal_oldest_first(tmp_path):
    """Entries of SCP worker processes (incoming/worker-N) are journal entries like the others:
    replayed at start, counted by fsck and backups; a listing of the main folder only would lose them."""
    from archive_core.storage.filesystem import FilesystemStore

    main = FilesystemStore(tmp_path)
    one = FilesystemStore(tmp_path, journal="worker-1")
    two = FilesystemStore(tmp_path, journal="worker-2")
    names = ["00000000000000000003-000000003-1.2.3.dcm", "00000000000000000001-000000001-1.2.1.dcm",
             "00000000000000000002-000000002-1.2.2.dcm"]
    for store, name in zip((main, one, two), names):
        store.write_incoming(name, [b"entry"])
    (two.incoming_dir / "receiving-x.tmp").write_bytes(b"half")
    assert [p.name for p in main.incoming()] == sorted(names)
    assert [p.name for p in main.incoming(two.incoming_dir)] == [names[2]]
    assert main.discard_unfinished(one.incoming_dir) == 0
    assert main.discard_unfinished() == 1
