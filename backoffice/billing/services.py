"""Billing operations: each takes a Session first, flushes, never commits (the edge does)."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from archive_core.hashchain import GENESIS, head_hash, holds, link_hash, lock_chain
from archive_core.values import LOCK_PAYMENT_JOURNAL, as_utc, paris_day, parse_da, utcnow
from backoffice.billing import money
from backoffice.billing.models import (
    PAYMENT_METHODS,
    Claim,
    Closing,
    Consent,
    CreditNote,
    ExamGroup,
    ExamGroupMapping,
    ExamGroupStudy,
    Insurer,
    Invoice,
    InvoiceLine,
    InvoiceStudy,
    Membership,
    NumberCounter,
    Payment,
    Remittance,
    RemittanceItem,
    Tariff,
)

# Modalities that never decide the exam group on their own (structured reports, presentation states...).
ANCILLARY_MODALITIES = {"SR", "PR", "KO", "DOC", "REG", "SEG", "OT", "AU", "ECG"}
FALLBACK_GROUP = "autre"
MAX_FEE_CENTS = 100_000  # 1 000 €: anything above is a typing mistake for an archiving fee


# -- errors (mapped once per edge: HTTP in backoffice/api/billing.py and the pages) ----------------


class BillingError(Exception):
    code = "billing_error"

    def __init__(self, message: str, code: str | None = None, **params) -> None:
        super().__init__(message)
        self.message = message  # English, for the API and the log; pages use billing/errors.py's table
        self.params = params  # the data the translated sentence names (a field, periods)
        if code:
            self.code = code


class NotFound(BillingError):
    code = "not_found"


class Conflict(BillingError):
    """The request is valid but the state forbids it (refused consent, already invoiced, closed day)."""

    code = "conflict"


class Invalid(BillingError):
    """An impossible value (negative amount, unknown method, rate above 100 %)."""

    code = "invalid"


# -- time ---------------------------------------------------------------------------------------


# utcnow, paris_day and PARIS come from archive_core.values; utcnow stays a name of this module: the
# services' clock, which the browser and dashboard tests set.


def paris_today() -> date:
    return paris_day(utcnow())


def format_euros(cents: int) -> str:
    """4,50 € (Babel, fr_FR)."""
    from babel.numbers import format_currency

    return format_currency(cents / 100, "EUR", locale="fr_FR")


# -- tariffs and mapping ------------------------------------------------------------------------


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


def _fold(value: str | None) -> str:
    decomposed = unicodedata.normalize("NFKD", value or "")
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper()


def group_for_study(mappings: Iterable[ExamGroupMapping], modalities: Iterable[str], description: str | None) -> str:
    """The exam group of a study: the first modality with a mapping; a description keyword wins."""
    by_modality: dict[str, list[ExamGroupMapping]] = {}
    for mapping in mappings:
        by_modality.setdefault(mapping.modality.upper(), []).append(mapping)
    folded = _fold(description)
    ordered = [m.upper() for m in modalities if m.upper() not in ANCILLARY_MODALITIES]
    for modality in ordered:
        candidates = by_modality.get(modality, [])
        for mapping in candidates:
            if mapping.description_contains and _fold(mapping.description_contains) in folded:
                return mapping.exam_group
        for mapping in candidates:
            if not mapping.description_contains:
                return mapping.exam_group
    return FALLBACK_GROUP


# -- exam groups ----------------------------------------------------------------------------------


def create_exam_group(
    session: Session,
    *,
    patient_id: str,
    visit_date: date,
    exam_group: str,
    created_by: str,
    patient_name: str | None = None,
    patient_birth_date: str | None = None,
    patient_sex: str | None = None,
    patient_address: str | None = None,
    accession_number: str | None = None,
) -> ExamGroup:
    """Check-in: the desk creates the group before any image exists; studies attach to it later."""
    if not patient_id or len(patient_id) > 64:
        raise Invalid("patient_id is required (64 characters at most)", code="patient_required")
    if tariff_for(session, exam_group, visit_date) is None:
        raise Invalid(f"unknown exam group {exam_group!r}", code="unknown_exam_group")
    existing = session.scalar(
        select(ExamGroup).where(ExamGroup.patient_id == patient_id, ExamGroup.visit_date == visit_date,
                                ExamGroup.exam_group == exam_group)
    )
    if existing is not None:
        raise Conflict("this patient already has this exam group on that day", code="exists")
    group = ExamGroup(
        patient_id=patient_id, visit_date=visit_date, exam_group=exam_group, created_by=created_by,
        patient_name=patient_name, patient_birth_date=patient_birth_date, patient_sex=patient_sex,
        patient_address=patient_address, accession_number=accession_number or None,
    )
    session.add(group)
    session.flush()
    return group


def attach_studies(session: Session, studies) -> int:
    """Attach arrived studies (facade ``StudySummary``) to their exam group, creating it if needed.

    A study goes to the group checked in with its accession number, else to the group of its
    patient, day and mapped exam group. Outside priors (external) are not visits: never billed.
    """
    candidates = [s for s in studies if not s.external]
    if not candidates:
        return 0
    attached = set(session.scalars(
        select(ExamGroupStudy.study_uid).where(ExamGroupStudy.study_uid.in_([s.study_uid for s in candidates]))
    ))
    todo = [s for s in candidates if s.study_uid not in attached]
    if not todo:
        return 0
    mappings = list(session.scalars(select(ExamGroupMapping)))
    count = 0
    for study in todo:
        visit = parse_da(study.study_date) or paris_day(study.received_at)
        group = None
        if study.accession_number:
            group = session.scalar(
                select(ExamGroup).where(ExamGroup.accession_number == study.accession_number,
                                        ExamGroup.patient_id == study.patient_id).limit(1)
            )
        if group is None:
            code = group_for_study(mappings, study.modalities, study.description)
            group = session.scalar(
                select(ExamGroup).where(ExamGroup.patient_id == study.patient_id, ExamGroup.visit_date == visit,
                                        ExamGroup.exam_group == code)
            )
            if group is None:
                group = ExamGroup(
                    patient_id=study.patient_id, visit_date=visit, exam_group=code, created_by="system",
                    patient_name=study.patient_name, patient_birth_date=study.patient_birth_date,
                    patient_sex=study.patient_sex, accession_number=study.accession_number,
                )
                session.add(group)
                session.flush()
        if not group.patient_name and study.patient_name:
            group.patient_name = study.patient_name
            group.patient_birth_date = group.patient_birth_date or study.patient_birth_date
        session.add(ExamGroupStudy(
            group_id=group.id, study_uid=study.study_uid, accession_number=study.accession_number,
            study_date=study.study_date, modalities="\\".join(study.modalities), description=study.description,
        ))
        session.flush()
        count += 1
    return count


def unattached(session: Session, studies) -> list:
    """The arrived, non-external studies not yet in an exam group."""
    candidates = [s for s in studies if not s.external]
    if not candidates:
        return []
    attached = set(session.scalars(
        select(ExamGroupStudy.study_uid).where(ExamGroupStudy.study_uid.in_([s.study_uid for s in candidates]))
    ))
    return [s for s in candidates if s.study_uid not in attached]


def move_study(session: Session, study_uid: str, *, group_id: int) -> ExamGroupStudy:
    """Correct the grouping: move a study to another exam group (not once either is invoiced)."""
    link = session.scalar(select(ExamGroupStudy).where(ExamGroupStudy.study_uid == study_uid))
    target = session.get(ExamGroup, group_id)
    if link is None or target is None:
        raise NotFound("no such study or exam group")
    source = session.get(ExamGroup, link.group_id)
    if source.patient_id != target.patient_id:
        raise Conflict("a study moves only between exam groups of the same patient (correct the patient's "
                       "identity in the archive first)", code="other_patient")
    for gid in (link.group_id, target.id):
        if invoice_of_group(session, gid) is not None:
            raise Conflict("an invoiced exam group keeps its studies (issue a credit note first)", code="invoiced_group")
    link.group_id = target.id
    session.flush()
    return link


def invoice_of_group(session: Session, group_id: int) -> Invoice | None:
    return session.scalar(select(Invoice).where(Invoice.group_id == group_id))


def list_exam_groups(session: Session, *, visit_date: date | None = None, patient_id: str | None = None,
                     after_id: int = 0, limit: int = 100) -> list[ExamGroup]:
    query = select(ExamGroup).where(ExamGroup.id > after_id)
    if visit_date is not None:
        query = query.where(ExamGroup.visit_date == visit_date)
    if patient_id is not None:
        query = query.where(ExamGroup.patient_id == patient_id)
    return list(session.scalars(query.order_by(ExamGroup.id).limit(limit).options(selectinload(ExamGroup.studies))))


@dataclass(frozen=True)
class GroupState:
    fee_cents: int
    consent: str
    invoice_id: int | None
    state: str  # to_ask | accepted | refused | invoiced | paid | free


def group_state(session: Session, group: ExamGroup) -> GroupState:
    return group_states(session, [group])[group.id]


def group_states(session: Session, groups: list[ExamGroup]) -> dict[int, GroupState]:
    """Fee, consent, invoice and front-desk state of many groups in a handful of queries."""
    if not groups:
        return {}
    tariffs: dict[str, list[Tariff]] = {}
    for tariff in session.scalars(select(Tariff).order_by(Tariff.effective_from.desc())):
        tariffs.setdefault(tariff.exam_group, []).append(tariff)
    invoices = {i.group_id: i for i in session.scalars(
        select(Invoice).where(Invoice.group_id.in_([g.id for g in groups])))}
    states = invoice_states(session, list(invoices.values()))
    out = {}
    for group in groups:
        tariff = next((t for t in tariffs.get(group.exam_group, []) if t.effective_from <= group.visit_date), None)
        fee = 0 if tariff is None or tariff.national_insurance_paid else tariff.fee_cents
        invoice = invoices.get(group.id)
        if invoice is not None:
            state = "paid" if states[invoice.id].status == "paid" else "invoiced"
        elif fee == 0:
            state = "free"
        else:
            state = {"pending": "to_ask", "accepted": "accepted", "refused": "refused"}[group.consent]
        out[group.id] = GroupState(fee, group.consent, invoice.id if invoice else None, state)
    return out


# -- consent ------------------------------------------------------------------------------------


def record_consent(session: Session, group_id: int, *, accepted: bool, recorded_by: str,
                   price_shown_cents: int | None = None) -> ExamGroup:
    """The price was shown; the patient accepted or refused. A refusal blocks nothing but the invoice.

    *price_shown_cents* is the fee in force for the group (read here when the caller has not).
    """
    if not isinstance(accepted, bool):
        raise Invalid("accepted must be true or false", code="bad_consent")
    group = session.get(ExamGroup, group_id)
    if group is None:
        raise NotFound("no such exam group")
    if not accepted and invoice_of_group(session, group.id) is not None:
        raise Conflict("this exam group is already invoiced: issue a credit note to cancel it",
                       code="consent_after_invoice")
    if price_shown_cents is None:
        price_shown_cents = fee_for(session, group.exam_group, group.visit_date)
    session.add(Consent(group_id=group.id, accepted=accepted, recorded_by=recorded_by,
                        price_shown_cents=price_shown_cents))
    group.consent = "accepted" if accepted else "refused"
    session.flush()
    return group


# -- insurers and memberships -------------------------------------------------------------------


def _check_int(name: str, value, *, low: int = 0, high: int | None = None, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise Invalid(f"{name} must be an integer {bounds}", code="bad_number", field=name)
    return value


def _check_insurer_rules(name, coverage_bp, flat_cents, annual_cap_cents, third_party_payment) -> None:
    if not isinstance(name, str) or not name.strip():
        raise Invalid("name is required", code="name_required")
    _check_int("coverage_bp", coverage_bp, high=money.BP_PER_UNIT)
    _check_int("flat_cents", flat_cents, high=MAX_FEE_CENTS)
    _check_int("annual_cap_cents", annual_cap_cents, optional=True)
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
    insurer.retired_at = utcnow() if retired else None
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


# -- numbering ----------------------------------------------------------------------------------


def next_number(session: Session, series: str) -> int:
    """The next value of *series*, inside the caller's transaction.

    SQLite: the caller's transaction already holds the write lock (BEGIN IMMEDIATE), so reading and
    bumping the counter cannot interleave. PostgreSQL: the upsert below locks the counter row until
    commit (a second issuer waits on it, then reads the committed value: READ COMMITTED re-checks
    the conflicting row); a rollback gives the number back, so there is never a gap.

    One statement, one round trip: insert the series at 1, or bump it, and read the result back.
    """
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(NumberCounter).values(series=series, last_value=1)
    statement = statement.on_conflict_do_update(
        index_elements=[NumberCounter.series], set_={"last_value": NumberCounter.last_value + 1}
    ).returning(NumberCounter.last_value)
    value = session.execute(statement).scalar_one()
    # An instance loaded earlier in this session would show the old value: refresh it on next access.
    counter = session.identity_map.get(session.identity_key(NumberCounter, series))
    if counter is not None:
        session.expire(counter)
    return value


# -- invoices -----------------------------------------------------------------------------------


def _shares(session: Session, group: ExamGroup, total: int) -> tuple[Membership | None, money.Split]:
    """The membership valid on the visit date and the split of *total* it gives (the one computation
    behind the preview and the invoice)."""
    membership = membership_for(session, group.patient_id, group.visit_date)
    insurer = membership.insurer if membership else None
    if insurer is None:
        return None, money.split(total)
    cap_left = None
    if insurer.annual_cap_cents is not None:
        used = insurer_used_cents(session, group.patient_id, insurer.id, group.visit_date.year)
        cap_left = insurer.annual_cap_cents - used
    return membership, money.split(total, coverage_bp=insurer.coverage_bp, flat_cents=insurer.flat_cents,
                                   cap_remaining_cents=cap_left)


@dataclass(frozen=True)
class SplitPreview:
    """What issuing the invoice of a group would bill now, computed as the issue computes it."""

    total_cents: int
    insurer_cents: int
    patient_cents: int
    insurer_id: int | None
    insurer_name: str | None
    coverage_bp: int | None
    member_number: str | None
    third_party_payment: bool  # the insurer pays its share itself (a claim is created at issue)
    to_collect_cents: int  # what the desk takes from the patient at issue

    @property
    def refund_expected_cents(self) -> int:
        """Without tiers payant: what the patient gets back from the mutuelle with the receipted invoice."""
        return 0 if self.third_party_payment else self.insurer_cents


def preview_split(session: Session, group_id: int) -> SplitPreview:
    """The split the invoice of *group_id* would carry if issued now (nothing written).

    The issue computes it again under the numbering lock: another invoice of the same patient issued
    in between may have used the annual cap (the invoice, not the preview, is what counts).
    """
    group = session.get(ExamGroup, group_id)
    if group is None:
        raise NotFound("no such exam group")
    tariff = tariff_for(session, group.exam_group, group.visit_date)
    if tariff is None or tariff.national_insurance_paid or tariff.fee_cents <= 0:
        raise Conflict("nothing to bill: archiving of this exam group carries no patient fee", code="no_fee")
    membership, shares = _shares(session, group, tariff.fee_cents)
    insurer = membership.insurer if membership else None
    third_party = bool(insurer and insurer.third_party_payment and shares.insurer_cents > 0)
    return SplitPreview(
        total_cents=shares.total_cents, insurer_cents=shares.insurer_cents, patient_cents=shares.patient_cents,
        insurer_id=insurer.id if insurer else None, insurer_name=insurer.name if insurer else None,
        coverage_bp=insurer.coverage_bp if insurer else None,
        member_number=membership.member_number if membership else None, third_party_payment=third_party,
        to_collect_cents=shares.patient_cents if third_party else shares.total_cents,
    )


def issue_invoice(session: Session, group_id: int, *, issued_by: str, payer_name: str | None = None) -> Invoice:
    """Issue the invoice of an exam group: split computed once, number taken now, snapshot kept.

    Only quick work here: the caller renders the PDF after commit (outside the numbering lock).
    """
    group = session.get(ExamGroup, group_id)
    if group is None:
        raise NotFound("no such exam group")
    if group.consent == "refused":
        raise Conflict("the patient refused the archiving fee: this exam group cannot be invoiced",
                       code="consent_refused")
    tariff = tariff_for(session, group.exam_group, group.visit_date)
    if tariff is None or tariff.national_insurance_paid or tariff.fee_cents <= 0:
        raise Conflict("nothing to bill: archiving of this exam group carries no patient fee", code="no_fee")
    if group.consent == "pending":
        # Issuing means the price was shown and accepted at the desk: record it like any consent.
        record_consent(session, group.id, accepted=True, recorded_by=issued_by, price_shown_cents=tariff.fee_cents)

    # Take the number first: on PostgreSQL its row lock also serialises the annual-cap reads below
    # (on SQLite the transaction already holds the write lock).
    series = str(paris_day(utcnow()).year)
    sequence = next_number(session, series)
    issued_at = utcnow()  # after the lock: numbers and dates go up together
    year = int(series)
    # Checked once, under the lock (a check before it would only repeat this one): another desk may
    # have issued it while we waited. The rollback of the Conflict gives the number back.
    if invoice_of_group(session, group.id) is not None:
        raise Conflict("this exam group is already invoiced", code="already_invoiced")

    total = tariff.fee_cents
    membership, shares = _shares(session, group, total)
    insurer = membership.insurer if membership else None

    invoice = Invoice(
        number=f"{year}-{sequence:06d}", series=series, sequence=sequence, group_id=group.id,
        issued_at=issued_at, issued_by=issued_by,
        patient_id=group.patient_id, patient_name=group.patient_name, patient_birth_date=group.patient_birth_date,
        patient_address=group.patient_address,
        payer_name=payer_name or (membership.payer_name if membership else None) or group.patient_name,
        visit_date=group.visit_date, exam_group=group.exam_group, exam_group_label=tariff.label,
        total_cents=shares.total_cents, insurer_cents=shares.insurer_cents, patient_cents=shares.patient_cents,
        insurer_id=insurer.id if insurer else None, insurer_name=insurer.name if insurer else None,
        member_number=membership.member_number if membership else None,
        third_party_payment=bool(insurer and insurer.third_party_payment and shares.insurer_cents > 0),
    )
    invoice.lines = [InvoiceLine(label=f"Archivage des images — {tariff.label}", amount_cents=total)]
    session.add(invoice)
    session.flush()
    for study in group.studies:
        session.add(InvoiceStudy(invoice_id=invoice.id, study_uid=study.study_uid,
                                 accession_number=study.accession_number, study_date=study.study_date,
                                 modalities=study.modalities, description=study.description))
    if invoice.third_party_payment:
        session.add(Claim(invoice_id=invoice.id, insurer_id=insurer.id, amount_cents=shares.insurer_cents))
    session.flush()
    return invoice


@dataclass(frozen=True)
class InvoiceState:
    """What an invoice stands at, per party (DESIGN.md: ``balance = patient_balance + insurer_balance``).

    The insurer owes its claim (tiers payant only) less what credit notes took off its part; a
    rejected claim owes nothing more and its amount becomes the patient's. The patient owes the
    rest. Each party's balance is what it owes less what it paid, never below zero: money paid
    beyond what a party owes (after a credit note) is ``refund_due``.
    """

    total_cents: int
    insurer_cents: int
    patient_cents: int
    paid_cents: int  # net of refunds
    balance_cents: int  # what remains to be paid by anyone = patient_balance + insurer_balance
    patient_balance_cents: int  # what the desk collects
    insurer_balance_cents: int  # what the insurer's claim settles (0 without tiers payant)
    status: str  # issued | partially_paid | paid | credited
    credit_note_id: int | None  # the latest credit note
    claim_status: str | None
    credited_cents: int = 0  # positive: what credit notes took off
    refund_due_cents: int = 0  # paid beyond what is owed (after credit notes), to give back
    patient_refund_due_cents: int = 0
    patient_owed_cents: int = 0  # the patient's part now (after credit notes and a rejected claim)
    insurer_owed_cents: int = 0
    patient_paid_cents: int = 0
    insurer_paid_cents: int = 0

    # Former names, kept for callers and the API.
    @property
    def patient_due_cents(self) -> int:
        return self.patient_balance_cents

    @property
    def insurer_due_cents(self) -> int:
        return self.insurer_balance_cents

    @property
    def insurer_refund_due_cents(self) -> int:
        return self.refund_due_cents - self.patient_refund_due_cents

    @property
    def creditable_cents(self) -> int:
        return self.total_cents - self.credited_cents


def invoice_state(session: Session, invoice: Invoice) -> InvoiceState:
    return invoice_states(session, [invoice])[invoice.id]


def invoice_states(session: Session, invoices: list[Invoice]) -> dict[int, InvoiceState]:
    """Status and balances of many invoices in four queries (lists of 100 stay fast)."""
    ids = [i.id for i in invoices]
    if not ids:
        return {}
    paid_by, credits, claims = _state_inputs(session, ids)
    return {i.id: _state(i, paid_by.get(i.id, {}), credits.get(i.id, []), claims.get(i.id)) for i in invoices}


def _state_inputs(session: Session, ids: list[int]):
    """Per invoice id: paid per payer (net of refunds), its credit notes, the claim."""
    paid_by: dict[int, dict[str, int]] = {}
    for invoice_id, payer, total in session.execute(
        select(Payment.invoice_id, Payment.payer, func.sum(Payment.amount_cents))
        .where(Payment.invoice_id.in_(ids)).group_by(Payment.invoice_id, Payment.payer)
    ):
        paid_by.setdefault(invoice_id, {})[payer] = int(total)
    credits: dict[int, list[CreditNote]] = {}
    for note in session.scalars(select(CreditNote).where(CreditNote.invoice_id.in_(ids)).order_by(CreditNote.id)):
        credits.setdefault(note.invoice_id, []).append(note)
    claims = {c.invoice_id: c for c in session.scalars(select(Claim).where(Claim.invoice_id.in_(ids)))}
    return paid_by, credits, claims


def issued_state(invoice: Invoice) -> InvoiceState:
    """The state of an invoice issued in this very transaction: nothing paid or credited yet."""
    return _state(invoice, {}, [], "to_send" if invoice.third_party_payment else None)


def _state(invoice: Invoice, paid_by: dict[str, int], credits: list[CreditNote] | CreditNote | None,
           claim: Claim | str | None) -> InvoiceState:
    if isinstance(credits, CreditNote):
        credits = [credits]
    credits = credits or []
    claim_status = claim.status if isinstance(claim, Claim) else claim
    claim_amount = claim.amount_cents if isinstance(claim, Claim) else (invoice.insurer_cents if claim else 0)
    credited = -sum(n.total_cents for n in credits)
    insurer_credited = -sum(n.insurer_cents for n in credits)
    patient_paid, insurer_paid = paid_by.get("patient", 0), paid_by.get("insurer", 0)
    owed = invoice.total_cents - credited
    if claim_status is None:
        insurer_owed = 0  # no tiers payant: the patient pays all and claims reimbursement himself
    elif claim_status == "rejected":
        insurer_owed = insurer_paid  # the insurer owes nothing more: its amount moved to the patient
    else:
        insurer_owed = claim_amount - insurer_credited
    patient_owed = owed - insurer_owed
    patient_net, insurer_net = patient_owed - patient_paid, insurer_owed - insurer_paid
    patient_balance, insurer_balance = max(patient_net, 0), max(insurer_net, 0)
    balance = patient_balance + insurer_balance
    refund_due = max(-patient_net, 0) + max(-insurer_net, 0)
    paid = patient_paid + insurer_paid
    if owed <= 0:
        status = "credited"
    elif balance == 0:
        status = "paid"
    else:
        status = "partially_paid" if paid > 0 else "issued"
    return InvoiceState(
        invoice.total_cents, invoice.insurer_cents, invoice.patient_cents, paid, balance, patient_balance,
        insurer_balance, status, credits[-1].id if credits else None, claim_status, credited_cents=credited,
        refund_due_cents=refund_due, patient_refund_due_cents=max(-patient_net, 0), patient_owed_cents=patient_owed,
        insurer_owed_cents=insurer_owed, patient_paid_cents=patient_paid, insurer_paid_cents=insurer_paid,
    )


def patient_balance_cents(session: Session, patient_id: str) -> int:
    """What the patient still owes over all their invoices (insurer shares awaited excluded)."""
    invoices = list(session.scalars(select(Invoice).where(Invoice.patient_id == patient_id)))
    return sum(state.patient_balance_cents for state in invoice_states(session, invoices).values())


def get_invoice(session: Session, invoice_id: int) -> Invoice:
    invoice = session.get(Invoice, invoice_id)
    if invoice is None:
        raise NotFound("no such invoice")
    return invoice


def issue_credit_note(session: Session, invoice_id: int, *, reason: str, issued_by: str,
                      amount_cents: int | None = None) -> CreditNote:
    """Cancel all (no amount) or part of an issued invoice; the invoice itself never changes.

    At most what remains creditable. It takes off the patient's part first, then the insurer's;
    an open claim whose part is fully credited is cancelled.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise Invalid("a reason is required", code="reason_required")
    invoice = get_invoice(session, invoice_id)
    _lock_journal(session)
    paid_by, credits, claims = _state_inputs(session, [invoice.id])
    claim = claims.get(invoice.id)
    state = _state(invoice, paid_by.get(invoice.id, {}), credits.get(invoice.id, []), claim)
    if state.creditable_cents <= 0:
        raise Conflict("this invoice is already credited", code="already_credited")
    if amount_cents is None:
        amount_cents = state.creditable_cents
    if not isinstance(amount_cents, int) or isinstance(amount_cents, bool) or amount_cents <= 0:
        raise Invalid("amount_cents must be a positive whole number of cents", code="bad_amount")
    if amount_cents > state.creditable_cents:
        raise Conflict(f"credit note refused: {format_euros(amount_cents)} is more than the "
                       f"{format_euros(state.creditable_cents)} that remain creditable on this invoice",
                       code="over_credit")
    patient_part = min(amount_cents, max(state.patient_owed_cents, 0))
    insurer_part = amount_cents - patient_part
    year = paris_day(utcnow()).year
    series = f"AV-{year}"
    sequence = next_number(session, series)
    note = CreditNote(number=f"AV-{year}-{sequence:06d}", series=series, sequence=sequence, invoice_id=invoice.id,
                      reason=reason.strip()[:2000], total_cents=-amount_cents, patient_cents=-patient_part,
                      insurer_cents=-insurer_part, issued_at=utcnow(), issued_by=issued_by)
    session.add(note)
    if claim is not None and claim.status in ("to_send", "sent") and insurer_part >= state.insurer_owed_cents:
        claim.status = "cancelled"
        claim.settled_at = utcnow()
    session.flush()
    return note


