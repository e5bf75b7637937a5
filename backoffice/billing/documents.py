"""Billing documents: the invoice PDF (rendered once at issue, stored with its SHA-256) and receipts."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from functools import partial
from datetime import date, datetime
from pathlib import Path

from babel.dates import format_date, format_datetime
from babel.numbers import format_currency
from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from archive_core.values import PARIS, as_utc, parse_da, person_name
from backoffice.billing import base, closings, invoices, states
from backoffice.billing.models import CreditNote, Invoice, InvoiceDocument, Payment
from backoffice.pdf import html_to_pdf
from backoffice.practice import practice_identity

log = logging.getLogger(__name__)
_WORKER_LOCK = threading.Lock()
METHOD_LABELS = {"cash": "espèces", "card": "carte bancaire", "cheque": "chèque", "transfer": "virement"}
STATUS_LABELS = {"issued": "émise", "partially_paid": "partiellement payée", "paid": "payée",
                 "credited": "annulée par avoir"}


def euros(cents: int, locale: str = "fr_FR") -> str:
    """An amount in euros, French by default (documents); the pages pass their language."""
    return format_currency(cents / 100, "EUR", locale=locale)


def percent(bp: int, locale: str = "fr_FR") -> str:
    """A rate in basis points as people read it: "50 %", "33,5 %" (French), "33.5%" (English); exact."""
    from decimal import Decimal

    from babel.numbers import format_percent

    return format_percent(Decimal(bp) / 10_000, locale=locale, decimal_quantization=False)


def percent_input(bp: int, locale: str = "fr_FR") -> str:
    """The number of a rate for a form field ("33,5"), which the percent parser reads back exactly."""
    from decimal import Decimal

    from babel.numbers import format_decimal

    return format_decimal(Decimal(bp) / 100, locale=locale, decimal_quantization=False, group_separator=False)


def french_date(value: date | None, locale: str = "fr_FR") -> str:
    return format_date(value, format="long", locale=locale) if value else ""


def french_datetime(value: datetime | None, locale: str = "fr_FR") -> str:
    if value is None:
        return ""
    value = as_utc(value)
    if not locale.startswith("fr"):
        return format_datetime(value, "d MMMM y 'at' HH:mm", tzinfo=PARIS, locale=locale)
    return format_datetime(value, "d MMMM y 'à' HH:mm", tzinfo=PARIS, locale=locale)


def documents_dir() -> Path:
    path = Path(current_app.instance_path) / "documents"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _pdf(html: str) -> bytes:
    return html_to_pdf(html)


def _render_html(template: str, **context) -> str:
    # Not flask.render_template: its context processors (current_user) would open a request session.
    return current_app.jinja_env.get_template(template).render(**context)


def _helpers() -> dict:
    return {"euros": euros, "french_date": french_date, "french_datetime": french_datetime, "name": partial(person_name, as_stored=True),
            "methods": METHOD_LABELS, "practice": practice_identity(), "dicom_date": parse_da}


def _ins(session: Session, invoice: Invoice):
    from backoffice.patients.printing import printed_ins

    return printed_ins(session, invoice.patient_id)


def render_invoice(session: Session, invoice: Invoice) -> bytes:
    return _pdf(_render_html("billing/invoice_pdf.html", invoice=invoice, ins=_ins(session, invoice), **_helpers()))


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class DocumentAltered(Exception):
    """A stored document no longer matches its SHA-256."""


def read_document(document: InvoiceDocument) -> bytes:
    data = (documents_dir() / document.path).read_bytes()
    if hashlib.sha256(data).hexdigest() != document.sha256:
        raise DocumentAltered(f"stored document {document.id} does not match its SHA-256")
    return data


def _stored(session: Session, ref_id: int, kind: str = "invoice") -> InvoiceDocument | None:
    return session.scalar(select(InvoiceDocument).where(InvoiceDocument.kind == kind,
                                                        InvoiceDocument.ref_id == ref_id))


def invoice_pdf(new_session, invoice_id: int) -> bytes:
    """The invoice as issued: the stored PDF, or rendered and stored now (once) if not yet done."""

    def render(s: Session):
        invoice = states.get_invoice(s, invoice_id)
        return invoice.series, invoice.number, render_invoice(s, invoice)

    return _stored_pdf(new_session, "invoice", invoice_id, "invoices", render)


def credit_note_pdf(new_session, note_id: int) -> bytes:
    """The credit note as issued (stored like invoices: every reprint serves the same bytes)."""

    def render(s: Session):
        note = s.get(CreditNote, note_id)
        if note is None:
            raise base.NotFound("no such credit note")
        invoice = states.get_invoice(s, note.invoice_id)
        html = _render_html("billing/credit_note_pdf.html", note=note, invoice=invoice, **_helpers())
        return note.series, note.number, _pdf(html)

    return _stored_pdf(new_session, "credit_note", note_id, "credit_notes", render)


def _stored_pdf(new_session, kind: str, ref_id: int, folder_name: str, render) -> bytes:
    """The stored PDF of (*kind*, *ref_id*), or rendered by *render* and stored now (once).

    Rendering happens in a read transaction; only the short insert of its record takes the write
    lock. If two renders race, the first record wins and the loser's file is removed, so every
    print serves the same bytes.
    """
    with new_session() as s:
        document = _stored(s, ref_id, kind)
        if document is not None:
            return read_document(document)
        series, number, data = render(s)
    digest = hashlib.sha256(data).hexdigest()
    folder = documents_dir() / folder_name / series
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{number}-{digest[:12]}.pdf"
    _write_atomically(path, data)
    try:
        with new_session(write=True) as s:
            document = _stored(s, ref_id, kind)
            if document is None:
                s.add(InvoiceDocument(kind=kind, ref_id=ref_id, sha256=digest,
                                      path=str(path.relative_to(documents_dir()))))
                s.commit()
                return data
    except IntegrityError:  # PostgreSQL: another render committed first
        document = None
    with new_session() as s:
        document = document or _stored(s, ref_id, kind)
        if document is not None and document.path != str(path.relative_to(documents_dir())):
            path.unlink(missing_ok=True)
        return read_document(document)


def render_credit_note_after_issue(note_id: int) -> None:
    """Store a just-issued credit note's PDF after commit; a failure is logged (rendered on first print)."""
    app = current_app._get_current_object()
    try:
        credit_note_pdf(app.extensions["archivage"].new_session, note_id)
    except Exception:
        log.exception("rendering credit note %s failed; it will be rendered on first print", note_id)


