"""One study's contents in the caller's session: its series and instances, its patient's other
studies (priors), and which study an instance belongs to."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from archive_core.api.studies import study_rows, summary
from archive_core.api.types import (
    NON_IMAGE_CLASSES,
    InstanceRef,
    InstanceSummary,
    PriorStudy,
    PriorSummary,
    SeriesContents,
    SeriesSummary,
    StudyContents,
    StudyDetail,
)
from archive_core.errors import NotFound
from archive_core.index.models import Instance, Patient, Series, Study
from archive_core.values import da_to_iso


def _study_row(session: Session, study_uid: str) -> tuple[Study, Patient]:
    """The (Study, Patient) row of a visible study (:func:`study_rows`); NotFound otherwise."""
    row = session.execute(study_rows(visible_patient=True).where(Study.study_uid == study_uid)).first()
    if row is None:
        raise NotFound(f"no study {study_uid}")
    return row[0], row[1]


def _series_of(session: Session, study_pk: int) -> list[Series]:
    """The visible series of a study, by series number."""
    return list(session.scalars(
        select(Series).where(Series.study_pk == study_pk, Series.deleted_at.is_(None))
        .order_by(Series.series_number, Series.id)
    ))


def _body_parts(session: Session, study_pks: list[int]) -> dict[int, set[str]]:
    """The body parts the visible series of each study examined (empty ones left out)."""
    parts: dict[int, set[str]] = {}
    if study_pks:
        stmt = select(Series.study_pk, Series.body_part_examined).where(
            Series.study_pk.in_(study_pks), Series.body_part_examined.is_not(None), Series.body_part_examined != "",
            Series.deleted_at.is_(None),
        ).distinct()
        for study_pk, part in session.execute(stmt):
            parts.setdefault(study_pk, set()).add(part)
    return parts


def detail(session: Session, study_uid: str, *, with_instances: bool = False) -> StudyDetail:
    """See :meth:`archive_core.api.ArchiveFacade.study_detail`; *with_instances*: :meth:`~ArchiveFacade.get_study`."""
    study, pat = _study_row(session, study_uid)
    listed = _instances_of(session, study.id) if with_instances else None
    series = []
    for se in _series_of(session, study.id):
        if listed is None:
            first = session.execute(
                select(Instance.sop_instance_uid, Instance.sop_class_uid)
                .where(Instance.series_pk == se.id, Instance.deleted_at.is_(None))
                .order_by(Instance.instance_number, Instance.id)
                .limit(1)
            ).first()
            extra = {}
        else:
            instances = tuple(listed.get(se.id, ()))
            first = (instances[0].sop_instance_uid, instances[0].sop_class_uid) if instances else None
            extra = {"instances": instances}
        series.append(
            (SeriesSummary if listed is None else SeriesContents)(
                series_uid=se.series_uid,
                modality=se.modality,
                series_number=se.series_number,
                description=se.series_description,
                body_part=se.body_part_examined,
                num_instances=se.num_instances,
                first_sop_uid=first[0] if first else None,
                first_is_image=bool(first) and first[1] not in NON_IMAGE_CLASSES,
                **extra,
            )
        )
    return (StudyDetail if listed is None else StudyContents)(summary(study, pat), tuple(series))


def _instances_of(session: Session, study_pk: int) -> dict[int, list[InstanceSummary]]:
    """The visible instances of a study by series row id, in reading order."""
    instances: dict[int, list[InstanceSummary]] = {}
    stmt = (
        select(Instance.series_pk, Instance.sop_instance_uid, Instance.sop_class_uid, Instance.instance_number,
               Instance.transfer_syntax_uid, Instance.size_bytes)
        .join(Series, Instance.series_pk == Series.id)
        .where(Series.study_pk == study_pk, Instance.deleted_at.is_(None))
        .order_by(Instance.instance_number, Instance.id)
    )
    for series_pk, *values in session.execute(stmt):
        instances.setdefault(series_pk, []).append(InstanceSummary(*values))
    return instances


def priors(session: Session, study_uid: str) -> list[PriorSummary]:
    """See :meth:`archive_core.api.ArchiveFacade.priors`."""
    study, _patient = _study_row(session, study_uid)
    rows = session.execute(
        study_rows(visible_patient=True)
        .where(Study.patient_pk == study.patient_pk, Study.study_uid != study_uid)
        .order_by(func.coalesce(Study.study_date, "").desc(), func.coalesce(Study.study_time_norm, "").desc(),
                  Study.id.desc())
    ).all()
    parts = _body_parts(session, [st.id for st, _pat in rows])
    return [summary(st, pat, PriorSummary, body_parts=tuple(sorted(parts.get(st.id, ())))) for st, pat in rows]


def prior_studies(session: Session, study_uid: str) -> list[PriorStudy]:
    """See :meth:`archive_core.api.ArchiveFacade.prior_studies`."""
    others = priors(session, study_uid)  # NotFound for an unknown study
    study, patient = _study_row(session, study_uid)
    modalities = set(summary(study, patient).modalities)
    parts = {b.upper() for b in _body_parts(session, [study.id]).get(study.id, ())}
    result = []
    for other in others:
        other_parts = {b.upper() for b in other.body_parts}
        result.append(
            PriorStudy(
                study_uid=other.study_uid,
                study_date=da_to_iso(other.study_date or None),
                modalities=other.modalities,
                description=other.description or None,
                body_parts=tuple(sorted(other_parts)),
                relevant=bool(modalities & set(other.modalities)) or bool(parts & other_parts),
            )
        )
    return result


def series_instances(session: Session, series_uid: str) -> list[InstanceRef]:
    """The instances of a series in reading order (instance number); NotFound for an unknown series."""
    if session.scalar(select(Series.id).where(Series.series_uid == series_uid, Series.deleted_at.is_(None))) is None:
        raise NotFound(f"no series {series_uid}")
    rows = session.execute(
        select(Instance.sop_instance_uid, Instance.sop_class_uid, Instance.instance_number)
        .join(Series, Instance.series_pk == Series.id)
        .where(Series.series_uid == series_uid, Instance.deleted_at.is_(None))
        .order_by(Instance.instance_number, Instance.id)
    ).all()
    return [InstanceRef(uid, cls, num, series_uid) for uid, cls, num in rows]


def study_instances(session: Session, study_uid: str) -> list[InstanceRef]:
    """The visible instances of a study, series by series in reading order."""
    rows = session.execute(
        select(Instance.sop_instance_uid, Instance.sop_class_uid, Instance.instance_number, Series.series_uid)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .where(Study.study_uid == study_uid, Instance.deleted_at.is_(None))
        .order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
    ).all()
    return [InstanceRef(uid, cls, num, se) for uid, cls, num, se in rows]


def instance_study_uid(session: Session, sop_instance_uid: str) -> str:
    """The study a visible instance belongs to; NotFound otherwise."""
    uid = session.scalar(
        select(Study.study_uid)
        .join(Series, Series.study_pk == Study.id)
        .join(Instance, Instance.series_pk == Series.id)
        .where(Instance.sop_instance_uid == sop_instance_uid, Instance.deleted_at.is_(None))
    )
    if uid is None:
        raise NotFound(f"no instance {sop_instance_uid}")
    return uid


def instance_checksum(session: Session, sop_instance_uid: str) -> str:
    """The stored checksum of a visible instance (part of its render cache key); NotFound otherwise."""
    checksum = session.scalar(
        select(Instance.checksum_sha256).where(
            Instance.sop_instance_uid == sop_instance_uid, Instance.deleted_at.is_(None)
        )
    )
    if checksum is None:
        raise NotFound(f"no instance {sop_instance_uid}")
    return checksum