def credit_notes_of(session: Session, invoice_id: int) -> list[CreditNote]:
    return list(session.scalars(select(CreditNote).where(CreditNote.invoice_id == invoice_id).order_by(CreditNote.id)))


# -- payments: the hash-chained journal ---------------------------------------------------------


def _payment_digest(prev_hash: str, p: Payment) -> str:
    at = as_utc(p.received_at).astimezone(timezone.utc).isoformat(timespec="microseconds")
    return link_hash(prev_hash, [p.invoice_id, p.amount_cents, p.method, p.payer, p.credit_note_id, at, p.received_by,
                                 p.paris_day.isoformat()], ensure_ascii=True)


def _lock_journal(session: Session) -> None:
    lock_chain(session, LOCK_PAYMENT_JOURNAL)


def _open_day(session: Session, day: date) -> date:
    """*day*, or the first day after it that is not closed."""
    closed = set(session.scalars(select(Closing.period).where(Closing.kind == "day",
                                                               Closing.period >= day.isoformat())))
    while day.isoformat() in closed:
        day = date.fromordinal(day.toordinal() + 1)
    return day


def _append_payment(session: Session, *, locked: bool = False, roll_over_closed_day: bool = False,
                    **fields) -> Payment:
    """Append to the journal on today's business day.

    The desk cannot take money on a closed day (its drawer was counted). An insurer's transfer
    that arrives after the day was closed (*roll_over_closed_day*) is booked on the next open day:
    a closed day never changes.
    """
    if not locked:
        _lock_journal(session)
    now = utcnow()
    day = paris_day(now)
    if roll_over_closed_day:
        day = _open_day(session, day)
    elif session.scalar(select(Closing.id).where(Closing.kind == "day", Closing.period == day.isoformat())):
        raise Conflict(f"the day {day.isoformat()} is closed: no further payment can be recorded",
                       code="day_closed")
    prev = head_hash(session, Payment)
    payment = Payment(received_at=now, paris_day=day, prev_hash=prev, **fields)
    payment.hash = _payment_digest(prev, payment)
    session.add(payment)
    session.flush()
    return payment


