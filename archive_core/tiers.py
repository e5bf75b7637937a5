"""Storage tiers: moving a patient's files from the active store to the intermediate archive."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select, update

from archive_core import filechanges
from archive_core.archive import Archive
from archive_core.db import write_session
from archive_core.errors import ArchiveError
from archive_core.index.models import Instance, Patient, Series, Study
from archive_core.storage import blob_checksum

log = logging.getLogger(__name__)


class TierCopyMismatch(ArchiveError):
    """The copy in the archive tier does not have the indexed checksum; the active copy is kept."""


@dataclass(frozen=True)
class TierMove:
    instances: int
    bytes_moved: int


def _patient_instances(patient_pk: int, tier: str):
    return (
        select(Instance.id, Instance.storage_key, Instance.checksum_sha256, Instance.size_bytes)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .where(Study.patient_pk == patient_pk, Instance.tier == tier, Instance.deleted_at.is_(None))
    )


def move_patient_to_archive(archive: Archive, patient_pk: int, *, actor: str = "scheduler",
                            actor_kind: str = "system") -> TierMove:
    """Copy, fsync and verify each active file in the archive tier, then switch the index and write the
    ``tier.moved`` audit event in one transaction, then drop the active copies.

    All or nothing: each (active, archive) pair is recorded before its copy is written
    (:mod:`archive_core.filechanges`); a failure before the commit (storage full, a copy that does not
    verify, a database error) deletes the copies made, a process killed before the commit leaves an
    intent that the next run or ``archive fsck --repair`` resolves from the committed index. A crash
    after the commit leaves active copies that the next run removes.
    """
    from archive_core import audit

    filechanges.resolve(archive)  # whatever a killed run left, before starting
    active, archived = archive.store, archive.archive_store
    with archive.sessions() as s:
        if s.get(Patient, patient_pk) is None:
            raise ArchiveError(f"no patient row {patient_pk}")
        rows = s.execute(_patient_instances(patient_pk, "active")).all()
    moved_ids: list[int] = []
    moved_bytes = 0
    intent = filechanges.Intent.begin(archive, "tier")
    committed = False
    try:
        for inst_id, key, checksum, size in rows:
            if not active.exists(key):
                log.error("tier move: active file of %s is missing; left for fsck", key)
                continue
            intent.add(("active", key), ("archive", key))
            with active.open(key) as source:  # streamed, in chunks: another folder, bucket or storage class
                archived.put(key, source)
            if blob_checksum(archived, key) != checksum:
                raise TierCopyMismatch(f"archive-tier copy of {key} does not match its checksum")
            moved_ids.append(inst_id)
            moved_bytes += size
        if moved_ids:
            with write_session(archive.sessions) as s:
                s.execute(update(Instance).where(Instance.id.in_(moved_ids), Instance.tier == "active")
                          .values(tier="archive"))
                patient_id = s.scalar(select(Patient.patient_id).where(Patient.id == patient_pk))
                audit.record(s, "tier.moved", actor=actor, actor_kind=actor_kind, patient_id=patient_id,
                             detail={"instances": len(moved_ids), "bytes": moved_bytes, "to": "archive"})
        committed = True
    finally:
        intent.finish(archive, committed=committed)
    # Drop active copies of everything the index now serves from the archive tier (a crash after a commit).
    with archive.sessions() as s:
        done = s.execute(_patient_instances(patient_pk, "archive")).all()
    for _id, key, _checksum, _size in done:
        if active.exists(key) and archived.exists(key):
            active.delete(key)
    if moved_ids:
        log.info("moved %d instances (%d bytes) of patient row %d to the archive tier", len(moved_ids), moved_bytes, patient_pk)
    return TierMove(len(moved_ids), moved_bytes)


def read_instance(archive: Archive, sop_instance_uid: str) -> bytes:
    """The stored file of a visible instance, from whichever tier holds it."""
    from archive_core.errors import BlobMissing, NotFound

    with archive.sessions() as s:
        row = s.execute(
            select(Instance.storage_key, Instance.tier).where(
                Instance.sop_instance_uid == sop_instance_uid, Instance.deleted_at.is_(None)
            )
        ).first()
    if row is None:
        raise NotFound(f"no instance {sop_instance_uid}")
    store = archive.store_for(row.tier)
    if not store.exists(row.storage_key):
        raise BlobMissing(f"file of {sop_instance_uid} missing in the {row.tier} tier")
    return store.read_bytes(row.storage_key)
