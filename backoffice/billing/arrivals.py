"""Exam groups from arrived studies: the glue between the archive facade and the billing services.

No scheduler: groups are created when someone looks (a list) or bills (an issue).
"""

from __future__ import annotations

from datetime import date

from sqlalchemy.exc import IntegrityError

from backoffice.billing import services as S
from backoffice.billing.models import ExamGroup
from backoffice.extensions import db, facade


def sync_from_archive(*, visit_date: date | None, patient_id: str | None) -> None:
    """Exam groups exist as soon as a study arrived: create the missing ones now, on read."""
    # Undated studies count as visits on the day they were received (Europe/Paris).
    studies = facade().list_studies(db(), study_date=visit_date.strftime("%Y%m%d") if visit_date else None,
                                    patient_id=patient_id, include_undated=True)
    if not S.unattached(db(), studies):
        return
    for attempt in range(3):
        try:
            with facade().new_session(write=True) as s:
                S.attach_studies(s, studies)
                s.commit()
            break
        except IntegrityError:  # another request attached them at the same moment (PostgreSQL)
            if attempt == 2:
                raise
    # End the request's read transaction (a GET: nothing of its own to keep) so that its next read
    # sees what was just attached; rolling back, not committing: only the request's end commits.
    db().rollback()


def attach_before_issue(group_id: int) -> ExamGroup | None:
    """Studies of this patient and day that arrived but were never listed join the group's snapshot.

    Runs in the request's own (write) transaction: a second write session would wait on our lock.
    """
    group = db().get(ExamGroup, group_id)
    if group is not None and S.attach_studies(db(), facade().list_studies(db(),
            study_date=group.visit_date.strftime("%Y%m%d"), patient_id=group.patient_id, include_undated=True)):
        db().expire(group)  # its studies (and perhaps its patient name) changed: read them again
    if group is not None and not group.patient_name:
        from backoffice.billing.checkin import fill_identity

        fill_identity(group)  # checked in by ID alone before the name was known: the invoice names the patient
    return group  # the caller holding it keeps it in the session's identity map (no second read)