def record_payment(session: Session, invoice_id: int, *, amount_cents: int, method: str, received_by: str) -> Payment:
    """A (partial) payment of the patient's part at the desk; more than the patient owes is refused."""
    return pay(session, invoice_id, amount_cents=amount_cents, method=method, received_by=received_by)[0]


def _check_amount(amount_cents, method: str) -> None:
    if not isinstance(amount_cents, int) or isinstance(amount_cents, bool) or amount_cents <= 0:
        raise Invalid("amount_cents must be a positive whole number of cents", code="bad_amount")
    if method not in PAYMENT_METHODS:
        raise Invalid(f"method must be one of {', '.join(PAYMENT_METHODS)}", code="bad_method")


def pay(session: Session, invoice_id: int, *, amount_cents: int, method: str,
        received_by: str) -> tuple[Payment, InvoiceState]:
    """:func:`record_payment`, also returning the invoice's state after it.

    The desk collects the patient's part only: under tiers payant the insurer's part is settled
    by its claim (:func:`settle_claim`), never at the desk, so it cannot be collected twice.
    The journal's lock is taken before the balance is read, so no other payment can slip in
    between the overpayment check and the entry (nor between the entry and the state returned).
    """
    _check_amount(amount_cents, method)
    invoice = get_invoice(session, invoice_id)
    _lock_journal(session)
    paid_by, credits, claims = _state_inputs(session, [invoice.id])
    paid, credit, claim = paid_by.get(invoice.id, {}), credits.get(invoice.id, []), claims.get(invoice.id)
    state = _state(invoice, paid, credit, claim)
    if state.status == "credited":
        raise Conflict("this invoice is credited: it takes no payment", code="credited")
    if amount_cents > state.patient_balance_cents:
        insurer = (f" (the {format_euros(state.insurer_balance_cents)} of the insurer's part are settled by its "
                   "tiers-payant claim, not at the desk)") if state.insurer_balance_cents else ""
        raise Conflict(
            f"overpayment refused: {format_euros(amount_cents)} is more than the "
            f"{format_euros(state.patient_balance_cents)} the patient still owes on this invoice{insurer}",
            code="overpayment")
    payment = _append_payment(session, locked=True, invoice_id=invoice.id, amount_cents=amount_cents, method=method,
                              payer="patient", received_by=received_by)
    return payment, _state(invoice, {**paid, "patient": paid.get("patient", 0) + amount_cents}, credit, claim)


