"""Money arithmetic: integer cents, basis points, and the one rounding function (half-up)."""

from __future__ import annotations

from dataclasses import dataclass

BP_PER_UNIT = 10_000  # 100 % = 10 000 basis points


def round_half_up(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded to the nearest integer, halves away from zero.

    The only rounding in billing: exact on integers, no floats, no banker's rounding.
    """
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    sign = -1 if numerator < 0 else 1
    quotient, remainder = divmod(abs(numerator), denominator)
    if 2 * remainder >= denominator:
        quotient += 1
    return sign * quotient


def apply_rate(amount_cents: int, rate_bp: int) -> int:
    """*amount_cents* × *rate_bp* / 10 000, rounded half-up to the cent."""
    return round_half_up(amount_cents * rate_bp, BP_PER_UNIT)


@dataclass(frozen=True)
class Split:
    total_cents: int
    insurer_cents: int
    patient_cents: int


def split(
    total_cents: int, *, coverage_bp: int = 0, flat_cents: int = 0, cap_remaining_cents: int | None = None
) -> Split:
    """The insurer's and the patient's shares of *total_cents*; they always add up to the total.

    insurer = min(round_half_up(total × rate) + flat, what remains of the annual cap, total).
    """
    if total_cents < 0 or coverage_bp < 0 or coverage_bp > BP_PER_UNIT or flat_cents < 0:
        raise ValueError("amounts and rates must be non-negative, rates at most 10 000 bp")
    insurer = apply_rate(total_cents, coverage_bp) + flat_cents
    if cap_remaining_cents is not None:
        insurer = min(insurer, max(cap_remaining_cents, 0))
    insurer = min(insurer, total_cents)
    return Split(total_cents, insurer, total_cents - insurer)


# -- rates as people type and read them ("50 %", "33,5 %"), stored exactly in basis points --------------

_SPACES = {" ", "\u00a0", "\u202f", "\t"}


class PercentError(ValueError):
    """Why a typed rate is not a rate: ``empty``, ``form`` (not a number), ``decimals`` (finer than
    0,01 %, which basis points cannot hold) or ``range`` (above 100 %)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_percent(text: str | None) -> int:
    """A rate typed in percent ("50", "50 %", "33,5 %", "12.25%") as basis points, exactly.

    No floats: the digits are read as written. At most two decimals (1 bp = 0,01 %), between 0 and
    100 %; a sign, an exponent, a second separator or anything else is refused.
    """
    raw = "".join(c for c in (text or "") if c not in _SPACES)
    if raw.endswith("%"):
        raw = raw[:-1]
    if not raw:
        raise PercentError("empty")
    whole, sep, frac = raw.replace(",", ".").partition(".")
    if not whole.isascii() or not whole.isdigit() or (sep and not (frac.isascii() and frac.isdigit())):
        raise PercentError("form")
    if len(frac) > 2 and frac[2:].strip("0"):
        raise PercentError("decimals")
    bp = int(whole) * 100 + int((frac + "00")[:2])
    if bp > BP_PER_UNIT:
        raise PercentError("range")
    return bp
