"""The invoices part of the billing JSON API (DESIGN.md public contract): invoices, payments, credit notes,
refunds, their PDFs, tiers-payant claims and closings. Exam groups, insurers and memberships, and the one
handler of billing's errors, are in backoffice/api/billing.py."""

from __future__ import annotations

from flask import Response, jsonify, request

from backoffice.api import ApiError, api_route, current_api_user, json_body, page, page_args
from backoffice.api.billing import DESK, MANAGER, _int_field, _utc_iso
from backoffice.billing import documents, listings, operations
from backoffice.billing import services as S
from backoffice.billing.models import CreditNote, Invoice
from backoffice.errors import db_int
from backoffice.extensions import db, facade


# -- invoices ------------------------------------------------------------------------------------


def _invoice_json(invoice: Invoice, state: S.InvoiceState | None = None) -> dict:
    state = state or S.invoice_state(db(), invoice)
    return {
        "id": invoice.id, "number": invoice.number, "exam_group_id": invoice.group_id,
        "patient_id": invoice.patient_id, "visit_date": invoice.visit_date.isoformat(),
        "issued_at": _utc_iso(invoice.issued_at), "exam_group": invoice.exam_group,
        "total_cents": invoice.total_cents, "insurer_cents": invoice.insurer_cents,
        "patient_cents": invoice.patient_cents, "insurer_id": invoice.insurer_id,
        "third_party_payment": invoice.third_party_payment, "paid_cents": state.paid_cents,
        "balance_cents": state.balance_cents,
        "patient_balance_cents": state.patient_balance_cents, "insurer_balance_cents": state.insurer_balance_cents,
        "patient_paid_cents": state.patient_paid_cents, "insurer_paid_cents": state.insurer_paid_cents,
        "credited_cents": state.credited_cents, "refund_due_cents": state.refund_due_cents,
        # former names of the two balances
        "patient_due_cents": state.patient_balance_cents, "insurer_due_cents": state.insurer_balance_cents,
        "status": state.status, "claim_status": state.claim_status, "credit_note_id": state.credit_note_id,
    }


@api_route("/invoices", methods=("POST",), roles=DESK, summary="Issue the invoice of an exam group",
           request_body={"type": "object", "required": ["exam_group_id"],
                         "properties": {"exam_group_id": {"type": "integer"}, "payer_name": {"type": "string"}}},
           responses={"201": {"description": "Created"}})
def issue_invoice():
    body = json_body()
    payer_name = body.get("payer_name")
    if payer_name is not None and not isinstance(payer_name, str):
        raise ApiError(400, "bad_request", "payer_name must be a string")
    # The request commits at its end (the numbering lock is released then); the PDF follows the commit.
    invoice, state = operations.issue_invoice(_int_field(body, "exam_group_id"), actor=current_api_user().login,
                                              payer_name=payer_name)
    return jsonify(_invoice_json(invoice, state)), 201


@api_route("/invoices", roles=DESK, summary="Invoices, newest first (optionally of one patient)",
           parameters=[{"name": "patient_id", "in": "query", "schema": {"type": "string"}},
                       {"name": "after", "in": "query", "schema": {"type": "integer"}}])
def list_invoices():
    after, limit = page_args()
    invoices, more = operations.list_invoices(patient_id=request.args.get("patient_id"), before=after, limit=limit)
    if request.args.get("patient_id"):
        facade().audit_now("billing.invoices.viewed", actor=current_api_user().login,
                           patient_id=request.args["patient_id"])
    states = S.invoice_states(db(), invoices)
    return jsonify(page([_invoice_json(i, states[i.id]) for i in invoices], invoices[-1].id if invoices else None,
                         limit, more))


@api_route("/invoices/<int:invoice_id>", roles=DESK, summary="One invoice and its balance")
def get_invoice(invoice_id: int):
    invoice = S.get_invoice(db(), invoice_id)
    facade().audit_now("billing.invoice.viewed", actor=current_api_user().login, patient_id=invoice.patient_id,
                       detail={"number": invoice.number})
    return jsonify(_invoice_json(invoice))


@api_route("/invoices/<int:invoice_id>/payments", methods=("POST",), roles=DESK,
           summary="Record a payment (partial allowed; overpayment refused)",
           request_body={"type": "object", "required": ["amount_cents", "method"],
                         "properties": {"amount_cents": {"type": "integer"},
                                        "method": {"enum": ["cash", "card", "cheque", "transfer"]}}},
           responses={"201": {"description": "Created"}})