def refund(session: Session, credit_note_id: int, *, amount_cents: int, method: str, refunded_by: str,
           payer: str = "patient") -> Payment:
    """Give back what *payer* (the patient, or the insurer under tiers payant) paid beyond what it
    owes after a credit note: a negative journal entry tied to the credit note."""
    note = session.get(CreditNote, credit_note_id)
    if note is None:
        raise NotFound("no such credit note")
    if payer not in ("patient", "insurer"):
        raise Invalid("payer must be patient or insurer", code="bad_payer")
    _check_amount(amount_cents, method)
    _lock_journal(session)
    state = invoice_state(session, get_invoice(session, note.invoice_id))
    due = state.patient_refund_due_cents if payer == "patient" else state.insurer_refund_due_cents
    if amount_cents > due:
        raise Conflict(f"refund refused: only {format_euros(due)} was paid by the {payer} beyond what remains "
                       "owed, and not refunded", code="over_refund")
    return _append_payment(session, locked=True, invoice_id=note.invoice_id, amount_cents=-amount_cents,
                           method=method, payer=payer, credit_note_id=note.id, received_by=refunded_by)


@dataclass(frozen=True)
class JournalReport:
    checked: int
    first_bad_id: int | None
    closings_checked: int
    first_bad_closing: str | None

    @property
    def ok(self) -> bool:
        return self.first_bad_id is None and self.first_bad_closing is None


