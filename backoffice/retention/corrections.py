"""Corrections: a study filed under the wrong patient, two records of one patient merged.

Functions take the caller's ``Session`` and never commit; a correction never changes what a batch
awaiting a decision or an execution names.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from archive_core.api import ArchiveError, ArchiveFacade, NotFound
from backoffice.retention.decisions import require_reason
from backoffice.retention.errors import RetentionError
from backoffice.retention.models import OPEN_STATUSES, DeathRecord, LegalHold, PurgeBatch, PurgeItem


def _open_batch_items(session: Session) -> list[tuple[int, str, str | None]]:
    """(batch id, patient ID, study UID or None) of every item of a batch not yet executed or rejected."""
    return list(session.execute(
        select(PurgeBatch.id, PurgeItem.patient_id, PurgeItem.study_uid)
        .join(PurgeItem, PurgeItem.batch_pk == PurgeBatch.id)
        .where(PurgeBatch.status.in_(OPEN_STATUSES)).order_by(PurgeBatch.id)
    ).all())


def _refuse_if_in_open_batch(session: Session, *, study_uid: str | None = None, owner: str | None = None,
                             patients: tuple[str, ...] = ()) -> None:
    """A correction never changes what a batch awaiting a decision or an execution names.

    Refused: moving a study of an open batch, or out of or into a record proposed as a whole; merging
    a patient who has anything in an open batch.
    """
    for batch_id, patient_id, item_study in _open_batch_items(session):
        if study_uid is not None and (item_study == study_uid or (item_study is None and patient_id == owner)):
            raise RetentionError("study_in_open_batch", batch=batch_id)
        if patient_id in patients and (item_study is None or study_uid is None):
            raise RetentionError("patient_in_open_batch", patient=patient_id, batch=batch_id)


def move_study(session: Session, facade: ArchiveFacade, study_uid: str, to_patient_id: str, reason: str, *,
               actor: str) -> None:
    require_reason(reason)
    owner = facade.study_owner(session, study_uid)
    if owner is None:
        raise RetentionError("study_not_found")
    _refuse_if_in_open_batch(session, study_uid=study_uid, owner=owner[0], patients=(to_patient_id,))
    try:
        previous = facade.move_study(session, study_uid, to_patient_id)
    except NotFound:
        raise RetentionError("patient_not_found") from None
    except ArchiveError as exc:
        raise RetentionError("correction_failed", detail=str(exc)) from exc
    facade.audit(session, "correction.study_moved", actor=actor, patient_id=to_patient_id, study_uid=study_uid,
                 detail={"from_patient_id": previous, "reason": reason.strip()})


def merge_patients(session: Session, facade: ArchiveFacade, source_id: str, target_id: str, reason: str, *,
                   actor: str) -> int:
    require_reason(reason)
    _refuse_if_in_open_batch(session, patients=(source_id, target_id))
    try:
        moved = facade.merge_patients(session, source_id, target_id, at=datetime.now(timezone.utc))
    except NotFound:
        raise RetentionError("patient_not_found") from None
    except ArchiveError as exc:
        raise RetentionError("correction_failed", detail=str(exc)) from exc
    # Holds and a recorded death follow the record into the surviving patient.
    for hold in session.scalars(select(LegalHold).where(LegalHold.patient_id == source_id)):
        hold.patient_id = target_id
    death = session.scalar(select(DeathRecord).where(DeathRecord.patient_id == source_id))
    if death is not None and session.scalar(select(DeathRecord).where(DeathRecord.patient_id == target_id)) is None:
        death.patient_id = target_id
    session.flush()
    facade.audit(session, "correction.patients_merged", actor=actor, patient_id=target_id,
                 detail={"merged_patient_id": source_id, "studies": moved, "reason": reason.strip()})
    return moved