def record_payment(invoice_id: int):
    """The desk collects the patient's part; more than the patient owes answers 409 ``overpayment``."""
    body = json_body()
    payment, after, invoice = operations.record_payment(invoice_id, amount_cents=body.get("amount_cents"),
                                                        method=body.get("method"), actor=current_api_user().login)
    state = _invoice_json(invoice, after)
    return jsonify({"id": payment.id, "invoice_id": invoice.id, "amount_cents": payment.amount_cents,
                    "method": payment.method, "received_at": _utc_iso(payment.received_at),
                    "balance_cents": state["balance_cents"], "patient_balance_cents": state["patient_balance_cents"],
                    "insurer_balance_cents": state["insurer_balance_cents"], "status": state["status"],
                    "invoice": state}), 201


def _note_json(note: CreditNote) -> dict:
    return {"id": note.id, "number": note.number, "total_cents": note.total_cents,
            "patient_cents": note.patient_cents, "insurer_cents": note.insurer_cents, "invoice_id": note.invoice_id,
            "reason": note.reason, "issued_at": _utc_iso(note.issued_at)}


@api_route("/invoices/<int:invoice_id>/credit-notes", methods=("POST",), roles=DESK,
           summary="A credit note for all (no amount) or part of what remains creditable (own series, negative total)",
           request_body={"type": "object", "required": ["reason"],
                         "properties": {"reason": {"type": "string"}, "amount_cents": {"type": "integer"}}},
           responses={"201": {"description": "Created"}})
def issue_credit_note(invoice_id: int):
    body = json_body()
    note, _invoice = operations.issue_credit_note(invoice_id, reason=body.get("reason"),
                                                  amount_cents=body.get("amount_cents"),
                                                  actor=current_api_user().login)
    return jsonify(_note_json(note)), 201


@api_route("/invoices/<int:invoice_id>/credit-notes", roles=DESK, summary="The credit notes of an invoice")
def list_credit_notes(invoice_id: int):
    S.get_invoice(db(), invoice_id)
    return jsonify({"items": [_note_json(n) for n in S.credit_notes_of(db(), invoice_id)]})


@api_route("/credit-notes/<int:note_id>/credit-note.pdf", roles=DESK, summary="The credit note as issued (stored)")
def credit_note_pdf(note_id: int):
    note = db().get(CreditNote, note_id)
    if note is None:
        raise S.NotFound("no such credit note")
    invoice = S.get_invoice(db(), note.invoice_id)
    data = documents.credit_note_pdf(facade().new_session, note.id)
    facade().audit_now("billing.credit_note.printed", actor=current_api_user().login, patient_id=invoice.patient_id,
                       detail={"number": note.number})
    return _pdf_response(data, f"avoir-{note.number}.pdf")


@api_route("/credit-notes/<int:note_id>/refunds", methods=("POST",), roles=DESK,
           summary="Refund what the patient (default) or the insurer paid beyond what remains owed after a credit note",
           request_body={"type": "object", "required": ["amount_cents", "method"],
                         "properties": {"amount_cents": {"type": "integer"},
                                        "method": {"enum": ["cash", "card", "cheque", "transfer"]},
                                        "payer": {"enum": ["patient", "insurer"]}}},
           responses={"201": {"description": "Created"}})
def refund(note_id: int):
    body = json_body()
    payment, invoice = operations.refund(note_id, amount_cents=body.get("amount_cents"), method=body.get("method"),
                                         payer=body.get("payer", "patient"), actor=current_api_user().login)
    return jsonify({"id": payment.id, "amount_cents": payment.amount_cents, "method": payment.method,
                    "payer": payment.payer, "invoice": _invoice_json(invoice)}), 201


