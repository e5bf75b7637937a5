"""Billing's shared ground: its domain errors (one code each, mapped once per edge), its clock, its input checks."""

from __future__ import annotations

from datetime import date

from archive_core.values import paris_day, utcnow
from backoffice.errors import DomainError


# -- errors (mapped once per edge: HTTP in backoffice/api/billing.py and the pages) ----------------


class BillingError(DomainError):
    """English *message* for the API and the log; pages read billing/errors.py's table."""

    code = "billing_error"


class NotFound(BillingError):
    code = "not_found"


class Conflict(BillingError):
    """The request is valid but the state forbids it (refused consent, already invoiced, closed day)."""

    code = "conflict"


class Invalid(BillingError):
    """An impossible value (negative amount, unknown method, rate above 100 %)."""

    code = "invalid"


# -- time ---------------------------------------------------------------------------------------


# utcnow and paris_day come from archive_core.values; utcnow is also a name of this module: billing's
# clock, read as ``base.utcnow()`` by every billing module (the browser and dashboard tests set it here).


def paris_today() -> date:
    return paris_day(utcnow())


def format_euros(cents: int) -> str:
    """4,50 € (Babel, fr_FR)."""
    from babel.numbers import format_currency

    return format_currency(cents / 100, "EUR", locale="fr_FR")


# -- validation helpers -------------------------------------------------------------------------


def parse_date(value, name: str) -> date:
    if not isinstance(value, str):
        raise Invalid(f"{name} must be a date YYYY-MM-DD", code="bad_date", field=name)
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise Invalid(f"{name} must be a date YYYY-MM-DD", code="bad_date", field=name) from exc




def check_int(name: str, value, *, low: int = 0, high: int | None = None, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise Invalid(f"{name} must be an integer {bounds}", code="bad_number", field=name)
    return value
