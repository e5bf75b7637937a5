"""The facade the back-office uses: plain frozen dataclasses in, plain frozen dataclasses out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from archive_core import audit as _audit
from archive_core.archive import Archive
from archive_core.config import Settings
from archive_core.db import Base, write_session
from archive_core.index.models import Instance, Patient, Series, Study, utcnow
from archive_core.purge import TombstoneResult
from archive_core.tiers import TierMove

__all__ = ["ArchiveFacade", "ArchiveStats", "Base", "PatientRecord", "StorageUsage", "utcnow"]


@dataclass(frozen=True)
class ArchiveStats:
    patients: int
    studies: int
    instances: int
    bytes_stored: int


@dataclass(frozen=True)
class PatientRecord:
    """What retention needs about one (visible) patient."""

    patient_pk: int
    patient_id: str
    issuer_of_patient_id: str
    birth_date: str | None  # DICOM DA
    visit_dates: tuple[str, ...]  # study dates of the practice's own studies (outside priors excluded)
    studies: int
    instances_active: int
    instances_archive: int
    bytes_total: int


@dataclass(frozen=True)
class StorageUsage:
    tier: str
    year: str  # of the study date; "" when unknown
    modality: str
    instances: int
    bytes_total: int


class ArchiveFacade:
    """One object per process; sessions it hands out are owned by the caller (the edge commits)."""

    def __init__(self, archive: Archive) -> None:
        self._archive = archive

    @classmethod
    def open(cls, settings: Settings) -> "ArchiveFacade":
        return cls(Archive.open(settings))

    @property
    def settings(self) -> Settings:
        return self._archive.settings

    @property
    def archive(self) -> Archive:
        return self._archive

    def new_session(self, *, write: bool = False) -> Session:
        """A session for the caller to commit; *write* takes SQLite's write lock at its first statement."""
        session = self._archive.sessions()
        if write and session.get_bind().dialect.name == "sqlite":
            session.connection(execution_options={"sqlite_immediate": True})
        return session

    def audit(self, session: Session, action: str, *, actor: str, actor_kind: str = "user", **fields: Any) -> None:
        """Append to the audit trail inside the caller's (write) transaction."""
        _audit.record(session, action, actor=actor, actor_kind=actor_kind, **fields)

    def audit_now(self, action: str, *, actor: str, actor_kind: str = "user", **fields: Any) -> None:
        """Append to the audit trail in a transaction of its own (for reads: a page that was viewed)."""
        with write_session(self._archive.sessions) as s:
            _audit.record(s, action, actor=actor, actor_kind=actor_kind, **fields)

    def stats(self) -> ArchiveStats:
        with self._archive.sessions() as s:
            return ArchiveStats(
                patients=s.scalar(select(func.count(Patient.id)).where(Patient.deleted_at.is_(None))) or 0,
                studies=s.scalar(select(func.count(Study.id)).where(Study.deleted_at.is_(None))) or 0,
                instances=s.scalar(select(func.count(Instance.id)).where(Instance.deleted_at.is_(None))) or 0,
                bytes_stored=s.scalar(
                    select(func.coalesce(func.sum(Instance.size_bytes), 0)).where(Instance.deleted_at.is_(None))
                ) or 0,
            )

    # -- retention: records, tiers, tombstones, purge, corrections ------------------------------

    def patient_records(self, session: Session, *, patient_id: str | None = None) -> list[PatientRecord]:
        """Every visible patient (or those with *patient_id*), with what the retention rule needs."""
        query = select(Patient).where(Patient.deleted_at.is_(None)).order_by(Patient.id)
        if patient_id is not None:
            query = query.where(Patient.patient_id == patient_id)
        patients = list(session.scalars(query))
        if not patients:
            return []
        pks = [p.id for p in patients] if patient_id is not None else None
        studies = select(Study.patient_pk, Study.study_date, Study.external).where(Study.deleted_at.is_(None))
        usage = (
            select(Study.patient_pk, Instance.tier, func.count(Instance.id), func.coalesce(func.sum(Instance.size_bytes), 0))
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
            .where(Instance.deleted_at.is_(None))
            .group_by(Study.patient_pk, Instance.tier)
        )
        if pks is not None:
            studies = studies.where(Study.patient_pk.in_(pks))
            usage = usage.where(Study.patient_pk.in_(pks))
        visits: dict[int, list[str]] = {}
        counts: dict[int, int] = {}
        for pk, study_date, external in session.execute(studies):
            counts[pk] = counts.get(pk, 0) + 1
            if not external and study_date:
                visits.setdefault(pk, []).append(study_date)
        tiers: dict[int, dict[str, tuple[int, int]]] = {}
        for pk, tier, n, size in session.execute(usage):
            tiers.setdefault(pk, {})[tier] = (n, int(size))
        return [
            PatientRecord(
                patient_pk=p.id,
                patient_id=p.patient_id,
                issuer_of_patient_id=p.issuer_of_patient_id,
                birth_date=p.patient_birth_date,
                visit_dates=tuple(sorted(visits.get(p.id, []))),
                studies=counts.get(p.id, 0),
                instances_active=tiers.get(p.id, {}).get("active", (0, 0))[0],
                instances_archive=tiers.get(p.id, {}).get("archive", (0, 0))[0],
                bytes_total=sum(size for _n, size in tiers.get(p.id, {}).values()),
            )
            for p in patients
        ]

    def storage_usage(self, session: Session) -> list[StorageUsage]:
        """Visible data by tier, study year and modality."""
        year = func.coalesce(func.substr(Study.study_date, 1, 4), "")
        modality = func.coalesce(Series.modality, "")
        rows = session.execute(
            select(Instance.tier, year, modality, func.count(Instance.id), func.coalesce(func.sum(Instance.size_bytes), 0))
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
            .where(Instance.deleted_at.is_(None))
            .group_by(Instance.tier, year, modality)
            .order_by(Instance.tier, year, modality)
        ).all()
        return [StorageUsage(t, y, m, n, int(b)) for t, y, m, n, b in rows]

    def move_patient_to_archive(self, patient_pk: int) -> TierMove:
        """Copy, verify, switch and drop: the patient's files now live in the archive tier (owns its transactions)."""
        from archive_core.tiers import move_patient_to_archive

        return move_patient_to_archive(self._archive, patient_pk)

    def read_instance(self, sop_instance_uid: str) -> bytes:
        """The stored Part 10 file of an instance, whichever tier holds it."""
        from archive_core.tiers import read_instance

        return read_instance(self._archive, sop_instance_uid)

    def tombstone_patient(self, session: Session, patient_id: str, issuer: str, *, at: datetime) -> TombstoneResult:
        from archive_core.purge import tombstone_patient

        return tombstone_patient(session, patient_id, issuer, at=at)

    def tombstone_study(self, session: Session, study_uid: str, *, at: datetime) -> TombstoneResult:
        from archive_core.purge import tombstone_study

        return tombstone_study(session, study_uid, at=at)

    def delete_tombstoned_files(self, sop_instance_uids: list[str] | tuple[str, ...]) -> int:
        """Delete files of tombstoned instances only (committed tombstones; idempotent)."""
        from archive_core.purge import delete_tombstoned_files

        return delete_tombstoned_files(self._archive, sop_instance_uids)

    def study_owner(self, session: Session, study_uid: str) -> tuple[str, str] | None:
        """(patient ID, issuer) of a visible study."""
        row = session.execute(
            select(Patient.patient_id, Patient.issuer_of_patient_id)
            .join(Study, Study.patient_pk == Patient.id)
            .where(Study.study_uid == study_uid, Study.deleted_at.is_(None))
        ).first()
        return (row[0], row[1]) if row else None

    def move_study(self, session: Session, study_uid: str, to_patient_id: str, to_issuer: str = "") -> str:
        from archive_core.corrections import move_study

        return move_study(session, study_uid, to_patient_id, to_issuer)

    def merge_patients(self, session: Session, source_id: str, target_id: str, *, at: datetime) -> int:
        from archive_core.corrections import merge_patients

        return merge_patients(session, source_id, target_id, at=at)