def _pdf_response(data: bytes, filename: str) -> Response:
    return Response(data, mimetype="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="{filename}"', "Cache-Control": "no-store"})


@api_route("/invoices/<int:invoice_id>/invoice.pdf", roles=DESK, summary="The invoice as issued (stored)")
def invoice_pdf(invoice_id: int):
    invoice = S.get_invoice(db(), invoice_id)
    data = documents.invoice_pdf(facade().new_session, invoice.id)
    facade().audit_now("billing.invoice.printed", actor=current_api_user().login, patient_id=invoice.patient_id,
                       detail={"number": invoice.number})
    return _pdf_response(data, f"facture-{invoice.number}.pdf")


@api_route("/invoices/<int:invoice_id>/receipt.pdf", roles=DESK,
           summary="Receipt of the payments so far (?payment_id= for one payment)",
           parameters=[{"name": "payment_id", "in": "query", "schema": {"type": "integer"}}])
def receipt_pdf(invoice_id: int):
    invoice = S.get_invoice(db(), invoice_id)
    payment_id = request.args.get("payment_id", type=db_int)
    data = documents.render_receipt(db(), invoice, payment_id)
    facade().audit_now("billing.receipt.printed", actor=current_api_user().login, patient_id=invoice.patient_id,
                       detail={"number": invoice.number})
    return _pdf_response(data, f"recu-{invoice.number}.pdf")


@api_route("/invoices/<int:invoice_id>/receipted-invoice.pdf", roles=DESK,
           summary="The receipted invoice (facture acquittée) once the patient paid their part; 409 before")
def receipted_invoice_pdf(invoice_id: int):
    invoice = S.get_invoice(db(), invoice_id)
    data = documents.render_receipted_invoice(db(), invoice)
    facade().audit_now("billing.receipted_invoice.printed", actor=current_api_user().login,
                       patient_id=invoice.patient_id, detail={"number": invoice.number})
    return _pdf_response(data, f"facture-acquittee-{invoice.number}.pdf")


# -- claims and closings (manager) ---------------------------------------------------------------


@api_route("/claims", roles=MANAGER, summary="Tiers-payant claims (?status=to_send|sent|paid|rejected)")
def list_claims():
    after, limit = page_args()
    status = request.args.get("status")
    claims = listings.claims(db(), statuses=(status,) if status else (), after=after, limit=limit + 1)
    more = len(claims) > limit
    claims = claims[:limit]
    items = [{"id": c.id, "invoice_id": c.invoice_id, "insurer_id": c.insurer_id, "amount_cents": c.amount_cents,
              "status": c.status} for c in claims]
    return jsonify(page(items, claims[-1].id if claims else None, limit, more))


@api_route("/claims/<int:claim_id>/settle", methods=("POST",), roles=MANAGER,
           summary="A claim paid or rejected by the insurer",
           request_body={"type": "object", "required": ["paid"],
                         "properties": {"paid": {"type": "boolean"}, "reason": {"type": "string"}}})
def settle_claim(claim_id: int):
    body = json_body()
    if not isinstance(body.get("paid"), bool):
        raise ApiError(400, "bad_request", "paid must be true or false")
    claim = operations.settle_claim(claim_id, paid=body["paid"], actor=current_api_user().login,
                                    reason=body.get("reason"))
    return jsonify({"id": claim.id, "status": claim.status,
                    "invoice": _invoice_json(S.get_invoice(db(), claim.invoice_id))})


@api_route("/closings", methods=("POST",), roles=DESK,
           summary="Close a day (front desk, manager), a month or a year (manager)",
           request_body={"type": "object", "required": ["kind", "period"],
                         "properties": {"kind": {"enum": ["day", "month", "year"]}, "period": {"type": "string"},
                                        "counted_cash_cents": {"type": "integer"},
                                        "counted_cheque_cents": {"type": "integer"}}},
           responses={"201": {"description": "Created"}})
def close_period():
    body = json_body()
    kind = body.get("kind")
    if kind not in ("day", "month", "year"):
        raise ApiError(400, "bad_request", "kind must be day, month or year")
    if kind != "day" and current_api_user().role != "manager":
        raise ApiError(403, "forbidden", "only a manager closes months and years")
    closing = operations.close_period(kind, str(body.get("period", "")), actor=current_api_user().login,
                                      counted_cash_cents=body.get("counted_cash_cents"),
                                      counted_cheque_cents=body.get("counted_cheque_cents"))
    return jsonify({"id": closing.id, "kind": closing.kind, "period": closing.period,
                    "total_cents": closing.total_cents, "payment_count": closing.payment_count,
                    "counted_cash_cents": closing.counted_cash_cents,
                    "counted_cheque_cents": closing.counted_cheque_cents,
                    "cash_difference_cents": closing.cash_difference_cents,
                    "cheque_difference_cents": closing.cheque_difference_cents,
                    "signed_by": closing.signed_by}), 201


@api_route("/closings/<int:closing_id>/report.pdf", roles=DESK, summary="The Z report of a closing (PDF)")
def closing_report(closing_id: int):
    closing = S.get_closing(db(), closing_id)
    return _pdf_response(documents.render_closing_report(db(), closing), f"cloture-{closing.period}.pdf")
