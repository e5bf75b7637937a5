"""The ingest journal belongs to the running archive: other processes look at it but never touch it."""

from __future__ import annotations

from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import select

from archive_core.index.ingest import Identity, parse
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