# -- anchors: what the audit trail recorded of the billing records -------------------------------
#
# Each billing operation writes an audit event (backoffice/billing/operations.py) in the same
# transaction. That event carries the payment journal's head after the operation, and an issued
# invoice's or credit note's content hash. The audit trail is hash-chained and its head is signed
# with a key kept outside the database (archive_core/audit.py checkpoints), so someone who edits
# billing rows AND recomputes the payment chain still disagrees with what the audit trail recorded.

_INVOICE_FIELDS = ("number", "series", "sequence", "group_id", "issued_at", "issued_by", "patient_id",
                   "patient_name", "patient_birth_date", "patient_address", "payer_name", "visit_date",
                   "exam_group", "exam_group_label", "total_cents", "insurer_cents", "patient_cents",
                   "insurer_id", "insurer_name", "member_number", "third_party_payment")
_CREDIT_NOTE_FIELDS = ("number", "series", "sequence", "invoice_id", "reason", "total_cents", "patient_cents",
                       "insurer_cents", "issued_at", "issued_by")


def _plain(value):
    if isinstance(value, datetime):
        return as_utc(value).astimezone(timezone.utc).isoformat(timespec="microseconds")
    if isinstance(value, date):
        return value.isoformat()
    return value


def invoice_digest(session: Session, invoice: Invoice) -> str:
    """SHA-256 of what an issued invoice says: its fields and its lines (recorded in its audit event)."""
    # The lines relationship is ordered by id; an invoice just issued holds them already (no query).
    lines = [[line.label, line.amount_cents] for line in invoice.lines]
    payload = [[_plain(getattr(invoice, f)) for f in _INVOICE_FIELDS], lines]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def credit_note_digest(note: CreditNote) -> str:
    """SHA-256 of what an issued credit note says (recorded in its audit event)."""
    payload = [_plain(getattr(note, f)) for f in _CREDIT_NOTE_FIELDS]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def journal_head(session: Session) -> dict:
    """The payment journal's head: how many entries, the last one's id and hash."""
    count = select(func.count(Payment.id)).scalar_subquery()
    last = session.execute(select(Payment.id, Payment.hash, count).order_by(Payment.id.desc()).limit(1)).first()
    if last is None:
        return {"count": 0, "last_id": 0, "hash": GENESIS}
    return {"count": int(last[2]), "last_id": last[0], "hash": last[1]}


