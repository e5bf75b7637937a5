"""The manager's retention lists as indexed queries over stored answers.

The retention rule is :func:`archive_core.retention.decide`, and only it. What it answers without
looking at "today" (kept until, basis, needs review, last visit) is stored per patient in
``retention_answer``; the database queues a patient in ``retention_stale`` whenever one of its facts
is written (a study arrives, moves, is corrected or tombstoned; an image arrives, is tombstoned or
changes tier; the patient's birth date, name or identity changes; a hold is placed or lifted; a death
is recorded), whichever process writes it: triggers installed by migrations 1300_retention_answer and
1320_retention_moves. :func:`refresh` decides again the queued
patients and is called before every list is read, so a list is never older than the facts.

What does depend on today stays computed by ``decide`` at read time: whether a hold holds today
(only patients who have a hold row are asked: few) and, for the rows shown, the whole answer.
The sweep (its preview and the batch it proposes) takes its candidates here too, and decides them again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import delete, false, func, insert, select, text
from sqlalchemy.orm import Session

from archive_core.api import ACTIVE_TIER_YEARS, ArchiveFacade, RetentionDecision, add_years
from archive_core.values import LOCK_RETENTION_ANSWERS
from backoffice.retention.models import LegalHold, RetentionAnswer, RetentionStale
from backoffice.retention.decisions import PatientRetention, retention_of

# Any day does: the stored columns do not depend on it (tests/unit/test_retention_stored.py proves it).
_ANY_DAY = date(2000, 1, 1)
CHUNK = 2000


def answer_row(patient_pk: int, patient_id: str, issuer: str, patient_name: str | None,
               decision: RetentionDecision) -> dict:
    """The stored columns of one patient's answer (the parts of *decision* that do not depend on today)."""
    return {"patient_pk": patient_pk, "patient_id": patient_id, "issuer_of_patient_id": issuer,
            "patient_name": patient_name or "", "keep_until": decision.keep_until,
            "sort_until": decision.keep_until or date.max, "basis": decision.basis,
            "needs_review": decision.needs_review, "last_visit": decision.last_visit}


def refresh(session: Session, facade: ArchiveFacade) -> int:
    """Decide again every queued patient and store the answers; return how many were queued.

    Only the queue entries read here are removed: a fact written meanwhile keeps its entry for the
    next refresh. Flushes; the caller commits.
    """
    if session.get_bind().dialect.name == "postgresql":
        # One refresh at a time (two pages loading at once would store the same answer twice); SQLite's
        # write lock, taken by the caller's write session, does the same there.
        session.execute(text(f"SELECT pg_advisory_xact_lock({LOCK_RETENTION_ANSWERS})"))
    queued = session.execute(select(RetentionStale.id, RetentionStale.patient_pk).order_by(RetentionStale.id)).all()
    if not queued:
        return 0
    pks = sorted({pk for _id, pk in queued})
    for start in range(0, len(pks), CHUNK):
        chunk = pks[start:start + CHUNK]
        answers = retention_of(session, facade, today=_ANY_DAY, patient_pks=chunk)
        session.execute(delete(RetentionAnswer).where(RetentionAnswer.patient_pk.in_(chunk)))
        if answers:  # a tombstoned or merged patient has no answer any more
            session.execute(insert(RetentionAnswer), [
                {**answer_row(p.record.patient_pk, p.record.patient_id, p.record.issuer_of_patient_id,
                              p.record.patient_name, p.decision), "active_images": p.record.instances_active > 0}
                for p in answers])
    ids = [i for i, _pk in queued]
    for start in range(0, len(ids), CHUNK):
        session.execute(delete(RetentionStale).where(RetentionStale.id.in_(ids[start:start + CHUNK])))
    session.flush()
    return len(pks)


def refresh_now(facade: ArchiveFacade) -> int:
    """:func:`refresh` in a write transaction of its own (a page about to read the lists)."""
    with facade.new_session() as s:
        if s.scalar(select(RetentionStale.id).limit(1)) is None:  # the usual case: nothing changed
            return 0
    with facade.new_session(write=True) as s:
        n = refresh(s, facade)
        s.commit()
        return n


def held_today(session: Session, facade: ArchiveFacade, today: date) -> list[int]:
    """Row ids of the patients a hold holds today, by the rule (only patients with a hold row are asked)."""
    keys = set(session.execute(select(LegalHold.patient_id, LegalHold.issuer_of_patient_id).distinct()).all())
    if not keys:
        return []
    ids = sorted({patient_id for patient_id, _issuer in keys})
    pks = [pk for pk, patient_id, issuer in session.execute(
        select(RetentionAnswer.patient_pk, RetentionAnswer.patient_id, RetentionAnswer.issuer_of_patient_id)
        .where(RetentionAnswer.patient_id.in_(ids))) if (patient_id, issuer) in keys]
    if not pks:
        return []
    return sorted(p.record.patient_pk for p in retention_of(session, facade, today=today, patient_pks=pks)
                  if p.decision.on_hold)


