"""Study listings, each in the caller's session: the browser's page, C-FIND-style search, exact
lists, what arrived since, and the daily counts. Every listing of (study, patient) rows starts from
:func:`study_rows`, the one query of visible studies."""

from __future__ import annotations

from datetime import date as _date
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from archive_core.api.types import StudyPage, StudySummary
from archive_core.index import patient_search as _patient_search
from archive_core.index.matching import fold_text, wildcard_match
from archive_core.index.models import Patient, Series, Study
from archive_core.index.query import STUDY_ROOT, Query, find
from archive_core.values import format_da


def escape_like(value: str) -> str:
    """*value* as a literal inside a ``LIKE`` pattern (use with ``escape="\\"``)."""
    return value.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_")


def study_rows(*, visible_patient: bool = False) -> Select:
    """(Study, Patient) of the visible (not tombstoned) studies; *visible_patient* leaves out those
    of a tombstoned patient too."""
    query = select(Study, Patient).join(Patient, Study.patient_pk == Patient.id).where(Study.deleted_at.is_(None))
    return query.where(Patient.deleted_at.is_(None)) if visible_patient else query


def summary(study: Study, patient: Patient, kind: type[StudySummary] = StudySummary, **extra: Any) -> StudySummary:
    """The one study summary built from a (Study, Patient) row of :func:`study_rows`; *kind* and *extra*
    for a summary that carries more (:class:`~archive_core.api.types.PriorSummary`'s body parts)."""
    return kind(
        study_uid=study.study_uid,
        study_date=study.study_date,
        study_time=study.study_time,
        accession_number=study.accession_number,
        description=study.study_description,
        modalities=tuple(m for m in (study.modalities_in_study or "").split("\\") if m),
        num_series=study.num_series,
        num_instances=study.num_instances,
        patient_id=patient.patient_id,
        patient_name=patient.patient_name,
        patient_birth_date=patient.patient_birth_date,
        patient_sex=patient.patient_sex,
        referring_physician_name=study.referring_physician_name,
        external=bool(study.external),
        received_at=study.received_at,
        **extra,
    )


def _dicom_date(value: _date | str | None) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = _date.fromisoformat(value)
    return format_da(value)


def browse(session: Session, *, patient: str, date_from: _date | str | None, date_to: _date | str | None,
           modality: str, accession: str, description: str, limit: int, offset: int) -> StudyPage:
    """See :meth:`archive_core.api.ArchiveFacade.browse_studies`."""
    q = study_rows()
    patient = patient.strip()
    if patient:
        # The one patient search (accents, word order, hyphens, birth date, ID): patients
        # first (a small table), then their studies through the patient_pk index.
        dialect = session.get_bind().dialect.name
        q = q.where(Study.patient_pk.in_(_patient_search.matching_patient_pks(patient, dialect)))
    if date_from:
        q = q.where(Study.study_date >= _dicom_date(date_from))
    if date_to:
        q = q.where(Study.study_date <= _dicom_date(date_to))
    if modality.strip():
        q = q.where(
            select(Series.id)
            .where(Series.study_pk == Study.id, Series.modality == modality.strip().upper(), Series.deleted_at.is_(None))
            .exists()
        )
    if accession.strip():
        q = q.where(Study.accession_number == accession.strip())
    if description.strip():
        q = q.where(
            func.upper(Study.study_description).like("%" + escape_like(description.strip().upper()) + "%", escape="\\")
        )
    q = q.order_by(Study.study_date.desc(), Study.study_time.desc(), Study.id.desc())
    rows = session.execute(q.limit(limit + 1).offset(offset)).all()
    return StudyPage(tuple(summary(study, pat) for study, pat in rows[:limit]), len(rows) > limit)


def find_matching(session: Session, *, patient_id: str | None, patient_name: str | None, date_from: str | None,
                  date_to: str | None, modality: str | None, accession_number: str | None, text: str | None,
                  limit: int, offset: int) -> list[StudySummary]:
    """See :meth:`archive_core.api.ArchiveFacade.find_studies`."""
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
    dialect = session.get_bind().dialect.name
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
    # C-FIND's engine says which studies match (its matching rules are the one implementation); their
    # rows come from study_rows, in the same (index) order.
    query = Query(root=STUDY_ROOT, level="STUDY", conditions=conditions)
    pks = [r["_study_pk"] for r in find(session, query, limit=limit, offset=offset, extra=extra)]
    rows = session.execute(study_rows(visible_patient=True).where(Study.id.in_(pks)).order_by(Study.id)).all()
    return [summary(st, p) for st, p in rows]


def exact_list(session: Session, *, study_date: str | None, patient_id: str | None,
               study_uids: tuple[str, ...] | None, include_undated: bool, limit: int) -> list[StudySummary]:
    """See :meth:`archive_core.api.ArchiveFacade.list_studies`."""
    query = study_rows(visible_patient=True)
    if study_date is not None:
        dated = Study.study_date == study_date
        if include_undated:
            dated = or_(dated, Study.study_date.is_(None), Study.study_date == "")
        query = query.where(dated)
    if patient_id is not None:
        query = query.where(Patient.patient_id == patient_id)
    if study_uids is not None:
        query = query.where(Study.study_uid.in_(study_uids))
    return [summary(st, p) for st, p in session.execute(query.order_by(Study.id).limit(limit)).all()]


def visible(session: Session, *, patient: tuple[str, str] | None,
            study_uids: tuple[str, ...] | None) -> list[StudySummary]:
    """See :meth:`archive_core.api.ArchiveFacade.visible_studies`."""
    query = study_rows(visible_patient=True)
    if patient is not None:
        query = query.where(Patient.patient_id == patient[0], Patient.issuer_of_patient_id == patient[1])
    if study_uids is not None:
        query = query.where(Study.study_uid.in_(study_uids))
    return [summary(st, p) for st, p in session.execute(query.order_by(Study.study_uid)).all()]


def received_since(session: Session, since, *, include_external: bool, limit: int) -> list[StudySummary]:
    """See :meth:`archive_core.api.ArchiveFacade.studies_received_since`."""
    q = study_rows().where(Study.received_at >= since)
    if not include_external:
        q = q.where(Study.external.is_(False))
    return [summary(st, pat) for st, pat in session.execute(q.order_by(Study.received_at, Study.id).limit(limit))]


def owner(session: Session, study_uid: str) -> tuple[str, str] | None:
    """(patient ID, issuer) of a visible study."""
    row = session.execute(
        select(Patient.patient_id, Patient.issuer_of_patient_id)
        .join(Study, Study.patient_pk == Patient.id)
        .where(Study.study_uid == study_uid, Study.deleted_at.is_(None))
    ).first()
    return (row[0], row[1]) if row else None


def count_instances(session: Session, study_uids: list[str]) -> int:
    return session.scalar(select(func.coalesce(func.sum(Study.num_instances), 0)).where(
        Study.study_uid.in_(study_uids), Study.deleted_at.is_(None))) or 0


def by_day_and_modalities(session: Session, since: str, until: str) -> list[tuple[str, str, int]]:
    """See :meth:`archive_core.api.ArchiveFacade.studies_by_day_and_modalities`."""
    rows = session.execute(
        select(Study.study_date, Study.modalities_in_study, func.count(Study.id))
        .where(Study.study_date >= since, Study.study_date <= until, Study.deleted_at.is_(None),
               Study.external.is_(False))
        .group_by(Study.study_date, Study.modalities_in_study)
    ).all()
    return [(d, m or "", int(n)) for d, m, n in rows]
