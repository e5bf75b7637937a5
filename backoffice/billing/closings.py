"""Closings: a day, month or year signed with its totals and the journal head it ends on.

Each function takes a Session first, flushes, never commits (the edge does)."""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from backoffice.billing import base
from backoffice.billing.base import Conflict, Invalid, NotFound, check_int
from backoffice.billing.journal import lock_journal, period_bounds, period_totals
from backoffice.billing.models import Closing, Invoice, Payment


def period_payments(session: Session, kind: str, period: str) -> list[tuple[Payment, Invoice]]:
    """The journal entries of a period with their invoices (the Z report lists them)."""
    start, end = period_bounds(kind, period)
    return list(session.execute(
        select(Payment, Invoice).join(Invoice, Invoice.id == Payment.invoice_id)
        .where(Payment.paris_day >= start, Payment.paris_day <= end).order_by(Payment.id)).all())


def get_closing(session: Session, closing_id: int) -> Closing:
    closing = session.get(Closing, closing_id)
    if closing is None:
        raise NotFound("no such closing")
    return closing


def close_period(session: Session, kind: str, period: str, *, signed_by: str,
                 counted_cash_cents: int | None = None, counted_cheque_cents: int | None = None) -> Closing:
    """Close a day (then no more payments that day), a month (all its days closed) or a year.

    A day's closing records what the desk counted in the drawer (cash, cheques) and the difference
    with what the journal expects (counted − expected; positive: more in the drawer).
    """
    if kind not in ("day", "month", "year"):
        raise Invalid("kind must be day, month or year", code="bad_closing_kind")
    if kind != "day" and (counted_cash_cents is not None or counted_cheque_cents is not None):
        raise Invalid("cash and cheques are counted at day closings only", code="counted_at_day_only")
    check_int("counted_cash_cents", counted_cash_cents, optional=True)
    check_int("counted_cheque_cents", counted_cheque_cents, optional=True)
    start, end = period_bounds(kind, period)
    today = base.paris_today()
    if start > today:
        raise Invalid("a period in the future cannot be closed", code="future_period")
    if kind != "day" and end >= today:
        raise Conflict(f"the {kind} {period} is not over yet", code="not_over")
    if session.scalar(select(Closing.id).where(Closing.kind == kind, Closing.period == period)):
        raise Conflict(f"{kind} {period} is already closed", code="already_closed")
    lock_journal(session)
    if kind == "month":
        days = set(session.scalars(select(Payment.paris_day).where(Payment.paris_day >= start,
                                                                   Payment.paris_day <= end).distinct()))
        closed = set(session.scalars(select(Closing.period).where(Closing.kind == "day")))
        open_days = sorted(d.isoformat() for d in days if d.isoformat() not in closed)
        if open_days:
            raise Conflict(f"close these days first: {', '.join(open_days)}", code="open_days",
                           periods=", ".join(open_days))
    if kind == "year":
        closed = set(session.scalars(select(Closing.period).where(Closing.kind == "month")))
        months = {d.strftime("%Y-%m") for d in session.scalars(
            select(Payment.paris_day).where(Payment.paris_day >= start, Payment.paris_day <= end).distinct())}
        if months - closed:
            raise Conflict(f"close these months first: {', '.join(sorted(months - closed))}", code="open_months",
                           periods=", ".join(sorted(months - closed)))
    totals = period_totals(session, kind, period)
    closing = Closing(kind=kind, period=period, totals_json=json.dumps(totals["by_method"], sort_keys=True),
                      total_cents=totals["total"], payment_count=totals["count"],
                      last_payment_hash=totals["last_hash"], signed_by=signed_by, signed_at=base.utcnow())
    if kind == "day":
        expected = {"cash": totals["by_method"].get("cash", 0), "cheque": totals["by_method"].get("cheque", 0)}
        closing.expected_json = json.dumps(expected, sort_keys=True)
        if counted_cash_cents is not None:
            closing.counted_cash_cents = counted_cash_cents
            closing.cash_difference_cents = counted_cash_cents - expected["cash"]
        if counted_cheque_cents is not None:
            closing.counted_cheque_cents = counted_cheque_cents
            closing.cheque_difference_cents = counted_cheque_cents - expected["cheque"]
    session.add(closing)
    session.flush()
    return closing
