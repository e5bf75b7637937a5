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