KINDS = ("due", "overdue", "hold", "review", "all")


def _where(kind: str, today: date, days: int, held: list[int]):
    """The stored-answer condition of one list; the same tests as RetentionDecision.due_within/purgeable."""
    a = RetentionAnswer
    not_held = a.patient_pk.not_in(held) if held else None
    if kind == "due":
        conds = [a.sort_until >= today, a.sort_until <= today + timedelta(days=days)]
    elif kind == "overdue":
        conds = [a.sort_until < today, a.needs_review.is_(False)]
    elif kind == "hold":
        return [a.patient_pk.in_(held)] if held else [false()]
    elif kind == "review":
        return [a.needs_review.is_(True)]
    else:
        return []
    return conds + ([not_held] if not_held is not None else [])


@dataclass(frozen=True)
class Listing:
    rows: list[PatientRetention]  # today's whole answer of each row shown, in list order
    total: int


def count(session: Session, kind: str, today: date, days: int, held: list[int]) -> int:
    return session.scalar(select(func.count()).select_from(RetentionAnswer).where(*_where(kind, today, days, held)))


def listing(session: Session, facade: ArchiveFacade, kind: str, *, today: date, days: int = 365,
            offset: int = 0, limit: int = 100, held: list[int] | None = None) -> Listing:
    """One page of a list, in the order a manager works through it: soonest date first, then name."""
    if held is None:
        held = held_today(session, facade, today)
    a = RetentionAnswer
    pks = list(session.scalars(
        select(a.patient_pk).where(*_where(kind, today, days, held))
        .order_by(a.sort_until, a.patient_name, a.patient_pk)
        .offset(offset).limit(limit)))
    found = {p.record.patient_pk: p for p in retention_of(session, facade, today=today, patient_pks=pks)} if pks else {}
    return Listing([found[pk] for pk in pks if pk in found], count(session, kind, today, days, held))


# -- the sweep's candidates: a superset of what ``decide`` proposes or moves; the caller decides them again --


def propose_candidates(session: Session, *, today: date) -> list[int]:
    """Row ids, in order, of every stored answer whose date has passed and that is not to review (holds
    and open batches are left to the caller: ``decide`` and the batch)."""
    a = RetentionAnswer
    return list(session.scalars(
        select(a.patient_pk).where(a.sort_until < today, a.needs_review.is_(False)).order_by(a.patient_pk)))


def propose_preview(session: Session, *, today: date, left_out: set[int], limit: int) -> tuple[list[int], int]:
    """The first *limit* of :func:`propose_candidates` not in *left_out*, and how many there are in all,
    without reading them all."""
    a = RetentionAnswer
    base = [a.sort_until < today, a.needs_review.is_(False)]
    total = session.scalar(select(func.count()).select_from(a).where(*base)) or 0
    ids = sorted(left_out)
    for start in range(0, len(ids), CHUNK):
        total -= session.scalar(select(func.count()).select_from(a).where(
            *base, a.patient_pk.in_(ids[start:start + CHUNK]))) or 0
    first = session.scalars(select(a.patient_pk).where(*base).order_by(a.patient_pk).limit(limit + len(ids)))
    return [pk for pk in first if pk not in left_out][:limit], total


def move_candidates(session: Session, *, today: date) -> list[int]:
    """Row ids, in order, of the patients whose last visit is five years old or more (the tier is
    "archive" from add_years(last visit, 5) on; one day of margin for 29 February) and who still have
    images in the active tier: one range of ``ix_retention_answer_moves``."""
    a = RetentionAnswer
    bound = add_years(today, -ACTIVE_TIER_YEARS) + timedelta(days=1)
    return list(session.scalars(select(a.patient_pk).where(a.active_images.is_(True), a.last_visit <= bound)
                                .order_by(a.patient_pk)))


def totals(session: Session) -> tuple[int, int]:
    """(visible patients, records to review) from the stored answers (needs review does not depend on today)."""
    a = RetentionAnswer
    return (session.scalar(select(func.count()).select_from(a)) or 0,
            session.scalar(select(func.count()).select_from(a).where(a.needs_review.is_(True))) or 0)


def pks_of(session: Session, keys: set[tuple[str, str]]) -> set[int]:
    """Row ids of the stored answers of the patients (patient ID, issuer) *keys*."""
    a = RetentionAnswer
    ids = sorted({patient_id for patient_id, _issuer in keys})
    out: set[int] = set()
    for start in range(0, len(ids), CHUNK):
        out.update(pk for pk, patient_id, issuer in session.execute(
            select(a.patient_pk, a.patient_id, a.issuer_of_patient_id).where(a.patient_id.in_(ids[start:start + CHUNK])))
            if (patient_id, issuer) in keys)
    return out
