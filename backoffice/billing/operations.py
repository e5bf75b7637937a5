"""Billing operations as the desk performs them, one function each, called by the pages AND the API.

Each runs inside the request's transaction, writes its audit event in that same transaction (with
the payment journal's head, and an issued document's content hash: ``billing verify`` holds the
billing tables against them), and
never commits: the request commits once at its end (``backoffice/extensions.py``), and what must
follow the commit (rendering a PDF) is registered with ``after_commit``. A domain error raised
here is rolled back by the edge (page: flashed message; API: JSON 4xx).
"""

from __future__ import annotations

from sqlalchemy import select

from backoffice.billing import claims, closings, documents, groups, invoices, journal, payments, states
from backoffice.billing.arrivals import attach_before_issue
from backoffice.billing.models import Claim, Closing, CreditNote, ExamGroupStudy, Invoice, Payment
from backoffice.extensions import after_commit, db, facade


def issue_invoice(group_id: int, *, actor: str, payer_name: str | None = None) -> tuple[Invoice, states.InvoiceState]:
    """Issue the invoice of an exam group (number taken now, split computed once); the PDF after commit."""
    session = db()
    group = attach_before_issue(group_id)  # noqa: F841 -- held: issue_invoice finds it without a query
    invoice = invoices.issue_invoice(session, group_id, issued_by=actor, payer_name=payer_name or None)
    facade().audit(session, "billing.invoice.issued", actor=actor, patient_id=invoice.patient_id,
                   detail={"number": invoice.number, "total_cents": invoice.total_cents,
                           "insurer_cents": invoice.insurer_cents, "third_party_payment": invoice.third_party_payment,
                           "document": "invoice", "sha256": journal.invoice_digest(session, invoice),
                           "journal": journal.journal_head(session)})
    invoice_id = invoice.id
    after_commit(lambda: documents.render_after_issue(invoice_id))
    return invoice, states.issued_state(invoice)


def list_invoices(*, patient_id: str | None = None, before: int | None = None,
                  limit: int = 100) -> tuple[list[Invoice], bool]:
    """Invoices newest first, of one patient when *patient_id*, below id *before* (keyset pages): the page
    and the API list with this one query. Returns at most *limit* invoices and whether more follow."""
    query = select(Invoice)
    if patient_id:
        query = query.where(Invoice.patient_id == patient_id)
    if before:
        query = query.where(Invoice.id < before)
    rows = list(db().scalars(query.order_by(Invoice.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def record_payment(invoice_id: int, *, amount_cents: int, method: str,
                   actor: str) -> tuple[Payment, states.InvoiceState, Invoice]:
    """The desk takes (part of) the patient's share; never more than the patient owes."""
    session = db()
    invoice = states.get_invoice(session, invoice_id)
    payment, state = payments.pay(session, invoice_id, amount_cents=amount_cents, method=method, received_by=actor)
    facade().audit(session, "billing.payment", actor=actor, patient_id=invoice.patient_id,
                   detail={"number": invoice.number, "payment_id": payment.id, "amount_cents": payment.amount_cents,
                           "method": payment.method, "journal": journal.journal_head(session)})
    return payment, state, invoice


def issue_credit_note(invoice_id: int, *, reason: str, actor: str,
                      amount_cents: int | None = None) -> tuple[CreditNote, Invoice]:
    """A credit note for all or part of what remains creditable; its PDF is stored after commit."""
    session = db()
    note = invoices.issue_credit_note(session, invoice_id, reason=reason, issued_by=actor, amount_cents=amount_cents)
    invoice = states.get_invoice(session, invoice_id)
    facade().audit(session, "billing.credit_note.issued", actor=actor, patient_id=invoice.patient_id,
                   detail={"number": note.number, "invoice": invoice.number, "total_cents": note.total_cents,
                           "document": "credit_note", "sha256": journal.credit_note_digest(note),
                           "journal": journal.journal_head(session)})
    note_id = note.id
    after_commit(lambda: documents.render_credit_note_after_issue(note_id))
    return note, invoice


def refund(credit_note_id: int, *, amount_cents: int, method: str, actor: str,
           payer: str = "patient") -> tuple[Payment, Invoice]:
    """Give back what the patient (or the insurer) paid beyond what remains owed after a credit note."""
    session = db()
    payment = payments.refund(session, credit_note_id, amount_cents=amount_cents, method=method, refunded_by=actor,
                       payer=payer)
    invoice = states.get_invoice(session, payment.invoice_id)
    facade().audit(session, "billing.refund", actor=actor, patient_id=invoice.patient_id,
                   detail={"number": invoice.number, "payment_id": payment.id, "amount_cents": payment.amount_cents,
                           "payer": payment.payer, "journal": journal.journal_head(session)})
    return payment, invoice


def settle_claim(claim_id: int, *, paid: bool, actor: str, reason: str | None = None) -> Claim:
    """The insurer paid (its transfer enters the journal) or rejected (the patient owes its part)."""
    session = db()
    claim = claims.settle_claim(session, claim_id, paid=paid, by=actor, reason=reason)
    invoice = states.get_invoice(session, claim.invoice_id)
    facade().audit(session, "billing.claim.settled", actor=actor, patient_id=invoice.patient_id,
                   detail={"number": invoice.number, "claim_id": claim.id, "status": claim.status,
                           "journal": journal.journal_head(session)})
    return claim


def close_period(kind: str, period: str, *, actor: str, counted_cash_cents: int | None = None,
                 counted_cheque_cents: int | None = None) -> Closing:
    closing = closings.close_period(db(), kind, period, signed_by=actor, counted_cash_cents=counted_cash_cents,
                             counted_cheque_cents=counted_cheque_cents)
    facade().audit(db(), "billing.closing", actor=actor,
                   detail={"kind": kind, "period": period, "total_cents": closing.total_cents,
                           "cash_difference_cents": closing.cash_difference_cents,
                           "cheque_difference_cents": closing.cheque_difference_cents,
                           "journal": journal.journal_head(db())})
    # A closing is a moment the practice relies on later: the audit head, with this closing in it,
    # is signed as soon as it is committed (docs/operations.md, checkpoints).
    after_commit(lambda: facade().audit_checkpoint(reason="closing"))
    return closing


def move_study(study_uid: str, *, group_id: int, actor: str) -> ExamGroupStudy:
    """Move a study to another exam group of the same patient (neither invoiced)."""
    link = groups.move_study(db(), study_uid, group_id=group_id)
    facade().audit(db(), "billing.study.moved", actor=actor, patient_id=link.group.patient_id,
                   study_uid=study_uid, detail={"exam_group_id": group_id})
    return link
