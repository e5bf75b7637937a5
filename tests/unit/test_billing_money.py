"""The money rules: one half-up rounding, shares that always add up (property and table tests)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backoffice.billing.money import apply_rate, round_half_up, split


@pytest.mark.parametrize(
    ("numerator", "denominator", "expected"),
    [
        (5, 10, 1),  # a half goes up
        (4, 10, 0),
        (15, 10, 2),
        (25, 10, 3),  # not banker's rounding (which would give 2)
        (-5, 10, -1),  # halves away from zero
        (0, 7, 0),
        (10_000, 10_000, 1),
    ],
)
def test_round_half_up_table(numerator, denominator, expected):
    assert round_half_up(numerator, denominator) == expected


@pytest.mark.parametrize(
    ("total", "rate_bp", "flat", "cap_left", "insurer", "patient"),
    [
        (450, 5000, 0, None, 225, 225),
        (450, 3333, 0, None, 150, 300),  # 149.985 -> 150 (half-up at the cent)
        (350, 3500, 0, None, 123, 227),  # 122.5 -> 123
        (300, 0, 100, None, 100, 200),  # flat amount only
        (300, 5000, 200, None, 300, 0),  # rate + flat capped at the total
        (400, 10000, 0, 150, 150, 250),  # what remains of the annual cap
        (400, 10000, 0, 0, 0, 400),  # cap used up
        (400, 10000, 0, -20, 0, 400),  # never a negative share
        (500, 0, 0, None, 0, 500),  # no coverage
    ],
)
def test_split_table(total, rate_bp, flat, cap_left, insurer, patient):
    shares = split(total, coverage_bp=rate_bp, flat_cents=flat, cap_remaining_cents=cap_left)
    assert (shares.insurer_cents, shares.patient_cents) == (insurer, patient)


@pytest.mark.parametrize("bad", [dict(total_cents=-1), dict(total_cents=100, coverage_bp=10001),
                                 dict(total_cents=100, flat_cents=-5), dict(total_cents=100, coverage_bp=-1)])
def test_impossible_inputs_are_refused(bad):
    total = bad.pop("total_cents")
    with pytest.raises(ValueError):
        split(total, **bad)


amounts = st.integers(min_value=0, max_value=10_000_000)
rates = st.integers(min_value=0, max_value=10_000)


@given(total=amounts, rate=rates, flat=st.integers(0, 100_000), cap=st.one_of(st.none(), st.integers(-1000, 10**7)))
def test_shares_add_up_and_are_never_negative(total, rate, flat, cap):
    shares = split(total, coverage_bp=rate, flat_cents=flat, cap_remaining_cents=cap)
    assert shares.insurer_cents + shares.patient_cents == total
    assert 0 <= shares.insurer_cents <= total
    assert shares.patient_cents >= 0
    if cap is not None:
        assert shares.insurer_cents <= max(cap, 0)


@given(total=amounts, rate=rates)
def test_rate_is_rounded_half_up_to_the_cent(total, rate):
    exact = Fraction(total * rate, 10_000)
    got = apply_rate(total, rate)
    assert abs(got - exact) <= Fraction(1, 2)
    if exact - int(exact) == Fraction(1, 2):
        assert got == int(exact) + 1  # the half goes up
    else:
        assert got == round(exact)  # otherwise the nearest cent