def check_anchors(session: Session, anchors: Iterable[tuple[int, dict]]) -> list[str]:
    """Hold the billing records against what the audit trail recorded of them.

    *anchors*: (audit event id, detail) of the billing audit events. Returns one sentence per
    problem: an invoice or credit note changed or gone since it was issued, a journal head that
    the journal no longer reaches (deleted entries, truncation) or no longer matches (rewritten).
    """
    problems: list[str] = []
    invoices = {i.number: i for i in session.scalars(select(Invoice))}
    notes = {n.number: n for n in session.scalars(select(CreditNote))}
    hashes = dict(session.execute(select(Payment.id, Payment.hash)).all())
    ids = sorted(hashes)
    for event_id, detail in anchors:
        kind = detail.get("document")
        digest = detail.get("sha256")
        if kind in ("invoice", "credit_note") and digest:
            rows = invoices if kind == "invoice" else notes
            row = rows.get(detail.get("number"))
            label = "invoice" if kind == "invoice" else "credit note"
            if row is None:
                problems.append(f"{label} {detail.get('number')} is missing (issued in audit event {event_id})")
            elif digest != (invoice_digest(session, row) if kind == "invoice" else credit_note_digest(row)):
                problems.append(f"{label} {row.number} was changed after it was issued "
                                f"(differs from audit event {event_id})")
        head = detail.get("journal")
        if isinstance(head, dict) and head.get("last_id"):
            last_id, count = int(head["last_id"]), int(head.get("count", 0))
            if last_id not in hashes:
                problems.append(f"payment journal entry {last_id} is missing: the journal was truncated or "
                                f"entries deleted (audit event {event_id} recorded {count} entries up to it)")
            elif hashes[last_id] != head.get("hash"):
                problems.append(f"payment journal rewritten: entry {last_id} no longer has the hash recorded in "
                                f"audit event {event_id}")
            else:
                reached = sum(1 for i in ids if i <= last_id)
                if reached != count:
                    problems.append(f"payment journal has {reached} entries up to {last_id}, audit event "
                                    f"{event_id} recorded {count}: entries were deleted or inserted")
    return problems


