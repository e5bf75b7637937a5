"""Tariffs: the archiving fee of each exam group, by date; only future ones change.

Each function takes a Session first, flushes, never commits (the edge does)."""

from __future__ import annotations

from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from backoffice.billing.base import Conflict, Invalid, NotFound
from backoffice.billing.models import ExamGroup, Invoice, Tariff


MAX_FEE_CENTS = 100_000  # 1 000 €: anything above is a typing mistake for an archiving fee


def tariff_for(session: Session, exam_group: str, on: date) -> Tariff | None:
    """The tariff of *exam_group* in force on *on* (the newest that started on or before it)."""
    return session.scalar(
        select(Tariff)
        .where(Tariff.exam_group == exam_group, Tariff.effective_from <= on)
        .order_by(Tariff.effective_from.desc())
        .limit(1)
    )


def fee_for(session: Session, exam_group: str, on: date) -> int:
    tariff = tariff_for(session, exam_group, on)
    if tariff is None or tariff.national_insurance_paid:
        return 0
    return tariff.fee_cents


def exam_group_labels(session: Session) -> dict[str, str]:
    rows = session.execute(select(Tariff.exam_group, Tariff.label).order_by(Tariff.effective_from)).all()
    return {code: label for code, label in rows}


GROUP_CODE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def set_tariff(session: Session, *, exam_group: str, label: str, fee_cents: int, effective_from: date,
               national_insurance_paid: bool = False, new_group: bool = False) -> Tariff:
    """A new price from *effective_from*; past invoices keep their snapshot.

    The exam group is one that exists (chosen from a list, never typed: a typo would create a
    group, "scaner"), unless *new_group* says the manager is creating one on purpose: then its code
    is new, lower-case letters, digits and ``_``, and it needs a label.
    """
    _check_fee(fee_cents)
    exam_group = (exam_group or "").strip()
    if not exam_group:
        raise Invalid("exam_group is required", code="exam_group_required")
    known = session.scalar(select(Tariff.id).where(Tariff.exam_group == exam_group).limit(1)) is not None
    if new_group:
        if known:
            raise Conflict(f"the exam group {exam_group!r} already exists", code="group_exists")
        if not set(exam_group) <= GROUP_CODE_CHARS or not 2 <= len(exam_group) <= 32:
            raise Invalid("a new exam group code is 2 to 32 lower-case letters, digits or _", code="group_code")
        if not label.strip() or label.strip() == exam_group:
            raise Invalid("a new exam group needs its label", code="group_label")
    elif not known:
        raise Invalid(f"unknown exam group {exam_group!r}", code="unknown_exam_group")
    existing = session.scalar(
        select(Tariff).where(Tariff.exam_group == exam_group, Tariff.effective_from == effective_from)
    )
    if existing is not None:
        raise Conflict("a tariff already starts on that date for that exam group", code="tariff_exists")
    tariff = Tariff(exam_group=exam_group, label=label.strip() or exam_group, fee_cents=fee_cents,
                    effective_from=effective_from, national_insurance_paid=national_insurance_paid)
    session.add(tariff)
    session.flush()
    return tariff


def _check_fee(fee_cents) -> None:
    if not isinstance(fee_cents, int) or isinstance(fee_cents, bool) or not 0 <= fee_cents <= MAX_FEE_CENTS:
        raise Invalid(f"fee_cents must be an integer between 0 and {MAX_FEE_CENTS}", code="bad_fee")


def tariff_fields(tariff: Tariff) -> dict:
    """What the audit trail records of a tariff (before and after a correction, or withdrawn)."""
    return {"id": tariff.id, "exam_group": tariff.exam_group, "label": tariff.label, "fee_cents": tariff.fee_cents,
            "national_insurance_paid": bool(tariff.national_insurance_paid),
            "effective_from": tariff.effective_from.isoformat()}


def _future_tariff(session: Session, tariff_id: int, today: date) -> Tariff:
    """A tariff that has not taken effect yet and that no invoice used: only those may change.

    A tariff in force (or past) priced visits already: its invoices are snapshots that never change,
    and a new price is a new tariff from a later date.
    """
    tariff = session.get(Tariff, tariff_id)
    if tariff is None:
        raise NotFound("no such tariff", code="tariff_not_found")
    if tariff.effective_from <= today:
        raise Conflict("this tariff is in effect: add a new tariff from a later date instead", code="tariff_in_effect")
    used = session.scalar(select(Invoice.id).where(Invoice.exam_group == tariff.exam_group,
                                                   Invoice.visit_date >= tariff.effective_from).limit(1))
    if used is not None:
        raise Conflict("an invoice was issued at this tariff", code="tariff_used")
    return tariff


def correct_tariff(session: Session, tariff_id: int, *, today: date, fee_cents: int, label: str,
                   effective_from: date, national_insurance_paid: bool) -> tuple[Tariff, dict]:
    """Correct a future tariff (price, label, start date) before it takes effect; returns it and what it was."""
    tariff = _future_tariff(session, tariff_id, today)
    _check_fee(fee_cents)
    if effective_from <= today:
        raise Invalid("a corrected tariff still starts after today", code="tariff_start_past")
    clash = session.scalar(select(Tariff.id).where(Tariff.exam_group == tariff.exam_group,
                                                  Tariff.effective_from == effective_from, Tariff.id != tariff.id))
    if clash is not None:
        raise Conflict("a tariff already starts on that date for that exam group", code="tariff_exists")
    before = tariff_fields(tariff)
    tariff.fee_cents, tariff.effective_from = fee_cents, effective_from
    tariff.label = label.strip() or tariff.label
    tariff.national_insurance_paid = national_insurance_paid
    session.flush()
    return tariff, before


def withdraw_tariff(session: Session, tariff_id: int, *, today: date) -> dict:
    """Withdraw a future tariff before it takes effect (the earlier price stays in force); returns what it was.

    The only tariff of an exam group that visits were already checked in for cannot go: those
    visits would have no price.
    """
    tariff = _future_tariff(session, tariff_id, today)
    earlier = session.scalar(select(Tariff.id).where(Tariff.exam_group == tariff.exam_group,
                                                    Tariff.effective_from < tariff.effective_from).limit(1))
    if earlier is None:
        booked = session.scalar(select(ExamGroup.id).where(ExamGroup.exam_group == tariff.exam_group).limit(1))
        if booked is not None:
            raise Conflict("visits are checked in for this exam group and it has no earlier tariff",
                           code="tariff_needed")
    before = tariff_fields(tariff)
    session.delete(tariff)
    session.flush()
    return before
