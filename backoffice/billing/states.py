"""Where an invoice stands, per party: paid, credited, claimed, what remains owed (read-only).

Each function takes a Session first, flushes, never commits (the edge does)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backoffice.billing.base import NotFound
from backoffice.billing.models import Claim, CreditNote, Invoice, Payment


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
    paid_by, credits, claims = state_inputs(session, ids)
    return {i.id: state_of(i, paid_by.get(i.id, {}), credits.get(i.id, []), claims.get(i.id)) for i in invoices}


def state_inputs(session: Session, ids: list[int]):
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
    return state_of(invoice, {}, [], "to_send" if invoice.third_party_payment else None)


def state_of(invoice: Invoice, paid_by: dict[str, int], credits: list[CreditNote] | CreditNote | None,
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
