"""Index corrections: a study filed under the wrong patient, duplicate patients merged.

The stored files keep the identity they were sent with (they are kept byte for byte); the index
says which patient a study belongs to. Deleting a study sent by mistake is not here: it goes
through a tombstone and an approved purge (archive_core.purge).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from archive_core.errors import ArchiveError, NotFound
from archive_core.index.models import Patient, Study
from archive_core.purge import find_patient


def move_study(session: Session, study_uid: str, to_patient_id: str, to_issuer: str = "") -> str:
    """File a study under another (existing) patient; return the patient ID it was under."""
    study = session.scalar(select(Study).where(Study.study_uid == study_uid, Study.deleted_at.is_(None)))
    if study is None:
        raise NotFound("no such study")
    target = find_patient(session, to_patient_id, to_issuer)
    source = session.get(Patient, study.patient_pk)
    if source.id == target.id:
        raise ArchiveError("the study already belongs to this patient")
    study.patient_pk = target.id
    session.flush()
    return source.patient_id


def merge_patients(session: Session, source_id: str, target_id: str, *, at: datetime,
                   source_issuer: str = "", target_issuer: str = "") -> int:
    """Move every study of *source* to *target*; the source becomes a tombstone pointing at the target."""
    source = find_patient(session, source_id, source_issuer)
    target = find_patient(session, target_id, target_issuer)
    if source.id == target.id:
        raise ArchiveError("a patient cannot be merged into itself")
    moved = session.execute(
        update(Study).where(Study.patient_pk == source.id, Study.deleted_at.is_(None)).values(patient_pk=target.id)
    ).rowcount
    source.deleted_at = at
    source.merged_into_pk = target.id
    if not target.patient_birth_date and source.patient_birth_date:
        target.patient_birth_date = source.patient_birth_date
    session.flush()
    return moved
