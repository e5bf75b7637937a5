"""Today's date for the retention pages, API and commands: the app's clock, injectable for tests.

``app.config["CLOCK"]`` may hold a callable returning an aware UTC ``datetime`` (tests set it to a
fixed instant); without it the system clock is used. Retention decisions (due dates, impossible
death dates) depend on "today", so every edge asks here rather than reading the system clock.
"""

from __future__ import annotations

from datetime import date, datetime, timezone

from flask import current_app

from backoffice.retention.decisions import today_paris


def now_utc() -> datetime:
    clock = current_app.config.get("CLOCK")
    if clock is None:
        return datetime.now(timezone.utc)
    if not callable(clock):
        raise RuntimeError("CLOCK must be a callable returning an aware UTC datetime (tests only)")
    return clock()


def today() -> date:
    """Today in Europe/Paris, by the app's clock."""
    return today_paris(now_utc())
