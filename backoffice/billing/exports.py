"""Exports for the accountant: CSV of invoices and payments for a period, and the FEC layout."""

from __future__ import annotations

import io
from datetime import date, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from archive_core.values import paris_day, paris_midnight
from backoffice.billing.models import Claim, CreditNote, Invoice, Payment
from backoffice.spreadsheet import SafeWriter, safe_cell

FEC_COLUMNS = ["JournalCode", "JournalLib", "EcritureNum", "EcritureDate", "CompteNum", "CompteLib", "CompAuxNum",
               "CompAuxLib", "PieceRef", "PieceDate", "EcritureLib", "Debit", "Credit", "EcritureLet", "DateLet",
               "ValidDate", "Montantdevise", "Idevise"]
CASH_ACCOUNTS = {"cash": ("530000", "Caisse"), "card": ("512000", "Banque"),
                 "cheque": ("511200", "Chèques à encaisser"),
                 "transfer": ("512000", "Banque")}


def utc_bounds(start: date, end: date) -> tuple[datetime, datetime]:
    """[start 00:00, end+1 00:00) in Paris, as UTC instants."""
    return paris_midnight(start), paris_midnight(end + timedelta(days=1))


def _euros(cents: int) -> str:
    return f"{cents / 100:.2f}".replace(".", ",")


def invoices_csv(session: Session, start: date, end: date) -> str:
    lo, hi = utc_bounds(start, end)
    out = io.StringIO()
    writer = SafeWriter(out, delimiter=";")
    writer.writerow(["type", "numero", "date", "patient_id", "groupe", "total_cents", "mutuelle_cents", "patient_cents",
                     "mutuelle", "facture_id", "mode", "paiement_id"])
    for inv in session.scalars(select(Invoice).where(Invoice.issued_at >= lo, Invoice.issued_at < hi)
                               .order_by(Invoice.id)):
        writer.writerow(["facture", inv.number, paris_day(inv.issued_at).isoformat(), inv.patient_id, inv.exam_group,
                         inv.total_cents, inv.insurer_cents, inv.patient_cents, inv.insurer_name or "", inv.id, "", ""])
    for note in session.scalars(select(CreditNote).where(CreditNote.issued_at >= lo, CreditNote.issued_at < hi)
                                .order_by(CreditNote.id)):
        writer.writerow(["avoir", note.number, paris_day(note.issued_at).isoformat(), "", "", note.total_cents, "", "",
                         "", note.invoice_id, "", ""])
    for pay in session.scalars(select(Payment).where(Payment.paris_day >= start, Payment.paris_day <= end)
                               .order_by(Payment.id)):
        writer.writerow(["paiement" if pay.amount_cents > 0 else "remboursement", "", pay.paris_day.isoformat(), "",
                         "", pay.amount_cents, "", "", "", pay.invoice_id, pay.method, pay.id])
    return out.getvalue()


def _patient(inv: Invoice, debit: int, credit: int) -> tuple:
    return ("411000", "Clients", inv.patient_id, inv.patient_name or inv.patient_id, debit, credit)


def _insurer(inv: Invoice, debit: int, credit: int) -> tuple:
    return ("411100", "Mutuelles", f"AMC{inv.insurer_id}", inv.insurer_name or "", debit, credit)


def fec(session: Session, start: date, end: date) -> str:
    """Fichier des écritures comptables (article A47 A-1 du LPF): tab-separated, one line per entry line."""
    lo, hi = utc_bounds(start, end)
    lines: list[list[str]] = []
    counters = {"VE": 0, "BQ": 0, "OD": 0}

    def entry(journal: str, label: str, when: date, piece: str, text: str,
              rows: list[tuple[str, str, str, str, int, int]]) -> None:
        counters[journal] += 1
        number = f"{journal}{counters[journal]:06d}"
        day = when.strftime("%Y%m%d")
        for account, account_label, aux, aux_label, debit, credit in rows:
            lines.append([journal, label, number, day, account, account_label, aux, aux_label, piece, day, text,
                          _euros(debit), _euros(credit), "", "", day, "", "EUR"])

    invoices = {}
    for inv in session.scalars(select(Invoice).where(Invoice.issued_at >= lo, Invoice.issued_at < hi)
                               .order_by(Invoice.id)):
        invoices[inv.id] = inv
        # The receivable is booked on whoever owes it: the insurer only under tiers payant (its claim),
        # otherwise the patient owes the whole fee (and claims reimbursement from the insurer).
        if inv.third_party_payment:
            rows = [_patient(inv, inv.patient_cents, 0), _insurer(inv, inv.insurer_cents, 0)]
        else:
            rows = [_patient(inv, inv.total_cents, 0)]
        rows.append(("706000", "Prestations de services", "", "", 0, inv.total_cents))
        entry("VE", "Ventes", paris_day(inv.issued_at), inv.number, f"Archivage {inv.exam_group_label}",
              [r for r in rows if r[4] or r[5]])
    for note in session.scalars(select(CreditNote).where(CreditNote.issued_at >= lo, CreditNote.issued_at < hi)
                                .order_by(CreditNote.id)):
        inv = invoices.get(note.invoice_id) or session.get(Invoice, note.invoice_id)
        entry("VE", "Ventes", paris_day(note.issued_at), note.number, f"Avoir sur {inv.number}",
              [r for r in [("706000", "Prestations de services", "", "", -note.total_cents, 0),
                           _patient(inv, 0, -note.patient_cents), _insurer(inv, 0, -note.insurer_cents)]
               if r[4] or r[5]])
    # A rejected claim: what the insurer owed becomes the patient's (moved between the two accounts).
    for claim in session.scalars(select(Claim).where(Claim.status == "rejected", Claim.settled_at >= lo,
                                                     Claim.settled_at < hi).order_by(Claim.id)):
        inv = invoices.get(claim.invoice_id) or session.get(Invoice, claim.invoice_id)
        moved = claim.amount_cents + sum(n.insurer_cents for n in session.scalars(
            select(CreditNote).where(CreditNote.invoice_id == inv.id, CreditNote.issued_at <= claim.settled_at)))
        if moved > 0:
            entry("OD", "Opérations diverses", paris_day(claim.settled_at), inv.number,
                  f"Tiers payant rejeté {inv.number}", [_patient(inv, moved, 0), _insurer(inv, 0, moved)])
    for pay in session.scalars(select(Payment).where(Payment.paris_day >= start, Payment.paris_day <= end)
                               .order_by(Payment.id)):
        inv = invoices.get(pay.invoice_id) or session.get(Invoice, pay.invoice_id)
        account, account_label = CASH_ACCOUNTS[pay.method]
        client = _insurer if pay.payer == "insurer" else _patient
        amount = abs(pay.amount_cents)
        if pay.amount_cents > 0:
            rows = [(account, account_label, "", "", amount, 0), client(inv, 0, amount)]
        else:
            rows = [client(inv, amount, 0), (account, account_label, "", "", 0, amount)]
        entry("BQ", "Encaissements", pay.paris_day, inv.number, f"Règlement {pay.method} {inv.number}", rows)
    out = io.StringIO()
    out.write("\t".join(FEC_COLUMNS) + "\r\n")
    for line in lines:
        out.write("\t".join(safe_cell(value.replace("\t", " ").replace("\r", " ").replace("\n", " ")) for value in line) + "\r\n")
    return out.getvalue()
