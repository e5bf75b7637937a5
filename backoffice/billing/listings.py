"""The lists the billing pages and the API read (queries only, in the caller's session; nothing written
except the exam-group mapping rows, kept here with their list)."""

from __future__ import annotations

from datetime import date

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, selectinload

from archive_core.api import escape_like
from backoffice.billing.base import Invalid
from backoffice.billing.models import (Claim, Closing, ExamGroup, ExamGroupMapping, Insurer, Invoice, Membership,
                                       Payment, RemittanceItem, Tariff)


def search_groups(session: Session, text: str, patient_ids: list[str], *, after: int, limit: int) -> list[ExamGroup]:
    """Exam groups of *text* as a patient ID, of *patient_ids* (the archive's patient search), or whose typed
    name contains *text* (a group checked in before any image arrived is not in the archive yet)."""
    return list(session.scalars(
        select(ExamGroup).where(or_(ExamGroup.patient_id == text, ExamGroup.patient_id.in_(patient_ids),
                                    ExamGroup.patient_name.ilike(f"%{escape_like(text)}%", escape="\\")))
        .where(ExamGroup.id > after).order_by(ExamGroup.id).limit(limit)
        .options(selectinload(ExamGroup.studies))))


def sibling_groups(session: Session, group: ExamGroup) -> list[ExamGroup]:
    """The patient's other exam groups of the same visit day."""
    return list(session.scalars(select(ExamGroup).where(ExamGroup.patient_id == group.patient_id,
                                                        ExamGroup.visit_date == group.visit_date,
                                                        ExamGroup.id != group.id)))


def closing_of(session: Session, kind: str, period: str) -> Closing | None:
    return session.scalar(select(Closing).where(Closing.kind == kind, Closing.period == period))


def recent_closings(session: Session, limit: int = 200) -> list[Closing]:
    return list(session.scalars(select(Closing).order_by(Closing.id.desc()).limit(limit)))


def remittance_rows(session: Session, remittance_id: int) -> list:
    """The cheques of a remittance slip: (payment, invoice) pairs in payment order."""
    return session.execute(
        select(Payment, Invoice).join(RemittanceItem, RemittanceItem.payment_id == Payment.id)
        .join(Invoice, Invoice.id == Payment.invoice_id)
        .where(RemittanceItem.remittance_id == remittance_id).order_by(Payment.id)
    ).all()


def tariffs(session: Session) -> list[Tariff]:
    """Every tariff, per exam group, newest start first."""
    return list(session.scalars(select(Tariff).order_by(Tariff.exam_group, Tariff.effective_from.desc())))


def insurers(session: Session, *, retired_last: bool = False, active_only: bool = False) -> list[Insurer]:
    """Insurers by name (the page puts retired ones last; the patient page offers active ones only)."""
    query = select(Insurer)
    if active_only:
        query = query.where(Insurer.retired_at.is_(None))
    order = (Insurer.retired_at.is_not(None), Insurer.name) if retired_last else (Insurer.name,)
    return list(session.scalars(query.order_by(*order)))


def current_members(session: Session, insurer_id: int, today: date) -> int:
    """How many memberships of the insurer are valid today or later."""
    return session.scalar(select(func.count(Membership.id)).where(
        Membership.insurer_id == insurer_id, or_(Membership.valid_to.is_(None), Membership.valid_to >= today)))


def memberships_of(session: Session, patient_id: str) -> list[Membership]:
    """A patient's memberships, newest first."""
    return list(session.scalars(select(Membership).where(Membership.patient_id == patient_id)
                                .order_by(Membership.valid_from.desc(), Membership.id.desc())))


def claims(session: Session, *, statuses: tuple[str, ...] = (), after: int = 0, limit: int = 500) -> list[Claim]:
    query = select(Claim).where(Claim.id > after)
    if statuses:
        query = query.where(Claim.status.in_(statuses))
    return list(session.scalars(query.order_by(Claim.id).limit(limit)))


# -- the mapping from a study's modality and description to its exam group -------------------------


def mappings(session: Session) -> list[ExamGroupMapping]:
    return list(session.scalars(select(ExamGroupMapping).order_by(ExamGroupMapping.modality, ExamGroupMapping.id)))


def add_mapping(session: Session, *, modality: str, description: str, exam_group: str,
                labels: dict[str, str]) -> ExamGroupMapping:
    if exam_group not in labels:
        raise Invalid("unknown exam group", code="unknown_exam_group")
    row = ExamGroupMapping(modality=modality.strip().upper()[:16], description_contains=description.strip() or None,
                           exam_group=exam_group)
    session.add(row)
    session.flush()
    return row


def delete_mapping(session: Session, mapping_id: int) -> None:
    row = session.get(ExamGroupMapping, mapping_id)
    if row is not None:
        session.delete(row)
        session.flush()
