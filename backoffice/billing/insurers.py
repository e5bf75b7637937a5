"""Insurers (mutuelles) and the patients' memberships, with the yearly cap used so far.

Each function takes a Session first, flushes, never commits (the edge does)."""

from __future__ import annotations

from datetime import date

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backoffice.billing import money
from backoffice.billing import base
from backoffice.billing.base import Conflict, Invalid, NotFound, check_int
from backoffice.billing.models import CreditNote, Insurer, Invoice, Membership
from backoffice.billing.tariffs import MAX_FEE_CENTS


def _check_insurer_rules(name, coverage_bp, flat_cents, annual_cap_cents, third_party_payment) -> None:
    if not isinstance(name, str) or not name.strip():
        raise Invalid("name is required", code="name_required")
    check_int("coverage_bp", coverage_bp, high=money.BP_PER_UNIT)
    check_int("flat_cents", flat_cents, high=MAX_FEE_CENTS)
    check_int("annual_cap_cents", annual_cap_cents, optional=True)
    if not isinstance(third_party_payment, bool):
        raise Invalid("third_party_payment must be true or false", code="bad_choice", field="third_party_payment")


def create_insurer(session: Session, *, name: str, amc_number: str, coverage_bp: int = 0, flat_cents: int = 0,
                   annual_cap_cents: int | None = None, third_party_payment: bool = False) -> Insurer:
    _check_insurer_rules(name, coverage_bp, flat_cents, annual_cap_cents, third_party_payment)
    if not isinstance(amc_number, str) or not amc_number.strip():
        raise Invalid("amc_number is required", code="amc_required")
    if session.scalar(select(Insurer).where(Insurer.amc_number == amc_number.strip())) is not None:
        raise Conflict("an insurer with this AMC number exists", code="exists")
    insurer = Insurer(name=name.strip(), amc_number=amc_number.strip(), coverage_bp=coverage_bp,
                      flat_cents=flat_cents, annual_cap_cents=annual_cap_cents,
                      third_party_payment=third_party_payment)
    session.add(insurer)
    session.flush()
    return insurer


INSURER_FIELDS = ("name", "amc_number", "coverage_bp", "flat_cents", "annual_cap_cents", "third_party_payment")


def update_insurer(session: Session, insurer_id: int, *, name: str, amc_number: str, coverage_bp: int,
                   flat_cents: int, annual_cap_cents: int | None, third_party_payment: bool) -> tuple[Insurer, dict]:
    """Correct an insurer's name, AMC number or rules; returns it and ``{field: [before, after]}`` of what changed.

    Invoices already issued keep the split they were issued with (a snapshot); the new rules apply
    to invoices issued from now on.
    """
    insurer = get_insurer(session, insurer_id)
    _check_insurer_rules(name, coverage_bp, flat_cents, annual_cap_cents, third_party_payment)
    if not isinstance(amc_number, str) or not amc_number.strip():
        raise Invalid("amc_number is required", code="amc_required")
    other = session.scalar(select(Insurer.id).where(Insurer.amc_number == amc_number.strip(), Insurer.id != insurer.id))
    if other is not None:
        raise Conflict("an insurer with this AMC number exists", code="exists")
    after = {"name": name.strip(), "amc_number": amc_number.strip(), "coverage_bp": coverage_bp,
             "flat_cents": flat_cents, "annual_cap_cents": annual_cap_cents,
             "third_party_payment": third_party_payment}
    changes = {k: [getattr(insurer, k), v] for k, v in after.items() if getattr(insurer, k) != v}
    for key, (_old, value) in changes.items():
        setattr(insurer, key, value)
    session.flush()
    return insurer, changes


def get_insurer(session: Session, insurer_id: int) -> Insurer:
    insurer = session.get(Insurer, insurer_id)
    if insurer is None:
        raise NotFound("no such insurer", code="unknown_insurer")
    return insurer


