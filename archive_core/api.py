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
from archive_core.index.models import Instance, Patient, Study, utcnow

__all__ = ["ArchiveFacade", "ArchiveStats", "Base", "StudySummary", "utcnow"]


@dataclass(frozen=True)
class ArchiveStats:
    patients: int
    studies: int
    instances: int
    bytes_stored: int


@dataclass(frozen=True)
class StudySummary:
    """A study as the back-office bills it: identity snapshot, accession, modalities, external flag."""

    study_uid: str
    study_date: str | None  # YYYYMMDD as received
    accession_number: str | None
    modalities: tuple[str, ...]
    description: str | None
    external: bool
    patient_id: str
    patient_name: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    received_at: datetime


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
                patients=s.scalar(select(func.count(Patient.id))) or 0,
                studies=s.scalar(select(func.count(Study.id))) or 0,
                instances=s.scalar(select(func.count(Instance.id))) or 0,
                bytes_stored=s.scalar(select(func.coalesce(func.sum(Instance.size_bytes), 0))) or 0,
            )

    def list_studies(
        self,
        *,
        study_date: str | None = None,
        patient_id: str | None = None,
        study_uids: tuple[str, ...] | None = None,
        limit: int = 5000,
    ) -> list[StudySummary]:
        """Studies filtered by exact date (YYYYMMDD), exact Patient ID and/or UIDs, oldest first."""
        query = select(Study, Patient).join(Patient, Study.patient_pk == Patient.id)
        if study_date is not None:
            query = query.where(Study.study_date == study_date)
        if patient_id is not None:
            query = query.where(Patient.patient_id == patient_id)
        if study_uids is not None:
            query = query.where(Study.study_uid.in_(study_uids))
        with self._archive.sessions() as s:
            rows = s.execute(query.order_by(Study.id).limit(limit)).all()
            return [
                StudySummary(
                    study_uid=st.study_uid,
                    study_date=st.study_date,
                    accession_number=st.accession_number,
                    modalities=tuple(m for m in (st.modalities_in_study or "").split("\\") if m),
                    description=st.study_description,
                    external=bool(st.external),
                    patient_id=p.patient_id,
                    patient_name=p.patient_name,
                    patient_birth_date=p.patient_birth_date,
                    patient_sex=p.patient_sex,
                    received_at=st.received_at,
                )
                for st, p in rows
            ]
