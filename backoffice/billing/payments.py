"""Payments and refunds at the desk: checked against the invoice's state, appended to the journal.

Each function takes a Session first, flushes, never commits (the edge does)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from backoffice.billing.base import Conflict, Invalid, NotFound, format_euros
from backoffice.billing.journal import append_payment, lock_journal
from backoffice.billing.models import PAYMENT_METHODS, CreditNote, Payment
from backoffice.billing.states import InvoiceState, state_of, state_inputs, get_invoice, invoice_state


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
    lock_journal(session)
    paid_by, credits, claims = state_inputs(session, [invoice.id])
    paid, credit, claim = paid_by.get(invoice.id, {}), credits.get(invoice.id, []), claims.get(invoice.id)
    state = state_of(invoice, paid, credit, claim)
    if state.status == "credited":
        raise Conflict("this invoice is credited: it takes no payment", code="credited")
    if amount_cents > state.patient_balance_cents:
        insurer = (f" (the {format_euros(state.insurer_balance_cents)} of the insurer's part are settled by its "
                   "tiers-payant claim, not at the desk)") if state.insurer_balance_cents else ""
        raise Conflict(
            f"overpayment refused: {format_euros(amount_cents)} is more than the "
            f"{format_euros(state.patient_balance_cents)} the patient still owes on this invoice{insurer}",
            code="overpayment")
    payment = append_payment(session, locked=True, invoice_id=invoice.id, amount_cents=amount_cents, method=method,
                              payer="patient", received_by=received_by)
    return payment, state_of(invoice, {**paid, "patient": paid.get("patient", 0) + amount_cents}, credit, claim)


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
    lock_journal(session)
    state = invoice_state(session, get_invoice(session, note.invoice_id))
    due = state.patient_refund_due_cents if payer == "patient" else state.insurer_refund_due_cents
    if amount_cents > due:
        raise Conflict(f"refund refused: only {format_euros(due)} was paid by the {payer} beyond what remains "
                       "owed, and not refunded", code="over_refund")
    return append_payment(session, locked=True, invoice_id=note.invoice_id, amount_cents=-amount_cents,
                           method=method, payer=payer, credit_note_id=note.id, received_by=refunded_by)
