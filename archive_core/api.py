"""The facade the back-office uses: plain frozen dataclasses in, plain frozen dataclasses out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from archive_core import audit as _audit
from archive_core.archive import Archive
from archive_core.config import Settings
from archive_core.db import Base, write_session
from archive_core.index.models import Instance, Patient, Study, utcnow

__all__ = ["ArchiveFacade", "ArchiveStats", "Base", "utcnow"]


@dataclass(frozen=True)
class ArchiveStats:
    patients: int
    studies: int
    instances: int
    bytes_stored: int


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


# -- query/retrieve (issue 3): finding studies, one study, priors, retrieve to a peer -------------

from archive_core.errors import NotFound  # noqa: E402
from archive_core.index.matching import fold_text, wildcard_match  # noqa: E402
from archive_core.index.models import Series  # noqa: E402
from archive_core.index.query import STUDY_ROOT, Query, find, instances_to_retrieve  # noqa: E402

__all__ += ["InstanceSummary", "PriorStudy", "RetrieveResult", "SeriesSummary", "StudyDetail", "StudySummary"]


@dataclass(frozen=True)
class StudySummary:
    study_uid: str
    patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    study_date: str
    study_time: str
    accession_number: str
    study_description: str
    referring_physician_name: str
    modalities: tuple[str, ...]
    num_series: int
    num_instances: int
    external: bool


@dataclass(frozen=True)
class InstanceSummary:
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    transfer_syntax_uid: str
    size_bytes: int


@dataclass(frozen=True)
class SeriesSummary:
    series_uid: str
    modality: str
    series_number: int | None
    series_description: str
    body_part_examined: str
    num_instances: int
    instances: tuple[InstanceSummary, ...]


@dataclass(frozen=True)
class StudyDetail:
    study: StudySummary
    series: tuple[SeriesSummary, ...]


@dataclass(frozen=True)
class PriorStudy:
    """Another study of the same patient, with what a caller needs to mark the relevant ones."""

    study_uid: str
    study_date: str
    study_time: str
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]
    description: str
    accession_number: str
    num_instances: int
    external: bool


@dataclass(frozen=True)
class RetrieveResult:
    completed: int
    failed: int
    warning: int
    failed_sop_instance_uids: tuple[str, ...]


def _summary(row: dict[str, Any]) -> StudySummary:
    return StudySummary(
        study_uid=row["StudyInstanceUID"],
        patient_id=row["PatientID"] or "",
        patient_name=row["PatientName"] or "",
        patient_birth_date=row["PatientBirthDate"] or "",
        patient_sex=row["PatientSex"] or "",
        study_date=row["StudyDate"] or "",
        study_time=row["StudyTime"] or "",
        accession_number=row["AccessionNumber"] or "",
        study_description=row["StudyDescription"] or "",
        referring_physician_name=row["ReferringPhysicianName"] or "",
        modalities=tuple(m for m in (row["ModalitiesInStudy"] or "").split("\\") if m),
        num_series=row["NumberOfStudyRelatedSeries"] or 0,
        num_instances=row["NumberOfStudyRelatedInstances"] or 0,
        external=bool(row["_external"]),
    )


def _find_studies(self: "ArchiveFacade", *, patient_id: str | None = None, patient_name: str | None = None,
                  date_from: str | None = None, date_to: str | None = None, modality: str | None = None,
                  accession_number: str | None = None, text: str | None = None, limit: int = 100,
                  offset: int = 0) -> list[StudySummary]:
    """Studies matching every criterion given, with C-FIND's matching rules (``*``/``?`` wildcards,
    person names case- and accent-insensitive); *text* looks for a fragment in the patient's
    name or ID, the accession number or the description. Dates are ``YYYYMMDD``, bounds included."""
    conditions: dict[str, Any] = {}
    if patient_id:
        conditions["PatientID"] = patient_id
    if patient_name:
        conditions["PatientName"] = patient_name
    if date_from or date_to:
        conditions["StudyDate"] = f"{date_from or ''}-{date_to or ''}"
    if modality:
        conditions["ModalitiesInStudy"] = modality
    if accession_number:
        conditions["AccessionNumber"] = accession_number
    with self._archive.sessions() as s:
        dialect = s.get_bind().dialect.name
        extra = []
        if text and text.strip():
            fragment = text.strip().replace("*", "").replace("?", "")
            extra.append(
                or_(
                    wildcard_match(Patient.patient_name_search, f"*{fold_text(fragment)}*", dialect),
                    wildcard_match(Patient.patient_id, f"*{fragment}*", dialect),
                    wildcard_match(Study.accession_number, f"*{fragment}*", dialect),
                    wildcard_match(Study.study_description, f"*{fragment}*", dialect),
                )
            )
        query = Query(root=STUDY_ROOT, level="STUDY", conditions=conditions)
        rows = find(s, query, limit=limit, offset=offset, extra=extra)
    return [_summary(r) for r in rows]


def _get_study(self: "ArchiveFacade", study_uid: str) -> StudyDetail:
    """One study with its series and instances; :class:`NotFound` if it is not in the archive."""
    with self._archive.sessions() as s:
        rows = find(s, Query(root=STUDY_ROOT, level="STUDY", conditions={"StudyInstanceUID": study_uid}))
        if not rows:
            raise NotFound(f"no study {study_uid}")
        series_rows = s.execute(
            select(Series).where(Series.study_pk == rows[0]["_study_pk"]).order_by(Series.series_number, Series.id)
        ).scalars().all()
        instances: dict[int, list[InstanceSummary]] = {}
        stmt = (
            select(Instance.series_pk, Instance.sop_instance_uid, Instance.sop_class_uid, Instance.instance_number,
                   Instance.transfer_syntax_uid, Instance.size_bytes)
            .join(Series, Instance.series_pk == Series.id)
            .where(Series.study_pk == rows[0]["_study_pk"])
            .order_by(Instance.instance_number, Instance.id)
        )
        for series_pk, *values in s.execute(stmt):
            instances.setdefault(series_pk, []).append(InstanceSummary(*values))
        series = tuple(
            SeriesSummary(
                series_uid=se.series_uid,
                modality=se.modality or "",
                series_number=se.series_number,
                series_description=se.series_description or "",
                body_part_examined=se.body_part_examined or "",
                num_instances=se.num_instances,
                instances=tuple(instances.get(se.id, ())),
            )
            for se in series_rows
        )
    return StudyDetail(study=_summary(rows[0]), series=series)


def _priors(self: "ArchiveFacade", study_uid: str) -> list[PriorStudy]:
    """The other studies of the same patient, newest first; :class:`NotFound` for an unknown study."""
    with self._archive.sessions() as s:
        patient_pk = s.scalar(select(Study.patient_pk).where(Study.study_uid == study_uid))
        if patient_pk is None:
            raise NotFound(f"no study {study_uid}")
        studies = s.execute(
            select(Study)
            .where(Study.patient_pk == patient_pk, Study.study_uid != study_uid)
            .order_by(func.coalesce(Study.study_date, "").desc(), func.coalesce(Study.study_time_norm, "").desc(),
                      Study.id.desc())
        ).scalars().all()
        body_parts: dict[int, set[str]] = {}
        if studies:
            stmt = (
                select(Series.study_pk, Series.body_part_examined)
                .where(Series.study_pk.in_([st.id for st in studies]), Series.body_part_examined.is_not(None))
                .distinct()
            )
            for study_pk, part in s.execute(stmt):
                body_parts.setdefault(study_pk, set()).add(part)
        return [
            PriorStudy(
                study_uid=st.study_uid,
                study_date=st.study_date or "",
                study_time=st.study_time or "",
                modalities=tuple(m for m in st.modalities_in_study.split("\\") if m),
                body_parts=tuple(sorted(body_parts.get(st.id, ()))),
                description=st.study_description or "",
                accession_number=st.accession_number or "",
                num_instances=st.num_instances,
                external=st.external,
            )
            for st in studies
        ]


def _retrieve_to_peer(self: "ArchiveFacade", study_uids: list[str], ae_title: str, *,
                      actor: str = "system", actor_kind: str = "system") -> RetrieveResult:
    """Send whole studies to a registered peer (C-STORE, one association); audited per study.

    Raises :class:`~archive_core.errors.UnknownPeer` for an AE that is not registered and
    :class:`NotFound` when none of the studies is in the archive.
    """
    from archive_core.net.scu import send_instances
    from archive_core.peers import get_peer

    with self._archive.sessions() as s:
        peer = get_peer(s, ae_title)
        query = Query(root=STUDY_ROOT, level="STUDY", conditions={"StudyInstanceUID": list(study_uids)})
        instances = instances_to_retrieve(s, query) if study_uids else []
    if not instances:
        raise NotFound("none of these studies is in the archive")
    result = send_instances(
        self._archive.store, instances, host=peer.host, port=peer.port, called_ae=peer.ae_title,
        calling_ae=self.settings.DICOM_AE_TITLE, loop_delay=self.settings.DICOM_DUL_LOOP_DELAY,
        timeout=self.settings.DICOM_NETWORK_TIMEOUT,
    )
    with write_session(self._archive.sessions) as s:
        for uid in sorted({i.study_uid for i in instances}):
            _audit.record(s, "retrieve_to_peer", actor=actor, actor_kind=actor_kind, study_uid=uid,
                          detail={"destination": peer.ae_title, "completed": result.completed, "failed": result.failed})
    return RetrieveResult(result.completed, result.failed, result.warning, result.failed_uids)


ArchiveFacade.find_studies = _find_studies  # type: ignore[attr-defined]
ArchiveFacade.get_study = _get_study  # type: ignore[attr-defined]
ArchiveFacade.priors = _priors  # type: ignore[attr-defined]
ArchiveFacade.retrieve_to_peer = _retrieve_to_peer  # type: ignore[attr-defined]
