"""One study's contents in the caller's session: its series and instances, its patient's other
studies (priors), and which study an instance belongs to."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from archive_core.api.studies import row_summary, study_rows, summary
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
from archive_core.index.models import Instance, Series, Study
from archive_core.index.query import STUDY_ROOT, Query, find
from archive_core.values import da_to_iso


def detail(session: Session, study_uid: str) -> StudyDetail:
    """See :meth:`archive_core.api.ArchiveFacade.study_detail`."""
    row = session.execute(study_rows().where(Study.study_uid == study_uid)).first()
    if row is None:
        raise NotFound(f"no study {study_uid}")
    study, pat = row
    series_rows = session.scalars(
        select(Series)
        .where(Series.study_pk == study.id, Series.deleted_at.is_(None))
        .order_by(Series.series_number, Series.id)
    ).all()
    series = []
    for se in series_rows:
        first = session.execute(
            select(Instance.sop_instance_uid, Instance.sop_class_uid)
            .where(Instance.series_pk == se.id, Instance.deleted_at.is_(None))
            .order_by(Instance.instance_number, Instance.id)
            .limit(1)
        ).first()
        series.append(
            SeriesSummary(
                series_uid=se.series_uid,
                modality=se.modality,
                series_number=se.series_number,
                description=se.series_description,
                body_part=se.body_part_examined,
                num_instances=se.num_instances,
                first_sop_uid=first[0] if first else None,
                first_is_image=bool(first) and first[1] not in NON_IMAGE_CLASSES,
            )
        )
    return StudyDetail(summary(study, pat), tuple(series))


def contents(session: Session, study_uid: str) -> StudyContents:
    """See :meth:`archive_core.api.ArchiveFacade.get_study`."""
    rows = find(session, Query(root=STUDY_ROOT, level="STUDY", conditions={"StudyInstanceUID": study_uid}))
    if not rows:
        raise NotFound(f"no study {study_uid}")
    series_rows = session.execute(
        select(Series)
        .where(Series.study_pk == rows[0]["_study_pk"], Series.deleted_at.is_(None))
        .order_by(Series.series_number, Series.id)
    ).scalars().all()
    instances: dict[int, list[InstanceSummary]] = {}
    stmt = (
        select(Instance.series_pk, Instance.sop_instance_uid, Instance.sop_class_uid, Instance.instance_number,
               Instance.transfer_syntax_uid, Instance.size_bytes)
        .join(Series, Instance.series_pk == Series.id)
        .where(Series.study_pk == rows[0]["_study_pk"], Instance.deleted_at.is_(None))
        .order_by(Instance.instance_number, Instance.id)
    )
    for series_pk, *values in session.execute(stmt):
        instances.setdefault(series_pk, []).append(InstanceSummary(*values))
    series = tuple(
        SeriesContents(
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
    return StudyContents(study=row_summary(rows[0]), series=series)


def priors(session: Session, study_uid: str) -> list[PriorSummary]:
    """See :meth:`archive_core.api.ArchiveFacade.priors`."""
    patient_pk = session.scalar(
        select(Study.patient_pk).where(Study.study_uid == study_uid, Study.deleted_at.is_(None))
    )
    if patient_pk is None:
        raise NotFound(f"no study {study_uid}")
    studies = session.execute(
        select(Study)
        .where(Study.patient_pk == patient_pk, Study.study_uid != study_uid, Study.deleted_at.is_(None))
        .order_by(func.coalesce(Study.study_date, "").desc(), func.coalesce(Study.study_time_norm, "").desc(),
                  Study.id.desc())
    ).scalars().all()
    body_parts: dict[int, set[str]] = {}
    if studies:
        stmt = (
            select(Series.study_pk, Series.body_part_examined)
            .where(
                Series.study_pk.in_([st.id for st in studies]),
                Series.body_part_examined.is_not(None),
                Series.deleted_at.is_(None),
            )
            .distinct()
        )
        for study_pk, part in session.execute(stmt):
            body_parts.setdefault(study_pk, set()).add(part)
    return [
        PriorSummary(
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


def prior_studies(session: Session, study_uid: str) -> list[PriorStudy]:
    """See :meth:`archive_core.api.ArchiveFacade.prior_studies`."""
    others = priors(session, study_uid)  # NotFound for an unknown study
    current = session.scalar(select(Study).where(Study.study_uid == study_uid, Study.deleted_at.is_(None)))
    modalities = {m for m in current.modalities_in_study.split("\\") if m}
    parts = {
        b.upper()
        for b in session.scalars(
            select(Series.body_part_examined).where(Series.study_pk == current.id, Series.deleted_at.is_(None))
        )
        if b
    }
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
