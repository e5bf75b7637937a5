"""The medical-record retention rule (CSP R1112-7 and the CNIL tiers), as one pure function.

No I/O: the caller gathers the visit dates, the birth date, the recorded death and the legal
holds of one patient and gets back the date until which the record is kept, why (a code and a
French sentence a manager understands), which storage tier it belongs in today, and whether it
may be proposed for destruction. See docs/retention.md for the rules and the choices made.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Iterable

RETENTION_YEARS = 20
MAJORITY_BIRTHDAY = 28
DEATH_YEARS = 10
ACTIVE_TIER_YEARS = 5

# Basis codes (the API's "basis").
LAST_VISIT = "last_visit_20y"
BIRTHDAY_28 = "birthday_28"
DEATH = "death_10y"
NO_VISIT = "no_visit"


def add_years(d: date, years: int) -> date:
    """*d* moved by whole years; 29 February lands on 1 March in a common year.

    The choice keeps a record one day longer than the Code de procédure civile's reading
    (art. 641: the last day of the month, 28 February) would: retention errs on keeping.
    """
    try:
        return d.replace(year=d.year + years)
    except ValueError:  # 29 February into a common year
        return date(d.year + years, 3, 1)


@dataclass(frozen=True)
class HoldPeriod:
    """A legal hold: from *start* to *end* (None while it still holds)."""

    start: date
    end: date | None = None


@dataclass(frozen=True)
class RetentionFacts:
    """What the rule needs about one patient."""

    visit_dates: tuple[date, ...] = ()  # study dates of the practice's own studies (not outside priors)
    birth_date: date | None = None
    death_date: date | None = None
    holds: tuple[HoldPeriod, ...] = ()


@dataclass(frozen=True)
class RetentionDecision:
    keep_until: date | None  # kept through this day; None: cannot be computed (no visit)
    basis: str
    explanation: str
    tier: str  # "active" | "archive"
    on_hold: bool
    needs_review: bool  # never proposed for destruction while true
    held_days: int  # days added by released holds
    last_visit: date | None

    def purgeable(self, today: date) -> bool:
        """Whether the record may be *proposed* for destruction today (a manager still decides)."""
        return (
            self.keep_until is not None
            and today > self.keep_until
            and not self.on_hold
            and not self.needs_review
        )

    def due_within(self, today: date, days: int) -> bool:
        return self.keep_until is not None and today <= self.keep_until <= today + timedelta(days=days)


def fr(d: date) -> str:
    return d.strftime("%d/%m/%Y")


def _held_days(holds: Iterable[HoldPeriod], clock_start: date, deadline: date) -> tuple[int, date]:
    """Released holds suspend the clock: each day held while it ran is added at the end.

    Overlapping holds are merged (a day held twice is added once); hold time before the last
    visit does not count (a new visit restarts the clock).
    """
    released = sorted((h.start, h.end) for h in holds if h.end is not None and h.end > h.start)
    added = 0
    cursor = clock_start  # nothing before this is counted again
    for start, end in released:
        start = max(start, cursor)
        if end <= start:
            continue
        if start > deadline:  # the clock had already run out when this hold began
            break
        span = (end - start).days
        added += span
        deadline += timedelta(days=span)
        cursor = end
    return added, deadline


def decide(facts: RetentionFacts, today: date) -> RetentionDecision:
    """Today's retention answer for one patient's record (kept as a whole)."""
    on_hold = any(h.end is None or h.end > today for h in facts.holds if h.start <= today)
    if not facts.visit_dates:
        text = "aucun passage au cabinet (examens extérieurs seulement) : à vérifier, jamais proposé à la destruction"
        return RetentionDecision(None, NO_VISIT, text + _hold_note(on_hold), "active", on_hold, True, 0, None)

    last = max(facts.visit_dates)
    keep = add_years(last, RETENTION_YEARS)
    basis = LAST_VISIT
    reason = f"{RETENTION_YEARS} ans après le dernier passage du {fr(last)}"
    needs_review = False
    death = facts.death_date
    if death is not None and death < add_years(last, DEATH_YEARS):
        # "In all cases": the death rule replaces the other two, even when it ends sooner.
        keep = add_years(death, DEATH_YEARS)
        basis = DEATH
        reason = (
            f"{DEATH_YEARS} ans après le décès du {fr(death)}, survenu moins de {DEATH_YEARS} ans "
            f"après le dernier passage du {fr(last)}"
        )
    elif facts.birth_date is None:
        needs_review = True
    else:
        birthday = add_years(facts.birth_date, MAJORITY_BIRTHDAY)
        if birthday > keep:
            keep = birthday
            basis = BIRTHDAY_28
            reason = (
                f"jusqu'au {MAJORITY_BIRTHDAY}e anniversaire (naissance le {fr(facts.birth_date)}), "
                f"plus tard que {RETENTION_YEARS} ans après le dernier passage du {fr(last)}"
            )

    held, keep = _held_days(facts.holds, last, keep)
    text = f"conservé jusqu'au {fr(keep)} : {reason}"
    if held:
        text += f", prolongé de {held} jours de séquestre levé"
    if needs_review:
        text += " ; date de naissance inconnue : la prolongation jusqu'au 28e anniversaire ne peut être calculée, à vérifier, jamais proposé à la destruction"
    text += _hold_note(on_hold)
    tier = "archive" if today >= add_years(last, ACTIVE_TIER_YEARS) else "active"
    return RetentionDecision(keep, basis, text, tier, on_hold, needs_review, held, last)


def _hold_note(on_hold: bool) -> str:
    return " ; séquestre en cours : rien ne peut être détruit" if on_hold else ""


