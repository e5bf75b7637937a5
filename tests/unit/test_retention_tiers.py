"""Storage tiers: a patient's files move to the intermediate archive, verified, and stay retrievable."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from archive_core.api import ArchiveFacade
from archive_core.index.models import Instance
from tests.helpers import STORAGE_BACKENDS
from tests.retention_support import add_study

# Tier moves on folders and on two buckets of an S3-compatible server (the archive tier in STANDARD_IA).
pytestmark = STORAGE_BACKENDS


@pytest.fixture
def facade(archive):
    return ArchiveFacade(archive)


def _patient_pk(facade, patient_id):
    with facade.new_session() as s:
        return facade.patient_records(s, patient_id=patient_id)[0].patient_pk


def test_move_copies_verifies_and_removes_the_active_copy(archive, facade, tmp_path):
    study = add_study(archive, tmp_path, "PAT-T", "20150101", images=3)
    with archive.sessions() as s:
        rows = s.execute(select(Instance.sop_instance_uid, Instance.storage_key)).all()
    before = {uid: archive.store.read_bytes(key) for uid, key in rows}

    moved = facade.move_patient_to_archive(_patient_pk(facade, "PAT-T"))

    assert moved.instances == 3
    with archive.sessions() as s:
        assert set(s.scalars(select(Instance.tier))) == {"archive"}
    for uid, key in rows:
        assert not archive.store.exists(key) and archive.archive_store.exists(key)
        assert facade.read_instance(uid) == before[uid]  # still retrievable, byte for byte
    assert archive.archive_store.describe() != archive.store.describe() and study


def test_a_second_move_changes_nothing(archive, facade, tmp_path):
    add_study(archive, tmp_path, "PAT-T", "20150101")
    pk = _patient_pk(facade, "PAT-T")
    facade.move_patient_to_archive(pk)
    assert facade.move_patient_to_archive(pk).instances == 0


def test_a_copy_that_does_not_verify_keeps_the_active_copy(archive, facade, tmp_path, monkeypatch):
    from archive_core import tiers

    add_study(archive, tmp_path, "PAT-T", "20150101", images=1)
    monkeypatch.setattr(tiers, "blob_checksum", lambda store, key: "0" * 64)  # the copy reads back wrong
    with pytest.raises(tiers.TierCopyMismatch):
        facade.move_patient_to_archive(_patient_pk(facade, "PAT-T"))
    with archive.sessions() as s:
        uid, key, tier = s.execute(select(Instance.sop_instance_uid, Instance.storage_key, Instance.tier)).one()
    assert tier == "active" and archive.store.exists(key) and not archive.archive_store.exists(key)
    assert facade.read_instance(uid)


def test_a_crash_after_the_index_switch_is_finished_by_the_next_run(archive, facade, tmp_path):
    add_study(archive, tmp_path, "PAT-T", "20150101", images=1)
    with archive.sessions() as s:
        key = s.scalar(select(Instance.storage_key))
    archive.archive_store.put_bytes(key, archive.store.read_bytes(key))
    with archive.sessions.begin() as s:  # the switch committed, then the process died
        s.execute(Instance.__table__.update().values(tier="archive"))
    facade.move_patient_to_archive(_patient_pk(facade, "PAT-T"))
    assert not archive.store.exists(key) and archive.archive_store.exists(key)


def test_fsck_checks_files_in_the_archive_tier(archive, facade, tmp_path):
    from archive_core.maintenance import fsck

    add_study(archive, tmp_path, "PAT-T", "20150101", images=2)
    facade.move_patient_to_archive(_patient_pk(facade, "PAT-T"))
    report = fsck(archive)
    assert report.problems == 0 and report.checked == 2


def test_archive_tier_location_is_a_setting(instance_path, tmp_path):
    from archive_core.config import Settings

    assert Settings(instance_path=instance_path).archive_tier_storage_url == f"file://{instance_path / 'storage-archive'}"
    other = tmp_path / "nas"
    assert Settings(instance_path=instance_path, ARCHIVE_TIER_STORAGE_URL=f"file://{other}").archive_tier_storage_url \
        == f"file://{other}"
