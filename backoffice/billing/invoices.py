"""Invoices and credit notes: the patient/insurer split, issuing (numbered under the journal's lock).

Each function takes a Session first, flushes, never commits (the edge does)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from archive_core.values import paris_day
from backoffice.billing import base, money
from backoffice.billing.base import Conflict, Invalid, NotFound, format_euros
from backoffice.billing.groups import invoice_of_group, record_consent
from backoffice.billing.insurers import insurer_used_cents, membership_for
from backoffice.billing.journal import lock_journal
from backoffice.billing.models import Claim, CreditNote, ExamGroup, Invoice, InvoiceLine, InvoiceStudy, Membership
from backoffice.billing.numbering import next_number
from backoffice.billing.states import state_of, state_inputs, get_invoice
from backoffice.billing.tariffs import tariff_for


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
    series = str(paris_day(base.utcnow()).year)
    sequence = next_number(session, series)
    issued_at = base.utcnow()  # after the lock: numbers and dates go up together
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



def issue_credit_note(session: Session, invoice_id: int, *, reason: str, issued_by: str,
                      amount_cents: int | None = None) -> CreditNote:
    """Cancel all (no amount) or part of an issued invoice; the invoice itself never changes.

    At most what remains creditable. It takes off the patient's part first, then the insurer's;
    an open claim whose part is fully credited is cancelled.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise Invalid("a reason is required", code="reason_required")
    invoice = get_invoice(session, invoice_id)
    lock_journal(session)
    paid_by, credits, claims = state_inputs(session, [invoice.id])
    claim = claims.get(invoice.id)
    state = state_of(invoice, paid_by.get(invoice.id, {}), credits.get(invoice.id, []), claim)
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
    year = paris_day(base.utcnow()).year
    series = f"AV-{year}"
    sequence = next_number(session, series)
    note = CreditNote(number=f"AV-{year}-{sequence:06d}", series=series, sequence=sequence, invoice_id=invoice.id,
                      reason=reason.strip()[:2000], total_cents=-amount_cents, patient_cents=-patient_part,
                      insurer_cents=-insurer_part, issued_at=base.utcnow(), issued_by=issued_by)
    session.add(note)
    if claim is not None and claim.status in ("to_send", "sent") and insurer_part >= state.insurer_owed_cents:
        claim.status = "cancelled"
        claim.settled_at = base.utcnow()
    session.flush()
    return note


def credit_notes_of(session: Session, invoice_id: int) -> list[CreditNote]:
    return list(session.scalars(select(CreditNote).where(CreditNote.invoice_id == invoice_id).order_by(CreditNote.id)))
