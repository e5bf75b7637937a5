"""Today's retention answer per patient: the facts the rule reads, and ``decide`` on them.

The one rule is :func:`archive_core.api.decide`; this module gathers a patient's facts (visits, birth,
death, holds) and asks it. Functions taking a ``Session`` never commit (the caller does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from archive_core.api import ArchiveFacade, HoldPeriod, PatientRecord, RetentionDecision, RetentionFacts, decide
from archive_core.values import paris_day, parse_da, utcnow
from backoffice.retention.errors import RetentionError
from backoffice.retention.models import DeathRecord, LegalHold


def iso(value: date | datetime | None) -> str | None:
    """A date or instant as ISO 8601 text for the API and the audit trail; None stays None."""
    return value.isoformat() if value else None


def require_reason(reason: str | None) -> None:
    # Every decision on a record (hold, destruction, correction) carries its reason into the audit trail.
    if not reason or not reason.strip():
        raise RetentionError("reason_required")


def today_paris(now: datetime | None = None) -> date:
    return paris_day(now or utcnow())



@dataclass(frozen=True)
class PatientRetention:
    record: PatientRecord
    decision: RetentionDecision
    death_date: date | None
    holds: tuple[LegalHold, ...] = field(default=())


def facts_of(record: PatientRecord, death: date | None, holds: list[LegalHold]) -> RetentionFacts:
    visits = tuple(d for d in (parse_da(v) for v in record.visit_dates) if d is not None)
    return RetentionFacts(
        visit_dates=visits,
        birth_date=parse_da(record.birth_date),
        death_date=death,
        holds=tuple(
            HoldPeriod(paris_day(h.placed_at), paris_day(h.released_at) if h.released_at else None) for h in holds
        ),
    )


def retention_of(session: Session, facade: ArchiveFacade, *, today: date,
                 patient_id: str | None = None, patient_pks: Iterable[int] | None = None) -> list[PatientRetention]:
    """Today's answer for every visible patient (or those with *patient_id*, or of row ids *patient_pks*)."""
    records = facade.patient_records(session, patient_id=patient_id, patient_pks=patient_pks)
    deaths: dict[tuple[str, str], date] = {}
    holds: dict[tuple[str, str], list[LegalHold]] = {}
    if patient_pks is not None:  # only the records asked for, by their patient IDs (in bounded groups)
        ids = sorted({r.patient_id for r in records})
        groups = [ids[i:i + 2000] for i in range(0, len(ids), 2000)]
    else:
        groups = [None]
    for group in groups:
        deaths_q = select(DeathRecord)
        holds_q = select(LegalHold).order_by(LegalHold.id)
        if patient_id is not None:
            deaths_q = deaths_q.where(DeathRecord.patient_id == patient_id)
            holds_q = holds_q.where(LegalHold.patient_id == patient_id)
        if group is not None:
            deaths_q = deaths_q.where(DeathRecord.patient_id.in_(group))
            holds_q = holds_q.where(LegalHold.patient_id.in_(group))
        deaths.update({(d.patient_id, d.issuer_of_patient_id): d.death_date for d in session.scalars(deaths_q)})
        for h in session.scalars(holds_q):
            holds.setdefault((h.patient_id, h.issuer_of_patient_id), []).append(h)
    out = []
    for r in records:
        key = (r.patient_id, r.issuer_of_patient_id)
        death, patient_holds = deaths.get(key), holds.get(key, [])
        out.append(PatientRetention(r, decide(facts_of(r, death, patient_holds), today), death, tuple(patient_holds)))
    return out


def patient_retention(session: Session, facade: ArchiveFacade, patient_id: str, *, today: date,
                      issuer: str | None = None) -> PatientRetention:
    found = [p for p in retention_of(session, facade, today=today, patient_id=patient_id)
             if issuer is None or p.record.issuer_of_patient_id == issuer]
    if not found:
        raise RetentionError("patient_not_found")
    if len(found) > 1:
        raise RetentionError("ambiguous_patient")
    return found[0]


def as_json(p: PatientRetention) -> dict:
    d = p.decision
    return {
        "patient_id": p.record.patient_id,
        "keep_until": iso(d.keep_until),
        "basis": d.basis,
        "explanation": d.explanation,
        "tier": d.tier,
        "on_hold": d.on_hold,
        "needs_review": d.needs_review,
        "last_visit": iso(d.last_visit),
        "death_date": iso(p.death_date),
        "holds": [hold_json(h) for h in p.holds if h.released_at is None],
    }


def columns_json(row, names: str, *, dates: str = "") -> dict:
    """The attributes *names* (space-separated) of *row* as the API shows them; those in *dates* as ISO text."""
    instants = set(dates.split())
    return {n: iso(getattr(row, n)) if n in instants else getattr(row, n) for n in names.split()}


def hold_json(h: LegalHold) -> dict:
    return columns_json(h, "id patient_id reason placed_by placed_at released_by released_at",
                        dates="placed_at released_at")