def verify_journal(session: Session) -> JournalReport:
    """Recompute the payment chain, then check each closing still matches the journal."""
    prev, checked, bad = GENESIS, 0, None
    hashes: set[str] = set()
    for payment in session.scalars(select(Payment).order_by(Payment.id).execution_options(yield_per=1000)):
        if not holds(prev, payment, _payment_digest):
            bad = payment.id
            break
        prev = payment.hash
        hashes.add(prev)
        checked += 1
    bad_closing, closings = None, 0
    if bad is None:
        for closing in session.scalars(select(Closing).order_by(Closing.id)):
            totals = _period_totals(session, closing.kind, closing.period)
            if (json.dumps(totals["by_method"], sort_keys=True) != closing.totals_json
                    or totals["total"] != closing.total_cents or totals["count"] != closing.payment_count
                    or (closing.last_payment_hash != GENESIS and closing.last_payment_hash not in hashes)):
                bad_closing = f"{closing.kind} {closing.period}"
                break
            closings += 1
    return JournalReport(checked, bad, closings, bad_closing)


# -- closings -----------------------------------------------------------------------------------


def _period_bounds(kind: str, period: str) -> tuple[date, date]:
    try:
        if kind == "day":
            day = date.fromisoformat(period)
            return day, day
        if kind == "month":
            year, month = (int(x) for x in period.split("-"))
            start = date(year, month, 1)
            end = date(year + (month == 12), month % 12 + 1, 1)
            return start, date.fromordinal(end.toordinal() - 1)
        if kind == "year":
            year = int(period)
            return date(year, 1, 1), date(year, 12, 31)
    except ValueError:
        pass
    raise Invalid(f"bad {kind} period {period!r}", code="bad_period")


def _period_totals(session: Session, kind: str, period: str) -> dict:
    start, end = _period_bounds(kind, period)
    rows = session.execute(
        select(Payment.method, func.sum(Payment.amount_cents), func.count(Payment.id))
        .where(Payment.paris_day >= start, Payment.paris_day <= end).group_by(Payment.method)
    ).all()
    by_method = {method: int(total) for method, total, _n in rows}
    last = session.scalar(
        select(Payment.hash).where(Payment.paris_day >= start, Payment.paris_day <= end)
        .order_by(Payment.id.desc()).limit(1)
    )
    return {"by_method": by_method, "total": sum(by_method.values()), "count": sum(n for *_x, n in rows),
            "last_hash": last or GENESIS}


def period_totals(session: Session, kind: str, period: str) -> dict:
    return _period_totals(session, kind, period)


def period_payments(session: Session, kind: str, period: str) -> list[tuple[Payment, Invoice]]:
    """The journal entries of a period with their invoices (the Z report lists them)."""
    start, end = _period_bounds(kind, period)
    return list(session.execute(
        select(Payment, Invoice).join(Invoice, Invoice.id == Payment.invoice_id)
        .where(Payment.paris_day >= start, Payment.paris_day <= end).order_by(Payment.id)).all())


def get_closing(session: Session, closing_id: int) -> Closing:
    closing = session.get(Closing, closing_id)
    if closing is None:
        raise NotFound("no such closing")
    return closing


