"""DICOM values and the clock: the one place DA, TM and PN values are read and written, "today in Paris",
and the few constants core and back-office share (advisory lock keys, the "not configured" mention).

Public for the back-office (alongside :mod:`archive_core.api`): pure functions, no database, no Flask.
Stored instants are UTC; SQLite gives them back naive, which :func:`as_utc` reads as UTC.
"""

from __future__ import annotations

from datetime import date, datetime, time, timezone
from zoneinfo import ZoneInfo

__all__ = ["LOCK_AUDIT_CHAIN", "LOCK_PAYMENT_JOURNAL", "LOCK_RETENTION_ANSWERS", "LOCK_RETENTION_SWEEP",
           "LOCK_SCHEDULER_LEADER", "NOT_CONFIGURED", "PARIS", "as_utc", "da_to_iso", "format_da", "normalize_da", "normalize_tm", "paris_day",
           "paris_midnight", "paris_time", "parse_da", "person_name", "utcnow"]

PARIS = ZoneInfo("Europe/Paris")
# Printed in place of a practice setting left unset (documents, media README): a document never fails for it.
NOT_CONFIGURED = "à configurer"

# PostgreSQL advisory lock keys, one per serialised job, named here so no two jobs share a number.
LOCK_AUDIT_CHAIN = 727270001       # appends to the audit trail and its checkpoints
LOCK_PAYMENT_JOURNAL = 727270400   # appends to the payment journal
LOCK_RETENTION_SWEEP = 727270500   # one retention sweep proposing purge batches at a time
LOCK_RETENTION_ANSWERS = 727270501  # one refresh of the stored retention answers at a time
LOCK_SCHEDULER_LEADER = 727270600  # the scheduler's leader (a session lock held for life)


# -- the clock -------------------------------------------------------------------------------------


def utcnow() -> datetime:
    """Now, aware, in UTC."""
    return datetime.now(timezone.utc)


def as_utc(moment: datetime) -> datetime:
    """*moment* aware: a naive datetime is a stored UTC instant (SQLite drops the zone), an aware one is kept."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def paris_time(moment: datetime) -> datetime:
    """A stored instant as the wall-clock time in Paris, summer time included."""
    return as_utc(moment).astimezone(PARIS)


def paris_day(now: datetime) -> date:
    """The calendar day in Paris at the instant *now* (23:30 UTC on 31 December is already 1 January)."""
    return paris_time(now).date()


def paris_midnight(day: date) -> datetime:
    """The UTC instant at which *day* begins in Paris."""
    return datetime.combine(day, time(), tzinfo=PARIS).astimezone(timezone.utc)


# -- DA: dates -------------------------------------------------------------------------------------


def parse_da(value: str | None) -> date | None:
    """A DA value as a date; None for anything that is not a calendar date.

    PS3.5 table 6.2-1: ``YYYYMMDD``, eight ASCII digits (``20240115``); the ACR-NEMA form
    ``2024.01.15`` is read as the same date (the standard's backward-compatibility note). Padding
    spaces are ignored. Not a date: ``20241301``, ``2024-01-15``, ``2024011`` or trailing characters
    (``20240115123``), non-ASCII digits.
    """
    if value is None:
        return None
    t = str(value).strip()
    if len(t) == 10 and t[4] == "." and t[7] == ".":
        t = t[:4] + t[5:7] + t[8:]
    if len(t) != 8 or not (t.isascii() and t.isdigit()):
        return None
    try:
        return date(int(t[:4]), int(t[4:6]), int(t[6:]))
    except ValueError:
        return None


def format_da(day: date) -> str:
    """A date as DA text, ``YYYYMMDD``."""
    return f"{day.year:04d}{day.month:02d}{day.day:02d}"


def normalize_da(value: str | None) -> str | None:
    """A DA value as ``YYYYMMDD`` (the form the index stores), or None when it is not a date."""
    day = parse_da(value)
    return format_da(day) if day else None


def da_to_iso(value: str | None) -> str | None:
    """A DA value as ISO 8601 (``2024-01-15``), or None when it is not a date."""
    day = parse_da(value)
    return day.isoformat() if day else None


# -- TM: times -------------------------------------------------------------------------------------


def normalize_tm(value: str | None, *, upper: bool = False) -> str | None:
    """A TM value as ``HHMMSS.ffffff``; missing digits are the lowest (or, *upper*, highest) values.

    ``10`` -> ``100000.000000`` (upper: ``105959.999999``); ``101532.25`` -> ``101532.250000``.
    The ACR-NEMA form with colons is accepted. None for a value that is not a time.
    """
    if value is None:
        return None
    t = str(value).strip().replace(":", "")
    whole, _, frac = t.partition(".")
    if not (whole.isascii() and whole.isdigit()) or len(whole) not in (2, 4, 6) or (frac and not (frac.isascii() and frac.isdigit())) or len(frac) > 6:
        return None
    whole += ("59" if upper else "00") * ((6 - len(whole)) // 2)
    frac = (frac + ("9" if upper else "0") * 6)[:6]
    return f"{whole}.{frac}"


# -- PN: person names ------------------------------------------------------------------------------


def person_name(value: str | None, *, as_stored: bool = False) -> str:
    """``DUPRÉ^JEAN-FRANÇOIS^^DR`` -> ``DUPRÉ Jean-François``: what a French desk writes.

    The family name in capitals; given and middle names as stored, or capitalised when the
    modality wrote them all in capitals (with *as_stored*, as stored: invoices and media print
    ``DUPRÉ JEAN-FRANÇOIS``, the name as the archive holds it). Only the alphabetic group
    (PS3.5 6.2.1.2). "" when empty.
    """
    if not value:
        return ""
    alphabetic = value.split("=")[0]
    parts = (alphabetic.split("^") + ["", "", "", ""])[:5]
    family, given, middle = parts[0].strip(), parts[1].strip(), parts[2].strip()

    def given_form(text: str) -> str:
        return text.title() if text.isupper() and not as_stored else text

    return " ".join(p for p in (family.upper(), given_form(given), given_form(middle)) if p)
