"""Invoices at the desk: the list, an invoice's page, payments, credit notes, refunds and the PDFs."""

from __future__ import annotations

from flask import Response, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user

from backoffice.auth import roles_required
from backoffice.billing import documents, operations
from backoffice.billing import services as S
from backoffice.billing.models import CreditNote, Invoice
from backoffice.billing.web import (CLAIM_LABELS, DESK, INVOICE_STATUS, METHOD_LABELS, PAGE_SIZE, bp, euros,
                                    form_cents, form_int, pdf_response)
from backoffice.errors import db_int
from backoffice.extensions import db, facade


@bp.route("/invoices")
@roles_required(*DESK)
def invoices():
    """Every invoice, newest first, 100 a page (keyset pagination on the primary key)."""
    before = request.args.get("before", type=db_int)
    patient_id = (request.args.get("patient_id") or "").strip()
    rows, more = operations.list_invoices(patient_id=patient_id, before=before, limit=PAGE_SIZE)
    return render_template("billing/invoices.html", invoices=rows, patient_id=patient_id,
                           next_before=rows[-1].id if more else None)


@bp.route("/invoices/<int:invoice_id>")
@roles_required(*DESK)
def invoice(invoice_id: int):
    inv = db().get(Invoice, invoice_id) or abort(404)
    facade().audit_now("billing.invoice.viewed", actor=current_user.login, patient_id=inv.patient_id,
                       detail={"number": inv.number})
    return render_template("billing/invoice.html", inv=inv, state=S.invoice_state(db(), inv), methods=METHOD_LABELS,
                           status=INVOICE_STATUS, credits=S.credit_notes_of(db(), inv.id), claim_labels=CLAIM_LABELS)


@bp.route("/invoices/<int:invoice_id>/payments", methods=["POST"])
@roles_required(*DESK)
def pay(invoice_id: int):
    payment, _state, _inv = operations.record_payment(invoice_id, amount_cents=form_cents("amount"),
                                                      method=request.form.get("method", ""), actor=current_user.login)
    flash(_("Paiement de %(amount)s enregistré.", amount=euros(payment.amount_cents)), "info")
    return redirect(url_for("billing.invoice", invoice_id=invoice_id))


@bp.route("/invoices/<int:invoice_id>/credit-note", methods=["POST"])
@roles_required(*DESK)
def credit_note(invoice_id: int):
    """All of what remains creditable, or the amount typed (a partial credit note)."""
    amount = form_cents("amount") if (request.form.get("amount") or "").strip() else None
    note, _inv = operations.issue_credit_note(invoice_id, reason=request.form.get("reason", ""), amount_cents=amount,
                                              actor=current_user.login)
    flash(_("Avoir %(number)s émis.", number=note.number), "info")
    return redirect(url_for("billing.invoice", invoice_id=invoice_id))


@bp.route("/invoices/<int:invoice_id>/refunds", methods=["POST"])
@roles_required(*DESK)
def refund(invoice_id: int):
    """Give the patient back what they paid beyond what remains owed after a credit note."""
    note = db().get(CreditNote, form_int("credit_note_id"))
    if note is None or note.invoice_id != invoice_id:
        raise S.NotFound("no such credit note on this invoice")
    payment, _inv = operations.refund(note.id, amount_cents=form_cents("amount"), method=request.form.get("method", ""),
                                      actor=current_user.login)
    flash(_("Remboursement de %(amount)s enregistré.", amount=euros(-payment.amount_cents)), "info")
    return redirect(url_for("billing.invoice", invoice_id=invoice_id))


def _printed(event: str, invoice: Invoice, data: bytes, filename: str, *, number: str | None = None,
             **options) -> Response:
    """A document printed at the desk: its audit event (with the document's number when given), then the PDF."""
    facade().audit_now(event, actor=current_user.login, patient_id=invoice.patient_id,
                       **({"detail": {"number": number}} if number else {}))
    return pdf_response(data, filename, **options)


@bp.route("/credit-notes/<int:note_id>/credit-note.pdf")
@roles_required(*DESK)
def credit_note_pdf(note_id: int):
    note = db().get(CreditNote, note_id) or abort(404)
    data = documents.credit_note_pdf(facade().new_session, note.id)
    return _printed("billing.credit_note.printed", db().get(Invoice, note.invoice_id), data,
                    f"avoir-{note.number}.pdf", number=note.number)


@bp.route("/invoices/<int:invoice_id>/receipted.pdf")
@roles_required(*DESK)
def receipted_pdf(invoice_id: int):
    """The facture acquittée the patient sends to the mutual insurer (409 until the patient paid: the handler's page)."""
    inv = db().get(Invoice, invoice_id) or abort(404)
    return _printed("billing.receipted_invoice.printed", inv, documents.render_receipted_invoice(db(), inv),
                    f"facture-acquittee-{inv.number}.pdf", number=inv.number)


@bp.route("/invoices/<int:invoice_id>/invoice.pdf")
@roles_required(*DESK)
def invoice_pdf(invoice_id: int):
    inv = db().get(Invoice, invoice_id) or abort(404)
    return _printed("billing.invoice.printed", inv, documents.invoice_pdf(facade().new_session, inv.id),
                    f"facture-{inv.number}.pdf", no_store=False)


@bp.route("/invoices/<int:invoice_id>/receipt.pdf")
@roles_required(*DESK)
def receipt_pdf(invoice_id: int):
    inv = db().get(Invoice, invoice_id) or abort(404)
    data = documents.render_receipt(db(), inv, request.args.get("payment_id", type=db_int))
    return _printed("billing.receipt.printed", inv, data, f"recu-{inv.number}.pdf", attachment=True, no_store=False)