def render_after_issue(invoice_id: int) -> None:
    """Render and store a just-issued invoice, after its commit (never inside the numbering lock).

    Served by one renderer *process* per web process (``backoffice/billing/pdf_worker.py``;
    ``BILLING_PDF_IN_BACKGROUND``, on by default and off under ``TESTING``) so that issuing answers
    at once: WeasyPrint is CPU-bound, and in a thread it held the GIL against the next requests
    (about 20 ms of every issue + pay). Its own process also runs at a lower priority than the
    desk's requests, and ends when the web process closes its input. If it stops first, the first
    print renders the PDF. A failure is logged, the invoice stands.
    """
    app = current_app._get_current_object()
    if app.testing or not app.config.get("BILLING_PDF_IN_BACKGROUND", True):
        try:
            invoice_pdf(app.extensions["archivage"].new_session, invoice_id)
        except Exception:
            log.exception("rendering invoice %s failed; it will be rendered on first print", invoice_id)
        return
    with _WORKER_LOCK:  # waitress serves requests on several threads
        _send_to_worker(app, invoice_id)


def _send_to_worker(app, invoice_id: int) -> None:
    worker = app.extensions.get("billing_pdf_worker")
    for _attempt in range(2):
        if worker is None or worker.poll() is not None:
            worker = app.extensions["billing_pdf_worker"] = _start_worker(app)
        try:
            worker.stdin.write(f"{invoice_id}\n".encode())
            worker.stdin.flush()
            return
        except OSError:  # it died: start another, once
            worker = None
    log.error("no renderer process for invoice %s; it will be rendered on first print", invoice_id)


def _start_worker(app):
    """``python -m backoffice.billing.pdf_worker``: a plain child (not multiprocessing, which re-runs ``__main__``)."""
    import json
    import subprocess
    import sys

    config = {k: v for k, v in app.config.items() if isinstance(v, (str, int, float, bool, type(None)))}
    config.update(INSTANCE_PATH=app.instance_path, BILLING_PDF_IN_BACKGROUND=False)
    env = {**os.environ, "ARCHIVAGE_PDF_WORKER_CONFIG": json.dumps(config)}
    return subprocess.Popen([sys.executable, "-m", "backoffice.billing.pdf_worker"], stdin=subprocess.PIPE, env=env,
                            cwd=str(Path(__file__).resolve().parents[2]))


def render_receipt(session: Session, invoice: Invoice, payment_id: int | None = None) -> bytes:
    """Receipt of the payments so far (or of one payment): invoice, amounts, methods, what remains due."""
    payments = list(session.scalars(select(Payment).where(Payment.invoice_id == invoice.id).order_by(Payment.id)))
    if payment_id is not None:
        payments = [p for p in payments if p.id == payment_id]
        if not payments:
            raise base.NotFound("no such payment on this invoice")
    state = states.invoice_state(session, invoice)
    credits = invoices.credit_notes_of(session, invoice.id)
    html = _render_html("billing/receipt_pdf.html", invoice=invoice, payments=payments, state=state,
                           credits=credits, now=base.utcnow(), status_label=STATUS_LABELS[state.status],
                           **_helpers())
    return _pdf(html)


def render_receipted_invoice(session: Session, invoice: Invoice) -> bytes:
    """The facture acquittée: the invoice, "Acquittée le …" and the patient's payments, for the
    patient to claim reimbursement from the mutual insurer. Only once the patient owes nothing."""
    state = states.invoice_state(session, invoice)
    payments = list(session.scalars(select(Payment).where(Payment.invoice_id == invoice.id).order_by(Payment.id)))
    if state.status == "credited" or state.patient_balance_cents > 0 or state.patient_paid_cents <= 0:
        raise base.Conflict("a receipted invoice is issued once the patient has paid their part in full",
                                code="not_paid")
    settled_on = max(p.received_at for p in payments if p.payer == "patient" and p.amount_cents > 0)
    html = _render_html("billing/receipted_invoice_pdf.html", invoice=invoice, payments=payments, state=state,
                        credits=invoices.credit_notes_of(session, invoice.id), settled_on=settled_on,
                        now=base.utcnow(), ins=_ins(session, invoice), **_helpers())
    return _pdf(html)


def render_closing_report(session: Session, closing) -> bytes:
    """The Z report of a closing: totals per method, the drawer counted and its difference, the entries."""
    import json

    rows = closings.period_payments(session, closing.kind, closing.period)
    html = _render_html("billing/closing_pdf.html", closing=closing, totals=json.loads(closing.totals_json),
                        expected=json.loads(closing.expected_json) if closing.expected_json else {},
                        rows=rows, now=base.utcnow(), **_helpers())
    return _pdf(html)