def close_period(session: Session, kind: str, period: str, *, signed_by: str,
                 counted_cash_cents: int | None = None, counted_cheque_cents: int | None = None) -> Closing:
    """Close a day (then no more payments that day), a month (all its days closed) or a year.

    A day's closing records what the desk counted in the drawer (cash, cheques) and the difference
    with what the journal expects (counted − expected; positive: more in the drawer).
    """
    if kind not in ("day", "month", "year"):
        raise Invalid("kind must be day, month or year", code="bad_closing_kind")
    if kind != "day" and (counted_cash_cents is not None or counted_cheque_cents is not None):
        raise Invalid("cash and cheques are counted at day closings only", code="counted_at_day_only")
    _check_int("counted_cash_cents", counted_cash_cents, optional=True)
    _check_int("counted_cheque_cents", counted_cheque_cents, optional=True)
    start, end = _period_bounds(kind, period)
    today = paris_today()
    if start > today:
        raise Invalid("a period in the future cannot be closed", code="future_period")
    if kind != "day" and end >= today:
        raise Conflict(f"the {kind} {period} is not over yet", code="not_over")
    if session.scalar(select(Closing.id).where(Closing.kind == kind, Closing.period == period)):
        raise Conflict(f"{kind} {period} is already closed", code="already_closed")
    _lock_journal(session)
    if kind == "month":
        days = set(session.scalars(select(Payment.paris_day).where(Payment.paris_day >= start,
                                                                   Payment.paris_day <= end).distinct()))
        closed = set(session.scalars(select(Closing.period).where(Closing.kind == "day")))
        open_days = sorted(d.isoformat() for d in days if d.isoformat() not in closed)
        if open_days:
            raise Conflict(f"close these days first: {', '.join(open_days)}", code="open_days",
                           periods=", ".join(open_days))
    if kind == "year":
        closed = set(session.scalars(select(Closing.period).where(Closing.kind == "month")))
        months = {d.strftime("%Y-%m") for d in session.scalars(
            select(Payment.paris_day).where(Payment.paris_day >= start, Payment.paris_day <= end).distinct())}
        if months - closed:
            raise Conflict(f"close these months first: {', '.join(sorted(months - closed))}", code="open_months",
                           periods=", ".join(sorted(months - closed)))
    totals = _period_totals(session, kind, period)
    closing = Closing(kind=kind, period=period, totals_json=json.dumps(totals["by_method"], sort_keys=True),
                      total_cents=totals["total"], payment_count=totals["count"],
                      last_payment_hash=totals["last_hash"], signed_by=signed_by, signed_at=utcnow())
    if kind == "day":
        expected = {"cash": totals["by_method"].get("cash", 0), "cheque": totals["by_method"].get("cheque", 0)}
        closing.expected_json = json.dumps(expected, sort_keys=True)
        if counted_cash_cents is not None:
            closing.counted_cash_cents = counted_cash_cents
            closing.cash_difference_cents = counted_cash_cents - expected["cash"]
        if counted_cheque_cents is not None:
            closing.counted_cheque_cents = counted_cheque_cents
            closing.cheque_difference_cents = counted_cheque_cents - expected["cheque"]
    session.add(closing)
    session.flush()
    return closing


# -- claims (tiers payant) and cheque remittances -----------------------------------------------


def send_claims(session: Session, insurer_id: int) -> list[Claim]:
    claims = list(session.scalars(select(Claim).where(Claim.insurer_id == insurer_id, Claim.status == "to_send")))
    for claim in claims:
        claim.status, claim.sent_at = "sent", utcnow()
    session.flush()
    return claims


def settle_claim(session: Session, claim_id: int, *, paid: bool, by: str, reason: str | None = None) -> Claim:
    """Paid: the insurer's transfer (what it still owes) enters the journal, on the day it arrives
    (the next open day if today is closed). Rejected: what the insurer owed becomes the patient's."""
    claim = session.get(Claim, claim_id)
    if claim is None:
        raise NotFound("no such claim")
    if claim.status not in ("to_send", "sent"):
        raise Conflict(f"this claim is already {claim.status}", code="claim_settled")
    if paid:
        _lock_journal(session)
        invoice = get_invoice(session, claim.invoice_id)
        state = invoice_state(session, invoice)
        if state.insurer_balance_cents > 0:
            _append_payment(session, locked=True, roll_over_closed_day=True, invoice_id=invoice.id,
                            amount_cents=state.insurer_balance_cents, method="transfer", payer="insurer",
                            received_by=by)
        claim.status = "paid"
    else:
        claim.status, claim.rejection_reason = "rejected", (reason or "")[:2000]
    claim.settled_at = utcnow()
    session.flush()
    return claim


def outstanding_claims(session: Session) -> list[tuple[Insurer, int, int]]:
    """Per insurer: number and amount of claims not yet paid (to send or sent)."""
    rows = session.execute(
        select(Insurer, func.count(Claim.id), func.coalesce(func.sum(Claim.amount_cents), 0))
        .join(Claim, Claim.insurer_id == Insurer.id)
        .where(Claim.status.in_(("to_send", "sent"))).group_by(Insurer.id).order_by(Insurer.name)
    ).all()
    return [(insurer, int(n), int(total)) for insurer, n, total in rows]


def create_remittance(session: Session, *, created_by: str) -> Remittance:
    """Gather cheques not yet remitted on one slip for the bank."""
    remitted = select(RemittanceItem.payment_id)
    cheques = list(session.scalars(select(Payment).where(Payment.method == "cheque", Payment.amount_cents > 0,
                                                         Payment.id.not_in(remitted)).order_by(Payment.id)))
    if not cheques:
        raise Conflict("no cheque to remit", code="nothing_to_remit")
    slip = Remittance(created_by=created_by, total_cents=sum(p.amount_cents for p in cheques), count=len(cheques))
    session.add(slip)
    session.flush()
    for payment in cheques:
        session.add(RemittanceItem(remittance_id=slip.id, payment_id=payment.id))
    session.flush()
    return slip


# -- validation helpers for the edges ------------------------------------------------------------


def parse_date(value, name: str) -> date:
    if not isinstance(value, str):
        raise Invalid(f"{name} must be a date YYYY-MM-DD", code="bad_date", field=name)
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise Invalid(f"{name} must be a date YYYY-MM-DD", code="bad_date", field=name) from exc


