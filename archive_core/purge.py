"""Purge primitives: tombstone index rows (in the caller's transaction), then delete tombstoned files.

Files are deleted only for rows that are tombstoned at the moment of deletion: this module has
no way to delete the file of a visible instance. Deciding *what* to tombstone (an approved batch)
is the back-office's business.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from archive_core.archive import Archive
from archive_core.errors import NotFound
from archive_core.index.models import Instance, Patient, Series, Study

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TombstonedStudy:
    study_uid: str
    study_date: str | None
    modalities: str
    instances: int
    bytes_total: int
    # SHA-256 over the sorted checksums of the study's instances: one value that proves the set.
    checksum_sha256: str
    sop_instance_uids: tuple[str, ...]


@dataclass(frozen=True)
class TombstoneResult:
    studies: tuple[TombstonedStudy, ...]

    @property
    def instances(self) -> int:
        return sum(s.instances for s in self.studies)

    @property
    def bytes_total(self) -> int:
        return sum(s.bytes_total for s in self.studies)

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        return tuple(u for s in self.studies for u in s.sop_instance_uids)


def _tombstone_studies(session: Session, studies: list[Study], at: datetime) -> TombstoneResult:
    out = []
    for study in studies:
        rows = session.execute(
            select(Instance.id, Instance.sop_instance_uid, Instance.checksum_sha256, Instance.size_bytes)
            .join(Series, Instance.series_pk == Series.id)
            .where(Series.study_pk == study.id, Instance.deleted_at.is_(None))
            .order_by(Instance.sop_instance_uid)
        ).all()
        digest = hashlib.sha256("".join(sorted(r.checksum_sha256 for r in rows)).encode()).hexdigest()
        session.execute(update(Instance).where(Instance.id.in_([r.id for r in rows])).values(deleted_at=at))
        session.execute(update(Series).where(Series.study_pk == study.id).values(deleted_at=at))
        study.deleted_at = at
        out.append(
            TombstonedStudy(
                study_uid=study.study_uid,
                study_date=study.study_date,
                modalities=study.modalities_in_study,
                instances=len(rows),
                bytes_total=sum(r.size_bytes for r in rows),
                checksum_sha256=digest,
                sop_instance_uids=tuple(r.sop_instance_uid for r in rows),
            )
        )
    session.flush()
    return TombstoneResult(tuple(out))


def find_patient(session: Session, patient_id: str, issuer: str = "") -> Patient:
    patient = session.scalar(
        select(Patient).where(
            Patient.patient_id == patient_id, Patient.issuer_of_patient_id == issuer, Patient.deleted_at.is_(None)
        )
    )
    if patient is None:
        raise NotFound("no such patient")
    return patient


def tombstone_patient(session: Session, patient_id: str, issuer: str, *, at: datetime) -> TombstoneResult:
    """Make a patient's whole record invisible (the caller's transaction); files stay until deleted."""
    patient = find_patient(session, patient_id, issuer)
    studies = list(session.scalars(select(Study).where(Study.patient_pk == patient.id, Study.deleted_at.is_(None))))
    result = _tombstone_studies(session, studies, at)
    patient.deleted_at = at
    session.flush()
    return result


def tombstone_study(session: Session, study_uid: str, *, at: datetime) -> TombstoneResult:
    study = session.scalar(select(Study).where(Study.study_uid == study_uid, Study.deleted_at.is_(None)))
    if study is None:
        raise NotFound("no such study")
    return _tombstone_studies(session, [study], at)


def delete_tombstoned_files(archive: Archive, sop_instance_uids: list[str] | tuple[str, ...]) -> int:
    """Delete the files of these instances, in both tiers, if and only if their rows are tombstoned.

    Idempotent (a missing file is fine), so a purge interrupted by a crash is simply run again.
    """
    deleted = 0
    uids = list(sop_instance_uids)
    for start in range(0, len(uids), 500):
        chunk = uids[start:start + 500]
        with archive.sessions() as s:
            rows = s.execute(
                select(Instance.sop_instance_uid, Instance.storage_key, Instance.deleted_at).where(
                    Instance.sop_instance_uid.in_(chunk)
                )
            ).all()
        for uid, key, deleted_at in rows:
            if deleted_at is None:
                log.warning("refusing to delete the file of %s: its row is not tombstoned", uid)
                continue
            for store in (archive.store, archive.archive_store):
                if store.exists(key):
                    store.delete(key)
                    deleted += 1
    return deleted
