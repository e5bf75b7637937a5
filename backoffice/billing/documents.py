"""Billing documents: the invoice PDF (rendered once at issue, stored with its SHA-256) and receipts."""

from __future__ import annotations

import hashlib
import os
import tempfile
from datetime import date, datetime, timezone
from pathlib import Path

from babel.dates import format_date, format_datetime
from babel.numbers import format_currency
from flask import current_app, render_template
from sqlalchemy import select
from sqlalchemy.orm import Session

from backoffice.billing import services
from backoffice.billing.models import CreditNote, Invoice, InvoiceDocument, Payment

NOT_CONFIGURED = "à configurer"
PRACTICE_KEYS = ("PRACTICE_NAME", "PRACTICE_ADDRESS", "PRACTICE_SIRET", "PRACTICE_FINESS", "PRACTICE_RPPS",
                 "VAT_MENTION")
METHOD_LABELS = {"cash": "espèces", "card": "carte bancaire", "cheque": "chèque", "transfer": "virement"}
STATUS_LABELS = {"issued": "émise", "partially_paid": "partiellement payée", "paid": "payée", "credited": "annulée par avoir"}


def euros(cents: int) -> str:
    return format_currency(cents / 100, "EUR", locale="fr_FR")


def french_date(value: date | None) -> str:
    return format_date(value, format="long", locale="fr_FR") if value else ""


def french_datetime(value: datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return format_datetime(value, "d MMMM y 'à' HH:mm", tzinfo=services.PARIS, locale="fr_FR")


def dicom_name(value: str | None) -> str:
    """Durand^Marie -> DURAND Marie."""
    if not value:
        return ""
    parts = value.split("^")
    return " ".join(p for p in [parts[0].upper(), *parts[1:3]] if p)


def practice_identity() -> dict[str, str]:
    """The practice's mandatory mentions from configuration; "à configurer" rather than failing."""
    return {key: str(current_app.config.get(key) or NOT_CONFIGURED) for key in PRACTICE_KEYS}


def documents_dir() -> Path:
    path = Path(current_app.instance_path) / "documents"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pdf(html: str) -> bytes:
    from weasyprint import HTML

    return HTML(string=html, base_url=current_app.instance_path).write_pdf()


def _helpers() -> dict:
    return {"euros": euros, "french_date": french_date, "french_datetime": french_datetime, "name": dicom_name,
            "methods": METHOD_LABELS, "practice": practice_identity(), "dicom_date": services.dicom_date}


def render_invoice(session: Session, invoice: Invoice) -> bytes:
    return _pdf(render_template("billing/invoice_pdf.html", invoice=invoice, **_helpers()))


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


def store_invoice_pdf(session: Session, invoice: Invoice) -> InvoiceDocument:
    """Render and keep the invoice as issued (once); later calls return what was stored."""
    existing = session.scalar(select(InvoiceDocument).where(InvoiceDocument.kind == "invoice",
                                                            InvoiceDocument.ref_id == invoice.id))
    if existing is not None:
        return existing
    data = render_invoice(session, invoice)
    folder = documents_dir() / "invoices" / invoice.series
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{invoice.number}.pdf"
    _write_atomically(path, data)
    document = InvoiceDocument(kind="invoice", ref_id=invoice.id, sha256=hashlib.sha256(data).hexdigest(),
                               path=str(path.relative_to(documents_dir())))
    session.add(document)
    session.flush()
    return document


class DocumentAltered(Exception):
    """A stored document no longer matches its SHA-256."""


def read_document(document: InvoiceDocument) -> bytes:
    data = (documents_dir() / document.path).read_bytes()
    if hashlib.sha256(data).hexdigest() != document.sha256:
        raise DocumentAltered(f"stored document {document.id} does not match its SHA-256")
    return data


def invoice_pdf(session_factory, invoice_id: int) -> bytes:
    """The stored invoice PDF; rendered and stored now if issuing was interrupted before it."""
    with session_factory(write=False) as s:
        invoice = services.get_invoice(s, invoice_id)
        document = s.scalar(select(InvoiceDocument).where(InvoiceDocument.kind == "invoice",
                                                          InvoiceDocument.ref_id == invoice.id))
        if document is not None:
            return read_document(document)
    with session_factory(write=True) as s:
        document = store_invoice_pdf(s, services.get_invoice(s, invoice_id))
        s.commit()
        return read_document(document)


def render_receipt(session: Session, invoice: Invoice, payment_id: int | None = None) -> bytes:
    """Receipt of the payments so far (or of one payment): invoice, amounts, methods, what remains due."""
    payments = list(session.scalars(select(Payment).where(Payment.invoice_id == invoice.id).order_by(Payment.id)))
    if payment_id is not None:
        payments = [p for p in payments if p.id == payment_id]
        if not payments:
            raise services.NotFound("no such payment on this invoice")
    state = services.invoice_state(session, invoice)
    credit = session.scalar(select(CreditNote).where(CreditNote.invoice_id == invoice.id))
    html = render_template("billing/receipt_pdf.html", invoice=invoice, payments=payments, state=state,
                           credit=credit, now=services.utcnow(), status_label=STATUS_LABELS[state.status],
                           **_helpers())
    return _pdf(html)
