"""The index upsert: patient, study, series and instance rows of a batch of journal entries, in one transaction.

A new study is filed under its patient (a merged duplicate: under the survivor); attributes fill
blanks, the patient's newest win; an object received again replaces its row (duplicate policy
``overwrite``) and comes back from a purge; the counts of the series and studies touched are
refreshed. An entry that contradicts the index (:func:`~archive_core.index.identity.contradiction`)
is not indexed.
"""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from archive_core.db import write_session
from archive_core.errors import IdentityConflict
from archive_core.index.entries import Job
from archive_core.index.identity import contradiction
from archive_core.index.models import Instance, Patient, Peer, Series, Study

INDEX_LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")


def index_jobs(
    sessions: sessionmaker[Session],
    batch: list[Job],
    *,
    conflicts: list[tuple[Job, IdentityConflict]] | None = None,
) -> set[str]:
    """Create or update the index rows of *batch* in one write transaction; return the study UIDs touched.

    A job that contradicts the index (:func:`~archive_core.index.identity.contradiction`) is not
    indexed: it is appended to *conflicts*, or raised as :class:`IdentityConflict` when no list is given.
    """
    with write_session(sessions) as s:
        study_uids = {j.identity.study_uid for j in batch}
        series_uids = {j.identity.series_uid for j in batch}
        sop_uids = {j.identity.sop_instance_uid for j in batch}
        studies = {st.study_uid: st for st in s.scalars(select(Study).where(Study.study_uid.in_(study_uids)))}
        series = {se.series_uid: se for se in s.scalars(select(Series).where(Series.series_uid.in_(series_uids)))}
        instances = {
            i.sop_instance_uid: i for i in s.scalars(select(Instance).where(Instance.sop_instance_uid.in_(sop_uids)))
        }
        external_aes = set(s.scalars(select(Peer.ae_title).where(Peer.external.is_(True))))
        patients: dict[tuple[str, str], Patient] = {}
        moved_from_series: set[int] = set()
        for job in batch:
            ident = job.identity
            study = studies.get(ident.study_uid)
            conflict = contradiction(s, ident, study, series.get(ident.series_uid))
            if conflict is not None:
                if conflicts is None:
                    raise conflict
                conflicts.append((job, conflict))
                continue
            if study is None:
                prow = job.row("PATIENT")
                pkey = job.identity.patient_key
                patient = patients.get(pkey) or s.scalar(
                    select(Patient).where(Patient.patient_id == pkey[0], Patient.issuer_of_patient_id == pkey[1])
                )
                if patient is not None and patient.merged_into_pk is not None:
                    patient = s.get(Patient, patient.merged_into_pk)  # a merged duplicate: file under the survivor
                elif patient is None:
                    patient = Patient(patient_id=pkey[0], issuer_of_patient_id=pkey[1])
                    s.add(patient)
                    _update_blank(patient, prow, skip=("patient_id", "issuer_of_patient_id"), newest_wins=True)
                else:
                    _update_blank(patient, prow, skip=("patient_id", "issuer_of_patient_id"), newest_wins=True)
                    patient.deleted_at = None  # a purged patient who comes back is a new visit
                patients[pkey] = patient
                srow = job.row("STUDY")
                external = job.external if job.external is not None else (job.source_ae or "") in external_aes
                study = Study(study_uid=ident.study_uid, patient=patient, external=external)
                _update_blank(study, srow, skip=("study_uid",))
                s.add(study)
                studies[ident.study_uid] = study
            se = series.get(ident.series_uid)
            if se is None:
                se = Series(series_uid=ident.series_uid, study=study)
                _update_blank(se, job.row("SERIES"), skip=("series_uid",))
                s.add(se)
                series[ident.series_uid] = se
            irow = job.row("IMAGE")
            inst = instances.get(ident.sop_instance_uid)
            if inst is None:
                inst = Instance(sop_instance_uid=ident.sop_instance_uid)
                s.add(inst)
                instances[ident.sop_instance_uid] = inst
            elif inst.storage_key and inst.storage_key != ident.key:
                job.replaced_key = inst.storage_key
                moved_from_series.add(inst.series_pk)
            inst.series = se
            if study.deleted_at is not None:  # received again after a purge: a new visit, visible again
                study.deleted_at = None
                study.patient.deleted_at = None
            # A tombstoned row received again is visible again (and a pending purge skips its file).
            inst.deleted_at = se.deleted_at = None
            inst.sop_class_uid = ident.sop_class_uid
            inst.instance_number = irow["instance_number"]
            inst.image_rows, inst.image_columns = irow["image_rows"], irow["image_columns"]
            inst.number_of_frames = irow["number_of_frames"]
            inst.transfer_syntax_uid = job.transfer_syntax_uid
            inst.size_bytes = job.size_bytes
            inst.checksum_sha256 = job.checksum
            inst.storage_key = ident.key
            inst.tier = "active"
            inst.source_ae = job.source_ae
        s.flush()
        series_ids = {se.id for se in series.values() if se.series_uid in series_uids} | moved_from_series
        refused = {id(job) for job, _ in conflicts or ()}
        study_uids = {j.identity.study_uid for j in batch if id(j) not in refused}
        study_ids = {studies[u].id for u in study_uids}
        if moved_from_series:
            study_ids |= set(s.scalars(select(Series.study_pk).where(Series.id.in_(moved_from_series))))
        refresh_counts(s, series_ids, study_ids)
    return study_uids


def _update_blank(row: object, values: dict, *, skip: tuple[str, ...], newest_wins: bool = False) -> None:
    for column, value in values.items():
        if column in skip or value is None:
            continue
        if newest_wins or getattr(row, column) in (None, ""):
            setattr(row, column, value)


def refresh_counts(s: Session, series_ids: set[int], study_ids: set[int]) -> None:
    for series_id in series_ids:
        s.execute(
            update(Series)
            .where(Series.id == series_id)
            .values(num_instances=select(func.count(Instance.id)).where(Instance.series_pk == series_id).scalar_subquery())
        )
    for study_id in study_ids:
        rows = s.execute(select(Series.modality, Series.num_instances).where(Series.study_pk == study_id)).all()
        modalities = sorted({m for m, _ in rows if m})
        s.execute(
            update(Study)
            .where(Study.id == study_id)
            .values(
                num_series=len(rows),
                num_instances=sum(n for _, n in rows),
                modalities_in_study="\\".join(modalities)[:128],
            )
        )