def retire_insurer(session: Session, insurer_id: int, *, retired: bool = True) -> Insurer:
    """Retire an insurer (no new memberships; those recorded keep their dates), or bring it back."""
    insurer = get_insurer(session, insurer_id)
    if retired == (insurer.retired_at is not None):
        raise Conflict("the insurer is already retired" if retired else "the insurer is not retired",
                       code="already_retired" if retired else "not_retired")
    insurer.retired_at = base.utcnow() if retired else None
    session.flush()
    return insurer


def add_membership(session: Session, *, patient_id: str, insurer_id: int, member_number: str, valid_from: date,
                   valid_to: date | None = None, payer_name: str | None = None) -> Membership:
    """Record a patient's membership. The edges check the patient is known (archive or desk) first."""
    if not patient_id or len(patient_id) > 64:
        raise Invalid("patient_id is required (64 characters at most)", code="patient_required")
    insurer = get_insurer(session, insurer_id)
    if insurer.retired_at is not None:
        raise Conflict("this insurer is retired: it takes no new memberships", code="insurer_retired")
    if not isinstance(member_number, str) or not member_number.strip():
        raise Invalid("member_number is required", code="member_number_required")
    if valid_to is not None and valid_to < valid_from:
        raise Invalid("valid_to is before valid_from", code="bad_validity")
    membership = Membership(patient_id=patient_id, insurer_id=insurer_id, member_number=member_number.strip(),
                            valid_from=valid_from, valid_to=valid_to, payer_name=payer_name or None)
    session.add(membership)
    session.flush()
    return membership


def end_membership(session: Session, membership_id: int, *, patient_id: str, valid_to: date) -> Membership:
    """End a membership on *valid_to* (its last day). Invoices already issued keep their split."""
    membership = session.get(Membership, membership_id)
    if membership is None or membership.patient_id != patient_id:
        raise NotFound("no such membership for this patient", code="unknown_membership")
    if valid_to < membership.valid_from:
        raise Invalid("valid_to is before valid_from", code="bad_validity")
    if membership.valid_to is not None and membership.valid_to <= valid_to:
        raise Conflict("the membership already ends on or before that day", code="membership_ended")
    membership.valid_to = valid_to
    session.flush()
    return membership


def membership_for(session: Session, patient_id: str, on: date) -> Membership | None:
    """The membership valid on the visit date (the most recently started one if several)."""
    return session.scalar(
        select(Membership)
        .where(Membership.patient_id == patient_id, Membership.valid_from <= on,
               (Membership.valid_to.is_(None)) | (Membership.valid_to >= on))
        .order_by(Membership.valid_from.desc(), Membership.id.desc())
        .limit(1)
    )


def insurer_used_cents(session: Session, patient_id: str, insurer_id: int, year: int) -> int:
    """What *insurer* already covered for this beneficiary in the calendar year of the visits
    (what credit notes took off its part given back)."""
    in_year = (Invoice.patient_id == patient_id, Invoice.insurer_id == insurer_id,
               Invoice.visit_date >= date(year, 1, 1), Invoice.visit_date <= date(year, 12, 31))
    fully_credited = (select(CreditNote.invoice_id).join(Invoice, Invoice.id == CreditNote.invoice_id)
                      .where(*in_year).group_by(CreditNote.invoice_id, Invoice.total_cents)
                      .having(-func.sum(CreditNote.total_cents) >= Invoice.total_cents))
    covered = session.scalar(select(func.coalesce(func.sum(Invoice.insurer_cents), 0))
                             .where(*in_year, Invoice.id.not_in(fully_credited))) or 0
    credited = session.scalar(
        select(func.coalesce(func.sum(CreditNote.insurer_cents), 0)).join(Invoice, Invoice.id == CreditNote.invoice_id)
        .where(*in_year, Invoice.id.not_in(fully_credited))) or 0
    return int(covered) + int(credited)
