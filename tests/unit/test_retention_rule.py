"""The retention rule: every case in a table, then invariants over generated patients."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from archive_core.retention import (
    BIRTHDAY_28,
    DEATH,
    LAST_VISIT,
    NO_VISIT,
    HoldPeriod,
    RetentionFacts,
    add_years,
    decide,
)

D = date
TODAY = D(2026, 11, 28)

CASES = [
    # id, facts, keep_until, basis, needs_review
    ("adult: 20 years after the last visit",
     RetentionFacts((D(2012, 9, 15),), D(1970, 1, 1)), D(2032, 9, 15), LAST_VISIT, False),
    ("the latest visit counts",
     RetentionFacts((D(2001, 1, 1), D(2012, 9, 15), D(2005, 6, 1)), D(1970, 1, 1)), D(2032, 9, 15), LAST_VISIT, False),
    ("child: until the 28th birthday",
     RetentionFacts((D(2010, 5, 1),), D(2005, 3, 4)), D(2033, 3, 4), BIRTHDAY_28, False),
    ("28th birthday on the same day as 20 years: last visit basis",
     RetentionFacts((D(2010, 5, 1),), D(2002, 5, 1)), D(2030, 5, 1), LAST_VISIT, False),
    ("died 3 years after the last visit: 10 years after death",
     RetentionFacts((D(2012, 9, 15),), D(1950, 1, 1), D(2015, 1, 10)), D(2025, 1, 10), DEATH, False),
    ("death rule applies to a child too (in all cases)",
     RetentionFacts((D(2012, 9, 15),), D(2010, 1, 1), D(2013, 1, 10)), D(2023, 1, 10), DEATH, False),
    ("died 12 years after the last visit: the normal rule",
     RetentionFacts((D(2000, 1, 1),), D(1950, 1, 1), D(2012, 6, 1)), D(2020, 1, 1), LAST_VISIT, False),
    ("died exactly 10 years after: not less than 10, normal rule",
     RetentionFacts((D(2000, 1, 1),), D(1950, 1, 1), D(2010, 1, 1)), D(2020, 1, 1), LAST_VISIT, False),
    ("no birth date: 20 years, flagged for review",
     RetentionFacts((D(2000, 1, 1),), None), D(2020, 1, 1), LAST_VISIT, True),
    ("no birth date but the death rule applies: no review needed",
     RetentionFacts((D(2000, 1, 1),), None, D(2001, 1, 1)), D(2011, 1, 1), DEATH, False),
    ("only outside priors: no visit, review",
     RetentionFacts((), D(1970, 1, 1)), None, NO_VISIT, True),
    ("a released hold of 100 days is added",
     RetentionFacts((D(2000, 1, 1),), D(1950, 1, 1), None, (HoldPeriod(D(2010, 1, 1), D(2010, 4, 11)),)),
     D(2020, 4, 10), LAST_VISIT, False),
    ("overlapping holds count each day once",
     RetentionFacts((D(2000, 1, 1),), D(1950, 1, 1), None,
                    (HoldPeriod(D(2010, 1, 1), D(2010, 1, 31)), HoldPeriod(D(2010, 1, 21), D(2010, 2, 10)))),
     D(2020, 2, 10), LAST_VISIT, False),
    ("a hold before the last visit does not count (a new visit restarts the clock)",
     RetentionFacts((D(2000, 1, 1),), D(1950, 1, 1), None, (HoldPeriod(D(1999, 1, 1), D(1999, 6, 1)),)),
     D(2020, 1, 1), LAST_VISIT, False),
    ("a hold placed after the deadline adds nothing",
     RetentionFacts((D(2000, 1, 1),), D(1950, 1, 1), None, (HoldPeriod(D(2021, 1, 1), D(2021, 6, 1)),)),
     D(2020, 1, 1), LAST_VISIT, False),
    ("hold added to the 28th birthday",
     RetentionFacts((D(2010, 5, 1),), D(2005, 3, 4), None, (HoldPeriod(D(2011, 1, 1), D(2011, 1, 11)),)),
     D(2033, 3, 14), BIRTHDAY_28, False),
    ("29 February visit: 20 years later is a leap year",
     RetentionFacts((D(2012, 2, 29),), D(1970, 1, 1)), D(2032, 2, 29), LAST_VISIT, False),
    ("29 February birth: 28th birthday in a leap year",
     RetentionFacts((D(2010, 1, 1),), D(2004, 2, 29)), D(2032, 2, 29), BIRTHDAY_28, False),
    ("29 February death: 10 years later is 1 March",
     RetentionFacts((D(2010, 1, 1),), D(1970, 1, 1), D(2016, 2, 29)), D(2026, 3, 1), DEATH, False),
]


@pytest.mark.parametrize("facts, keep_until, basis, needs_review", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_table(facts, keep_until, basis, needs_review):
    decision = decide(facts, TODAY)
    assert (decision.keep_until, decision.basis, decision.needs_review) == (keep_until, basis, needs_review)


def test_sentence_a_manager_reads():
    decision = decide(RetentionFacts((D(2012, 9, 15),), D(1970, 1, 1)), TODAY)
    assert decision.explanation == "conservé jusqu'au 15/09/2032 : 20 ans après le dernier passage du 15/09/2012"


@pytest.mark.parametrize("facts, words", [
    (RetentionFacts((D(2010, 5, 1),), D(2005, 3, 4)), "28e anniversaire"),
    (RetentionFacts((D(2012, 9, 15),), D(1950, 1, 1), D(2015, 1, 10)), "après le décès du 10/01/2015"),
    (RetentionFacts((D(2000, 1, 1),), None), "date de naissance inconnue"),
    (RetentionFacts((D(2000, 1, 1),), D(1950, 1, 1), None, (HoldPeriod(D(2010, 1, 1), D(2010, 4, 11)),)),
     "prolongé de 100 jours"),
    (RetentionFacts((D(2000, 1, 1),), D(1950, 1, 1), None, (HoldPeriod(D(2025, 1, 1)),)), "séquestre en cours"),
])
def test_sentence_says_why(facts, words):
    assert words in decide(facts, TODAY).explanation


@pytest.mark.parametrize("last_visit, tier", [
    (D(2021, 11, 29), "active"),  # 5 years minus a day
    (D(2021, 11, 28), "archive"),  # 5 years to the day
    (D(2001, 1, 1), "archive"),
])
def test_tier_after_five_years(last_visit, tier):
    assert decide(RetentionFacts((last_visit,), D(1970, 1, 1)), TODAY).tier == tier


@pytest.mark.parametrize("facts, purgeable", [
    (RetentionFacts((D(2000, 1, 1),), D(1950, 1, 1)), True),
    (RetentionFacts((D(2006, 11, 28),), D(1950, 1, 1)), False),  # keep_until is today: kept through today
    (RetentionFacts((D(2006, 11, 27),), D(1950, 1, 1)), True),
    (RetentionFacts((D(2000, 1, 1),), None), False),  # review first
    (RetentionFacts((D(2000, 1, 1),), D(1950, 1, 1), None, (HoldPeriod(D(2025, 1, 1)),)), False),  # on hold
    (RetentionFacts((), D(1950, 1, 1)), False),
])
def test_purgeable(facts, purgeable):
    assert decide(facts, TODAY).purgeable(TODAY) is purgeable


def test_an_active_hold_is_reported():
    decision = decide(RetentionFacts((D(2000, 1, 1),), D(1950, 1, 1), None, (HoldPeriod(D(2025, 1, 1)),)), TODAY)
    assert decision.on_hold and decision.keep_until == D(2020, 1, 1)


def test_add_years_29_february():
    assert add_years(D(2004, 2, 29), 1) == D(2005, 3, 1)
    assert add_years(D(2004, 2, 29), 4) == D(2008, 2, 29)


# -- invariants ---------------------------------------------------------------------------------

dates = st.dates(min_value=D(1900, 1, 1), max_value=D(2100, 12, 31))


@st.composite
def holds(draw):
    start = draw(dates)
    released = draw(st.booleans())
    end = start + timedelta(days=draw(st.integers(0, 3000))) if released else None
    return HoldPeriod(start, end)


facts_strategy = st.builds(
    RetentionFacts,
    visit_dates=st.lists(dates, min_size=1, max_size=5).map(tuple),
    birth_date=st.none() | dates,
    death_date=st.none() | dates,
    holds=st.lists(holds(), max_size=3).map(tuple),
)


@given(facts_strategy, dates)
def test_never_before_20_years_after_the_last_visit_unless_death(facts, today):
    d = decide(facts, today)
    if d.basis != DEATH:
        assert d.keep_until >= add_years(max(facts.visit_dates), 20)


@given(facts_strategy, dates)
def test_never_before_the_28th_birthday_unless_death(facts, today):
    d = decide(facts, today)
    if d.basis != DEATH and facts.birth_date is not None:
        assert d.keep_until >= add_years(facts.birth_date, 28)


@given(facts_strategy, holds(), dates)
def test_a_hold_never_shortens_anything(facts, hold, today):
    before = decide(facts, today)
    after = decide(RetentionFacts(facts.visit_dates, facts.birth_date, facts.death_date, facts.holds + (hold,)), today)
    assert after.keep_until >= before.keep_until
    assert not (after.purgeable(today) and not before.purgeable(today))


@given(facts_strategy, dates, dates)
def test_a_new_visit_never_shortens_unless_death(facts, visit, today):
    # Without holds: held time before a new visit is consumed by the restart (see the table), by choice.
    facts = RetentionFacts(facts.visit_dates, facts.birth_date, facts.death_date, ())
    before = decide(facts, today)
    after = decide(RetentionFacts(facts.visit_dates + (visit,), facts.birth_date, facts.death_date, ()), today)
    if DEATH not in (before.basis, after.basis):
        assert after.keep_until >= before.keep_until


@given(facts_strategy, dates)
def test_never_purgeable_without_birth_date_unless_death(facts, today):
    d = decide(RetentionFacts(facts.visit_dates, None, facts.death_date, facts.holds), today)
    if d.basis != DEATH:
        assert not d.purgeable(today)
