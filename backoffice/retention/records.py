"""Deaths and legal holds: the facts a manager records, each checked against the rule first.

Functions take the caller's ``Session``, flush and never commit (the page's or the API's request
commits; its error handler rolls back on a :class:`~backoffice.retention.errors.RetentionError`).
"""

from __future__ import annotations

from datetime import date, datetime, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from archive_core.api import ArchiveFacade, decide
from archive_core.values import parse_da
from backoffice.retention.decisions import PatientRetention, facts_of, iso, patient_retention, require_reason
from backoffice.retention.errors import RetentionError
from backoffice.retention.models import DeathRecord, LegalHold


def record_death(session: Session, facade: ArchiveFacade, patient_id: str, death_date: date, *, actor: str,
                 today: date, confirm_shortening: bool = False) -> PatientRetention:
    """Record or correct a death. Impossible dates are refused; one that ends retention sooner needs
    *confirm_shortening* (a second, explicit confirmation: the record becomes destructible earlier)."""
    patient = patient_retention(session, facade, patient_id, today=today)
    if death_date > today:
        raise RetentionError("death_in_future", death=death_date, today=today)
    birth = parse_da(patient.record.birth_date)
    if birth is not None and death_date < birth:
        raise RetentionError("death_before_birth", death=death_date, birth=birth)
    # A visit after death is impossible (chosen: refused, not confirmed): either the date is wrong or
    # the study belongs to someone else and must be moved first. Outside priors are not visits.
    last_visit = patient.decision.last_visit
    if last_visit is not None and death_date < last_visit:
        raise RetentionError("death_before_last_visit", death=death_date, visit=last_visit)
    after = decide(facts_of(patient.record, death_date, list(patient.holds)), today)
    before = patient.decision
    shortens = after.keep_until is not None and (before.keep_until is None or after.keep_until < before.keep_until)
    if shortens and not confirm_shortening:
        raise RetentionError("shortening_needs_confirmation", before=before.keep_until, after=after.keep_until)
    issuer = patient.record.issuer_of_patient_id
    row = session.scalar(
        select(DeathRecord).where(DeathRecord.patient_id == patient_id, DeathRecord.issuer_of_patient_id == issuer)
    )
    previous = row.death_date.isoformat() if row else None
    if row is None:
        row = DeathRecord(patient_id=patient_id, issuer_of_patient_id=issuer, death_date=death_date, recorded_by=actor)
        session.add(row)
    else:
        row.death_date, row.recorded_by, row.recorded_at = death_date, actor, datetime.now(timezone.utc)
    session.flush()
    facade.audit(session, "death.recorded", actor=actor, patient_id=patient_id,
                 detail={"death_date": death_date.isoformat(), "previous": previous,
                         "keep_until_before": iso(before.keep_until),
                         "keep_until_after": iso(after.keep_until),
                         "shortening_confirmed": shortens})
    return patient_retention(session, facade, patient_id, today=today)


def place_hold(session: Session, facade: ArchiveFacade, patient_id: str, reason: str, *, actor: str,
               today: date, now: datetime | None = None) -> LegalHold:
    require_reason(reason)
    patient = patient_retention(session, facade, patient_id, today=today)
    hold = LegalHold(patient_id=patient_id, issuer_of_patient_id=patient.record.issuer_of_patient_id,
                     reason=reason.strip(), placed_by=actor, placed_at=now or datetime.now(timezone.utc))
    session.add(hold)
    session.flush()
    facade.audit(session, "hold.placed", actor=actor, patient_id=patient_id, detail={"hold_id": hold.id, "reason": hold.reason})
    return hold


def release_hold(session: Session, facade: ArchiveFacade, hold_id: int, *, actor: str,
                 now: datetime | None = None) -> LegalHold:
    hold = session.get(LegalHold, hold_id)
    if hold is None:
        raise RetentionError("hold_not_found")
    if hold.released_at is not None:
        raise RetentionError("hold_already_released")
    hold.released_at, hold.released_by = now or datetime.now(timezone.utc), actor
    session.flush()
    facade.audit(session, "hold.released", actor=actor, patient_id=hold.patient_id, detail={"hold_id": hold.id})
    return hold


def active_holds(session: Session, *, after_id: int = 0, limit: int | None = None) -> list[LegalHold]:
    """Holds not yet released, oldest first (ids grow with placement: *after_id* pages through them)."""
    query = select(LegalHold).where(LegalHold.released_at.is_(None), LegalHold.id > after_id).order_by(LegalHold.id)
    return list(session.scalars(query if limit is None else query.limit(limit)))

