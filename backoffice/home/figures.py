"""The manager's dashboard figures: money per month, consent per exam group, insurer claims, studies per
modality per week, storage per tier with its growth and the day the disk fills at this rate.

Each figure is one aggregate query (buckets computed in SQL with ``CASE``), so the page stays fast with
100,000 invoices and patients (bench/web.py measures it). Months and weeks are Paris ones; *today* is
passed in (the app's clock), never read here.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from archive_core.values import paris_midnight
from backoffice.billing.models import Claim, ConsentCount, CreditNote, Insurer, Invoice, Payment

import threading

MONTHS = 12
WEEKS = 12
RATE_DAYS = 90  # the growth rate the fill date extrapolates: the last 90 days


class Memo:
    """The last value of each figure with the data version it was computed for (one per app).

    Invoices, credit notes and payments are append-only, so their largest ids say whether anything
    changed; the archive's :meth:`~archive_core.api.ArchiveFacade.data_version` does the same for studies and images. A figure
    is computed again as soon as its version (or today) differs, so what the page shows is always exact.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, tuple] = {}

    def get(self, name: str, version: tuple, compute):
        with self._lock:
            found = self._values.get(name)
        if found is not None and found[0] == version:
            return found[1]
        value = compute()
        with self._lock:
            self._values[name] = (version, value)
        return value


def money_version(session: Session) -> tuple:
    """Money's version: the largest ids of the append-only tables the money figure reads (invoices, credit
    notes, payments), in one statement (each an index lookup). The consent figure has no version: it is
    read from the counts kept by triggers at each load (0.3 ms), so an exam group whose date, group or
    consent changes in place shows at once."""
    money = (Invoice, CreditNote, Payment)
    return tuple(session.execute(select(*(select(func.max(m.id)).scalar_subquery() for m in money))).one())


def month_starts(today: date, count: int = MONTHS) -> list[date]:
    """The first day of each of the last *count* months, oldest first, the current month last."""
    year, month = today.year, today.month
    out = []
    for _ in range(count):
        out.append(date(year, month, 1))
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return out[::-1]


def _next_month(d: date) -> date:
    return date(d.year + (d.month == 12), d.month % 12 + 1, 1)


def _bucket_sums(column, amount, bounds: list[tuple]) -> list:
    """One SUM per [start, end) bucket over *column*: one range of the (column, amount) index each, all
    in one statement (a CASE per bucket over every row took 265 ms for 100,000 invoices)."""
    return [select(func.coalesce(func.sum(amount), 0)).where(column >= start, column < end).scalar_subquery()
            for start, end in bounds]


@dataclass(frozen=True)
class MonthMoney:
    month: date
    invoiced_cents: int  # invoices issued in the month, less the credit notes issued in it
    collected_cents: int  # payments received in the month (desk and insurers), less refunds


def money_per_month(session: Session, today: date) -> list[MonthMoney]:
    starts = month_starts(today)
    ends = [*starts[1:], _next_month(starts[-1])]
    instants = [(paris_midnight(s), paris_midnight(e)) for s, e in zip(starts, ends)]
    invoiced = session.execute(select(*_bucket_sums(Invoice.issued_at, Invoice.total_cents, instants))).one()
    credited = session.execute(select(*_bucket_sums(CreditNote.issued_at, CreditNote.total_cents, instants))).one()
    collected = session.execute(select(*_bucket_sums(Payment.paris_day, Payment.amount_cents,
                                                     list(zip(starts, ends))))).one()
    # Credit notes carry a negative total (their own series): adding them nets the month.
    return [MonthMoney(m, int(i) + int(c), int(p)) for m, i, c, p in zip(starts, invoiced, credited, collected)]


@dataclass(frozen=True)
class GroupConsent:
    exam_group: str
    accepted: int
    refused: int
    pending: int

    @property
    def asked(self) -> int:
        return self.accepted + self.refused

    @property
    def rate_percent(self) -> int | None:
        """Accepted among those asked, rounded to the percent; None when nobody was asked."""
        return round(100 * self.accepted / self.asked) if self.asked else None


def consent_per_group(session: Session, today: date) -> list[GroupConsent]:
    """Exam groups of the last twelve months by consent; free acts (paid by the national insurance) aside.

    Read from ``billing_consent_count`` (one row per visit day, exam group and consent, kept by triggers):
    a few thousand rows at most instead of every exam group of the year."""
    since = month_starts(today)[0]
    rows = session.execute(
        select(ConsentCount.exam_group, ConsentCount.consent, func.sum(ConsentCount.n))
        .where(ConsentCount.visit_date >= since, ConsentCount.visit_date <= today)
        .group_by(ConsentCount.exam_group, ConsentCount.consent)
    ).all()
    counts: dict[str, dict[str, int]] = {}
    for group, consent, n in rows:
        counts.setdefault(group, {})[consent] = int(n)
    return [GroupConsent(g, c.get("accepted", 0), c.get("refused", 0), c.get("pending", 0))
            for g, c in sorted(counts.items())]


@dataclass(frozen=True)
class InsurerClaims:
    insurer: str
    to_send: int
    sent: int
    amount_cents: int


def outstanding_claims(session: Session) -> list[InsurerClaims]:
    """Tiers-payant claims not yet paid, per insurer (to send, sent), biggest amount first."""
    rows = session.execute(
        select(Insurer.name, func.sum(case((Claim.status == "to_send", 1), else_=0)),
               func.sum(case((Claim.status == "sent", 1), else_=0)), func.coalesce(func.sum(Claim.amount_cents), 0))
        .join(Claim, Claim.insurer_id == Insurer.id)
        .where(Claim.status.in_(("to_send", "sent"))).group_by(Insurer.id, Insurer.name)
    ).all()
    out = [InsurerClaims(name, int(a), int(b), int(c)) for name, a, b, c in rows]
    return sorted(out, key=lambda r: (-r.amount_cents, r.insurer))


def week_starts(today: date, count: int = WEEKS) -> list[date]:
    """The Monday of each of the last *count* weeks, oldest first, this week last."""
    monday = today - timedelta(days=today.weekday())
    return [monday - timedelta(weeks=n) for n in range(count - 1, -1, -1)]


@dataclass(frozen=True)
class StorageFigures:
    tiers: dict[str, int]  # bytes stored today per tier
    months: list[date]
    total_at_month_end: list[int]  # all tiers, at the end of each month (the current month: today)
    added_last_days: int  # bytes received over the last RATE_DAYS days
    free_bytes: int | None  # free space of the disk holding the instance folder
    fills_on: date | None  # when the free space runs out at this rate; None: not growing


def disk_free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


HORIZON_DAYS = 100 * 365  # further than this is "not in a century", not a date


def fill_date(today: date, free_bytes: int | None, added: int, days: int = RATE_DAYS) -> date | None:
    """The day the free space is used up if it keeps growing by *added* bytes every *days* days; None when
    it does not grow, the free space is unknown, or the day is more than a century away."""
    if free_bytes is None or added <= 0:
        return None
    remaining = int(free_bytes * days // added)
    return today + timedelta(days=remaining) if remaining <= HORIZON_DAYS else None


def storage(per_tier: dict[str, int], added_since: list[int], months: list[date], added_last_days: int, *,
            today: date, free_bytes: int | None) -> StorageFigures:
    """*added_since[i]*: bytes received after the end of month *i* (0 for the current month)."""
    total = sum(per_tier.values())
    return StorageFigures(per_tier, months, [total - a for a in added_since], added_last_days, free_bytes,
                          fill_date(today, free_bytes, added_last_days))
