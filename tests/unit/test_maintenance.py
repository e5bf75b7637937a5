"""``archive fsck`` finds and repairs disagreements between index and store; ``archive import`` loads folders."""

from __future__ import annotations

import shutil

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import delete, func, select

from archive_core.index.models import Instance, Study
from tests.helpers import STORAGE_BACKENDS, make_ct

# fsck and import on a local folder and on an S3-compatible server (objects in a bucket, journal local).
pytestmark = STORAGE_BACKENDS


@pytest.fixture
def arch(app):
    return app.extensions["archivage"].archive


def _write(folder, n: int, *, study_uid: str | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    uids = []
    for i in range(n):
        ds = make_ct(study_uid=study_uid, series_uid=series_uid, InstanceNumber=i + 1)
        ds.save_as(folder / f"img{i}.dcm", enforce_file_format=True)
        uids.append(ds.SOPInstanceUID)
    return uids


@pytest.fixture
def loaded(arch, runner, tmp_path):
    """Three instances imported through the command line."""
    uids = _write(tmp_path / "in", 3)
    result = runner.invoke(args=["archive", "import", str(tmp_path / "in")])
    assert result.exit_code == 0, result.output
    return uids


def _key(arch, uid: str) -> str:
    with arch.sessions() as s:
        return s.scalar(select(Instance.storage_key).where(Instance.sop_instance_uid == uid))


def _fsck(runner, *extra):
    return runner.invoke(args=["archive", "fsck", *extra])


def test_fsck_of_a_consistent_archive_exits_0(loaded, runner):
    result = _fsck(runner)
    assert result.exit_code == 0, result.output
    assert "checked 3 instances, 0 problems" in result.output


def test_row_without_file_is_found_and_dropped(loaded, arch, runner):
    key = _key(arch, loaded[0])
    arch.store.delete(key)  # the object is gone from the store
    found = _fsck(runner)
    assert found.exit_code == 1
    assert f"missing file: {key}" in found.output
    repaired = _fsck(runner, "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert _key(arch, loaded[0]) is None
    with arch.sessions() as s:
        assert s.scalar(select(Study.num_instances)) == 2
    assert _fsck(runner).exit_code == 0


def test_file_without_row_is_found_and_indexed(loaded, arch, runner):
    key = _key(arch, loaded[1])
    with arch.sessions() as s:
        s.execute(delete(Instance).where(Instance.sop_instance_uid == loaded[1]))
        s.commit()
    found = _fsck(runner)
    assert found.exit_code == 1
    assert f"file without index row: {key}" in found.output
    assert _fsck(runner, "--repair").exit_code == 0
    assert _key(arch, loaded[1]) == key
    assert _fsck(runner).exit_code == 0


def test_checksum_mismatch_is_found_and_quarantined(loaded, arch, runner):
    key = _key(arch, loaded[2])
    data = bytearray(arch.store.read_bytes(key))
    data[-1] ^= 0xFF  # one flipped bit of pixel data: bit rot (or an object overwritten in the bucket)
    arch.store.put_bytes(key, bytes(data))
    found = _fsck(runner)
    assert found.exit_code == 1
    assert f"checksum mismatch: {key}" in found.output
    repaired = _fsck(runner, "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert f"quarantined {key}" in repaired.output
    assert not arch.store.exists(key) and _key(arch, loaded[2]) is None
    quarantined = list((arch.store.root / "quarantine").iterdir())
    assert [q.read_bytes() for q in quarantined] == [bytes(data)]  # kept for a human, never served
    assert _fsck(runner).exit_code == 0


def test_pending_journal_entries_are_found_and_replayed(arch, runner):
    from archive_core.index.identity import Identity
    from archive_core.index.received import parse
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = make_ct()
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    raw = buf.getvalue()
    # The indexer is not running: the entry stays in the journal, as after a crash.
    arch.ingestor.receive(raw, parse(raw, ExplicitVRLittleEndian), transfer_syntax_uid=ExplicitVRLittleEndian,
                          identity=Identity.of(ds))
    found = _fsck(runner)
    assert found.exit_code == 1
    assert "journal entries not yet indexed: 1" in found.output
    repaired = _fsck(runner, "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert _key(arch, ds.SOPInstanceUID) is not None
    assert arch.store.incoming() == []


def test_import_stores_a_folder_and_lists_what_it_skipped(arch, runner, tmp_path):
    folder = tmp_path / "cd"
    uids = _write(folder / "SERIE1", 3)
    shutil.copy(folder / "SERIE1" / "img0.dcm", folder / "copie.dcm")  # a duplicate
    (folder / "LISEZMOI.TXT").write_text("Examen du 12/01/2024\n")
    data = (folder / "SERIE1" / "img1.dcm").read_bytes()
    (folder / "tronque.dcm").write_bytes(data[:400])  # cut inside the SOP Instance UID
    result = runner.invoke(args=["archive", "import", str(folder)])
    assert result.exit_code == 0, result.output
    skipped = sorted(line.split(":")[1].strip().rsplit("/", 1)[-1] for line in result.stdout.splitlines()
                     if line.startswith("skipped:"))
    assert skipped == ["LISEZMOI.TXT", "tronque.dcm"], result.output
    assert "stored 3, duplicates 1, skipped 2" in result.output
    with arch.sessions() as s:
        assert set(s.scalars(select(Instance.sop_instance_uid))) == set(uids)
        assert s.scalar(select(Study.external)) is False
    assert _fsck(runner).exit_code == 0


def test_import_external_marks_the_studies_external(arch, runner, tmp_path):
    _write(tmp_path / "prior", 2)
    result = runner.invoke(args=["archive", "import", "--external", str(tmp_path / "prior")])
    assert result.exit_code == 0, result.output
    with arch.sessions() as s:
        assert s.execute(select(Study.external, func.count(Study.id)).group_by(Study.external)).all() == [(True, 1)]


def test_repair_quarantines_an_orphan_superseded_by_an_overwrite(loaded, arch, runner, tmp_path):
    """A crash between an overwrite's index commit and the removal of the old file leaves the old file."""
    key = _key(arch, loaded[0])
    old = arch.store.read_bytes(key)
    newer = make_ct(sop_uid=loaded[0])  # same SOP Instance UID under another study
    (tmp_path / "newer").mkdir()
    newer.save_as(tmp_path / "newer" / "n.dcm", enforce_file_format=True)
    from archive_core.index.entries import job_from_file
    from archive_core.index.upsert import index_jobs

    job = job_from_file(tmp_path / "newer" / "n.dcm", seq=0)
    index_jobs(arch.sessions, [job])
    arch.store.stage(job.path, job.identity.key)
    arch.store.commit(job.path, job.identity.key)  # ... and the crash: the old file stays
    found = _fsck(runner)
    assert found.exit_code == 1 and f"file without index row: {key}" in found.output
    repaired = _fsck(runner, "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert f"quarantined superseded {key}" in repaired.output
    assert _key(arch, loaded[0]) == job.identity.key  # the newer object stays indexed
    assert [q.read_bytes() for q in (arch.store.root / "quarantine").iterdir()] == [old]


def test_repair_is_refused_while_the_archive_runs(app, arch, runner, settings):
    """fsck --repair races a running archive (index, then move): it waits for the archive to stop."""
    from archive_core.archive import Archive
    from archive_core.net.server import start_server

    server = Archive.open(settings)  # `archive serve` on the same instance
    running = start_server(server, host="127.0.0.1", port=0)
    try:
        refused = _fsck(runner, "--repair")
        assert refused.exit_code == 1
        assert "stop it before fsck --repair" in refused.output
        assert _fsck(runner).exit_code == 0  # checking is fine at any time
    finally:
        running.stop()
        server.close()
    assert _fsck(runner, "--repair").exit_code == 0
    assert _fsck(runner, "--repair").exit_code == 0  # and it let go of the journal afterwards
