"""The payment journal: hash-chained entries, the issued records' digests, period totals and verify.

Each function takes a Session first, flushes, never commits (the edge does)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from archive_core.hashchain import GENESIS, head_hash, holds, link_hash, lock_chain
from archive_core.values import LOCK_PAYMENT_JOURNAL, as_utc, paris_day
from backoffice.billing import base
from backoffice.billing.base import Conflict, Invalid
from backoffice.billing.models import Closing, CreditNote, Invoice, Payment


def _payment_digest(prev_hash: str, p: Payment) -> str:
    at = as_utc(p.received_at).astimezone(timezone.utc).isoformat(timespec="microseconds")
    return link_hash(prev_hash, [p.invoice_id, p.amount_cents, p.method, p.payer, p.credit_note_id, at, p.received_by,
                                 p.paris_day.isoformat()], ensure_ascii=True)


def lock_journal(session: Session) -> None:
    lock_chain(session, LOCK_PAYMENT_JOURNAL)


def _open_day(session: Session, day: date) -> date:
    """*day*, or the first day after it that is not closed."""
    closed = set(session.scalars(select(Closing.period).where(Closing.kind == "day",
                                                               Closing.period >= day.isoformat())))
    while day.isoformat() in closed:
        day = date.fromordinal(day.toordinal() + 1)
    return day


def append_payment(session: Session, *, locked: bool = False, roll_over_closed_day: bool = False,
                    **fields) -> Payment:
    """Append to the journal on today's business day.

    The desk cannot take money on a closed day (its drawer was counted). An insurer's transfer
    that arrives after the day was closed (*roll_over_closed_day*) is booked on the next open day:
    a closed day never changes.
    """
    if not locked:
        lock_journal(session)
    now = base.utcnow()
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
            totals = period_totals(session, closing.kind, closing.period)
            if (json.dumps(totals["by_method"], sort_keys=True) != closing.totals_json
                    or totals["total"] != closing.total_cents or totals["count"] != closing.payment_count
                    or (closing.last_payment_hash != GENESIS and closing.last_payment_hash not in hashes)):
                bad_closing = f"{closing.kind} {closing.period}"
                break
            closings += 1
    return JournalReport(checked, bad, closings, bad_closing)


# -- period totals (what a closing signs) ----------------------------------------------------------


def period_bounds(kind: str, period: str) -> tuple[date, date]:
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


def period_totals(session: Session, kind: str, period: str) -> dict:
    start, end = period_bounds(kind, period)
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
