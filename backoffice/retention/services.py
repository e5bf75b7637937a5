"""Retention services: today's answer per patient, deaths, holds, purge batches and corrections.

Functions taking a ``Session`` first flush and never commit (the edge commits, and rolls back on a
:class:`RetentionError`). The two that run a whole process — :func:`run_purge` and :func:`sweep` —
own their transactions, like a CLI command: a purge must commit its tombstones before it deletes a
file, and a batch sent back for a new decision stays sent back.

Errors carry a key and data (backoffice/retention/errors.py turns them into a status and a sentence).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from archive_core.api import (
    ArchiveError,
    ArchiveFacade,
    HoldPeriod,
    NotFound,
    PatientRecord,
    RetentionDecision,
    RetentionFacts,
    decide,
)
from archive_core.values import LOCK_RETENTION_SWEEP, paris_day, parse_da, utcnow
from backoffice.retention.errors import RetentionError
from backoffice.retention.models import OPEN_STATUSES, DeathRecord, LegalHold, PurgeBatch, PurgeItem

log = logging.getLogger(__name__)
# The requester of the batches the sweep proposes: not a person (docs/retention.md, four eyes).
SCHEDULER = "scheduler"


def _require_reason(reason: str | None) -> None:
    # Every decision on a record (hold, destruction, correction) carries its reason into the audit trail.
    if not reason or not reason.strip():
        raise RetentionError("reason_required")


def today_paris(now: datetime | None = None) -> date:
    return paris_day(now or utcnow())


# -- today's answer --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatientRetention:
    record: PatientRecord
    decision: RetentionDecision
    death_date: date | None
    holds: tuple[LegalHold, ...] = field(default=())


def _facts(record: PatientRecord, death: date | None, holds: list[LegalHold]) -> RetentionFacts:
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
        out.append(PatientRetention(r, decide(_facts(r, death, patient_holds), today), death, tuple(patient_holds)))
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
        "keep_until": d.keep_until.isoformat() if d.keep_until else None,
        "basis": d.basis,
        "explanation": d.explanation,
        "tier": d.tier,
        "on_hold": d.on_hold,
        "needs_review": d.needs_review,
        "last_visit": d.last_visit.isoformat() if d.last_visit else None,
        "death_date": p.death_date.isoformat() if p.death_date else None,
        "holds": [hold_json(h) for h in p.holds if h.released_at is None],
    }


def hold_json(h: LegalHold) -> dict:
    return {
        "id": h.id,
        "patient_id": h.patient_id,
        "reason": h.reason,
        "placed_by": h.placed_by,
        "placed_at": h.placed_at.isoformat(),
        "released_by": h.released_by,
        "released_at": h.released_at.isoformat() if h.released_at else None,
    }


# -- deaths and holds --------------------------------------------------------------------------------


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
    after = decide(_facts(patient.record, death_date, list(patient.holds)), today)
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
                         "keep_until_before": before.keep_until.isoformat() if before.keep_until else None,
                         "keep_until_after": after.keep_until.isoformat() if after.keep_until else None,
                         "shortening_confirmed": shortens})
    return patient_retention(session, facade, patient_id, today=today)


def place_hold(session: Session, facade: ArchiveFacade, patient_id: str, reason: str, *, actor: str,
               today: date, now: datetime | None = None) -> LegalHold:
    _require_reason(reason)
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


# -- purge batches ---------------------------------------------------------------------------------------


def _in_open_batch(session: Session) -> tuple[set[tuple[str, str]], set[str]]:
    rows = session.execute(
        select(PurgeItem.patient_id, PurgeItem.issuer_of_patient_id, PurgeItem.study_uid)
        .join(PurgeBatch, PurgeItem.batch_pk == PurgeBatch.id)
        .where(PurgeBatch.status.in_(OPEN_STATUSES))
    ).all()
    return {(p, i) for p, i, s in rows if s is None}, {s for _p, _i, s in rows if s}


def propose_batch(session: Session, facade: ArchiveFacade, *, today: date, actor: str = SCHEDULER,
                  actor_kind: str = "system") -> PurgeBatch | None:
    """One proposed batch of the patients whose date has passed, not on hold and not already proposed.

    The stored answers (backoffice/retention/answers.py) are refreshed, then name the candidates; each
    candidate is decided again by ``decide`` on today's facts, which alone says who is proposed.
    """
    if session.get_bind().dialect.name == "postgresql":
        # One proposer at a time (a manual sweep while the scheduler runs): no patient proposed twice.
        session.execute(text(f"SELECT pg_advisory_xact_lock({LOCK_RETENTION_SWEEP})"))
    from backoffice.retention import answers  # answers builds on this module

    answers.refresh(session, facade)  # the stored answers are as current as the facts
    taken, _studies = _in_open_batch(session)
    candidates = answers.propose_candidates(session, today=today)
    due = [p for p in retention_of(session, facade, today=today, patient_pks=candidates)
           if p.decision.purgeable(today) and (p.record.patient_id, p.record.issuer_of_patient_id) not in taken]
    if not due:
        return None
    batch = PurgeBatch(kind="retention", status="proposed", proposed_by=actor,
                       proposal_note=f"échéances dépassées au {today.strftime('%d/%m/%Y')}")
    session.add(batch)
    for p in due:
        batch.items.append(PurgeItem(patient_id=p.record.patient_id, issuer_of_patient_id=p.record.issuer_of_patient_id,
                                     basis=p.decision.basis, keep_until=p.decision.keep_until,
                                     explanation=p.decision.explanation))
    session.flush()
    facade.audit(session, "purge.proposed", actor=actor, actor_kind=actor_kind,
                 detail={"batch_id": batch.id, "patients": len(due)})
    return batch


def request_study_deletion(session: Session, facade: ArchiveFacade, study_uid: str, reason: str, *,
                           actor: str) -> PurgeBatch:
    """A study sent by mistake: proposed for destruction like any purge (another manager approves)."""
    _require_reason(reason)
    owner = facade.study_owner(session, study_uid)
    if owner is None:
        raise RetentionError("study_not_found")
    _patients, studies = _in_open_batch(session)
    if study_uid in studies:
        raise RetentionError("already_requested")
    batch = PurgeBatch(kind="correction", status="proposed", proposed_by=actor, proposal_note=reason.strip())
    batch.items.append(PurgeItem(patient_id=owner[0], issuer_of_patient_id=owner[1], study_uid=study_uid,
                                 basis="correction", explanation=f"examen envoyé par erreur : {reason.strip()}"))
    session.add(batch)
    session.flush()
    facade.audit(session, "correction.deletion_requested", actor=actor, patient_id=owner[0], study_uid=study_uid,
                 detail={"batch_id": batch.id, "reason": reason.strip()})
    return batch


def get_batch(session: Session, batch_id: int, *, lock: bool = False) -> PurgeBatch:
    # The row lock (PostgreSQL; SQLite's write lock is taken already) makes one decision or execution at a time.
    batch = session.get(PurgeBatch, batch_id, with_for_update=lock or None)
    if batch is None:
        raise RetentionError("batch_not_found")
    return batch


# -- what an approval looks at, and what execution compares -------------------------------------------


def _study_json(st) -> dict:
    return {"study_uid": st.study_uid, "study_date": st.study_date, "modalities": list(st.modalities),
            "description": st.description}


def _item_facts(session: Session, facade: ArchiveFacade, item: PurgeItem, today: date) -> dict:
    """Today's facts about one item: its owner, who the owner is, holds, retention and the exams it names.

    Approval records them (``PurgeItem.approved_facts``); execution computes them again and destroys
    nothing if any differs. ``destroyable`` says whether the item may be destroyed today.
    """
    if item.study_uid is not None:
        owner = facade.study_owner(session, item.study_uid)
        studies = facade.visible_studies(session, study_uids=(item.study_uid,)) if owner else []
    else:
        owner = (item.patient_id, item.issuer_of_patient_id)
        studies = facade.visible_studies(session, patient=owner)
    answer = None
    if owner is not None:
        found = [p for p in retention_of(session, facade, today=today, patient_id=owner[0])
                 if p.record.issuer_of_patient_id == owner[1]]
        answer = found[0] if found else None
    if answer is None:
        return {"owner": None, "destroyable": False}
    first = studies[0] if studies else None
    facts = {
        "owner": list(owner),
        "name": first.patient_name if first else None,
        "birth_date": answer.record.birth_date,
        "on_hold": answer.decision.on_hold,
        "studies": [_study_json(st) for st in studies],
    }
    if item.study_uid is None:  # a whole record: its retention answer is what was approved
        d = answer.decision
        facts.update(keep_until=d.keep_until.isoformat() if d.keep_until else None, basis=d.basis,
                     needs_review=d.needs_review, purgeable=d.purgeable(today))
        facts["destroyable"] = d.purgeable(today) and bool(studies)
    else:
        facts["destroyable"] = bool(studies) and not answer.decision.on_hold
    return facts


def _changed(approved: dict | None, current: dict) -> list[str]:
    if approved is None:  # approved before approvals recorded their facts: decide again
        return ["approval"]
    return sorted(k for k in set(approved) | set(current) if k != "destroyable" and approved.get(k) != current.get(k))


def item_view(session: Session, facade: ArchiveFacade, item: PurgeItem, today: date) -> dict:
    """What the batch page shows for an item: names, birth dates and exams (today's, or the approved ones
    once destroyed), and what changed since approval."""
    if item.batch.status in ("tombstoned", "executed"):
        facts = json.loads(item.approved_facts) if item.approved_facts else {}
        return {"facts": facts, "changed": [], "destroyable": True}
    facts = _item_facts(session, facade, item, today)
    approved = json.loads(item.approved_facts) if item.approved_facts else None
    changed = _changed(approved, facts) if item.batch.status == "approved" else []
    return {"facts": facts, "changed": changed, "destroyable": facts.get("destroyable", False)}


def _is_scheduler(login: str) -> bool:
    return login == SCHEDULER


def decide_batch(session: Session, facade: ArchiveFacade, batch_id: int, *, approve: bool, reason: str,
                 actor: str, today: date) -> PurgeBatch:
    """A manager's decision on a proposed batch (the approver, the reason and today's facts are recorded).

    Four eyes: the approver is another person than the requester (any manager for the scheduler's
    batches). An approval looks at today's facts: a record no longer destructible is left out
    (``purge.skipped``); a study whose patient is on hold cannot be approved.
    """
    _require_reason(reason)
    batch = get_batch(session, batch_id, lock=True)
    if batch.status != "proposed":
        raise RetentionError("already_decided", batch=batch.id, status=batch.status)
    if approve and actor == batch.proposed_by:
        raise RetentionError("approver_is_requester", login=actor)
    if approve:
        for item in list(batch.items):
            facts = _item_facts(session, facade, item, today)
            if facts["destroyable"]:
                if item.study_uid is not None:  # the approver approves the study under its owner of today
                    item.patient_id, item.issuer_of_patient_id = facts["owner"]
                else:
                    item.keep_until = date.fromisoformat(facts["keep_until"])
                    item.basis = facts["basis"]
                item.approved_facts = json.dumps(facts, sort_keys=True)
                continue
            if item.study_uid is not None:
                if facts["owner"] is None:
                    raise RetentionError("study_not_found")
                raise RetentionError("on_hold")
            facade.audit(session, "purge.skipped", actor=actor, patient_id=item.patient_id,
                         detail={"batch_id": batch.id, "at": "approval"})
            batch.items.remove(item)
            session.delete(item)
        if not batch.items:
            raise RetentionError("nothing_to_destroy")
    batch.status = "approved" if approve else "rejected"
    batch.decided_by, batch.decided_at, batch.decision_reason = actor, datetime.now(timezone.utc), reason.strip()
    session.flush()
    facade.audit(session, "purge.approved" if approve else "purge.rejected", actor=actor,
                 detail={"batch_id": batch.id, "reason": batch.decision_reason, "items": len(batch.items)})
    return batch


def check_executor(batch: PurgeBatch, actor: str) -> None:
    """Four eyes at execution (DESIGN.md): never the requester; for the scheduler's batches, whose
    requester is no person, never the approver either — two people decide every destruction."""
    if actor == batch.proposed_by:
        raise RetentionError("executor_is_requester", login=actor)
    if _is_scheduler(batch.proposed_by) and actor == batch.decided_by:
        raise RetentionError("executor_is_approver", login=actor)


def batch_json(batch: PurgeBatch) -> dict:
    return {
        "id": batch.id,
        "kind": batch.kind,
        "status": batch.status,
        "proposed_by": batch.proposed_by,
        "proposed_at": batch.proposed_at.isoformat(),
        "decided_by": batch.decided_by,
        "decision_reason": batch.decision_reason,
        "executed_by": batch.executed_by,
        "executed_at": batch.executed_at.isoformat() if batch.executed_at else None,
        "instances": batch.instances,
        "bytes_destroyed": batch.bytes_destroyed,
        "certificate_sha256": batch.certificate_sha256,
        "items": [
            {"patient_id": i.patient_id, "study_uid": i.study_uid, "basis": i.basis,
             "keep_until": i.keep_until.isoformat() if i.keep_until else None, "explanation": i.explanation}
            for i in batch.items
        ],
    }


CertificateRenderer = Callable[[PurgeBatch], bytes]


def run_purge(facade: ArchiveFacade, batch_id: int, *, certificates: Path, render: CertificateRenderer,
              actor: str, today: date) -> PurgeBatch:
    """Execute an approved batch: re-check, tombstones + audit in one transaction, then files, then the certificate.

    Refuses (``not_approved``) anything not approved, and an executor who requested the batch (or
    approved the scheduler's). Every item is checked again against today's owner, holds, retention
    and exams: if anything differs from what was approved, nothing is destroyed, the batch goes back
    to ``proposed`` (``purge.returned``, committed) and ``changed_since_approval`` is raised.
    Rerunnable after a crash at any point: a tombstoned batch resumes at the file deletion, which
    only ever deletes files of tombstoned rows.
    """
    with facade.new_session(write=True) as s:
        batch = get_batch(s, batch_id, lock=True)
        if batch.status == "executed":
            return batch
        if batch.status not in ("approved", "tombstoned"):
            raise RetentionError("not_approved")
        if batch.status == "approved":
            check_executor(batch, actor)
            changes = {item.id: _changed(json.loads(item.approved_facts) if item.approved_facts else None,
                                         _item_facts(s, facade, item, today))
                       for item in batch.items}
            changed = sorted({k for keys in changes.values() for k in keys})
            if changed:
                _send_back(s, facade, batch, changes, actor=actor)
                s.commit()
                raise RetentionError("changed_since_approval", batch=batch_id, what=tuple(changed))
            _tombstone(s, facade, batch, actor=actor)
        uids = [u for item in batch.items for st in json.loads(item.manifest) for u in st["sop_instance_uids"]]
        s.commit()
    facade.delete_tombstoned_files(uids)  # a crash here: the next run starts again from this line
    with facade.new_session(write=True) as s:
        batch = get_batch(s, batch_id, lock=True)
        if batch.status == "executed":
            return batch
        pdf = render(batch)
        certificates.mkdir(parents=True, exist_ok=True)
        name = f"certificat-destruction-{batch.id:06d}.pdf"
        tmp = certificates / (name + ".tmp")
        tmp.write_bytes(pdf)
        tmp.replace(certificates / name)
        batch.certificate_name = name
        batch.certificate_sha256 = hashlib.sha256(pdf).hexdigest()
        batch.status, batch.executed_at = "executed", datetime.now(timezone.utc)
        facade.audit(s, "purge.executed", actor=actor, actor_kind="system" if _is_scheduler(actor) else "user",
                     detail={"batch_id": batch.id, "instances": batch.instances, "bytes": batch.bytes_destroyed,
                             "certificate_sha256": batch.certificate_sha256})
        s.commit()
        return batch


def _send_back(s: Session, facade: ArchiveFacade, batch: PurgeBatch, changes: dict[int, list[str]], *,
               actor: str) -> None:
    """approved -> proposed: the approval no longer matches today's facts; a manager decides again."""
    for item in batch.items:
        item.approved_facts = None
    previous = batch.decided_by
    batch.status, batch.decided_by, batch.decided_at, batch.decision_reason = "proposed", None, None, None
    s.flush()
    facade.audit(s, "purge.returned", actor=actor, actor_kind="system" if _is_scheduler(actor) else "user",
                 detail={"batch_id": batch.id, "approved_by": previous,
                         "changed": {str(k): v for k, v in sorted(changes.items()) if v}})


def _tombstone(s: Session, facade: ArchiveFacade, batch: PurgeBatch, *, actor: str) -> None:
    """Every item was just checked against its approval: tombstone each under its (unchanged) owner."""
    now = datetime.now(timezone.utc)
    instances = size = 0
    for item in batch.items:
        if item.study_uid is None:
            result = facade.tombstone_patient(s, item.patient_id, item.issuer_of_patient_id, at=now)
        else:
            result = facade.tombstone_study(s, item.study_uid, at=now)
        item.manifest = json.dumps([
            {"study_uid": st.study_uid, "study_date": st.study_date, "modalities": st.modalities,
             "instances": st.instances, "bytes": st.bytes_total, "checksum_sha256": st.checksum_sha256,
             "sop_instance_uids": list(st.sop_instance_uids)}
            for st in result.studies
        ])
        instances += result.instances
        size += result.bytes_total
        facade.audit(s, "purge.tombstoned", actor=actor, patient_id=item.patient_id, study_uid=item.study_uid,
                     detail={"batch_id": batch.id, "basis": item.basis, "instances": result.instances,
                             "studies": [st.study_uid for st in result.studies]})
    batch.instances, batch.bytes_destroyed = instances, size
    batch.status, batch.tombstoned_at, batch.executed_by = "tombstoned", now, actor
    s.flush()


# -- the sweep -------------------------------------------------------------------------------------------


@dataclass
class SweepReport:
    today: date
    patients: int = 0
    to_move: list[str] = field(default_factory=list)  # patient row ids as text (never patient IDs in logs)
    moved_instances: int = 0
    due: int = 0
    needs_review: int = 0
    proposed_batch_id: int | None = None
    executed_batches: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep run today would do: the preview a manager reads before pressing "run the sweep"."""

    today: date
    patients: int  # visible patients
    needs_review: int  # never proposed while true
    to_move: tuple[PatientRetention, ...]  # belong in the intermediate archive, images still active
    to_propose: tuple[PatientRetention, ...]  # past their date, not on hold, not already in an open batch
    proposed: int  # how many the batch would name (to_propose may show only the first of them)

    @property
    def bytes_to_move(self) -> int:
        return sum(p.record.bytes_total for p in self.to_move)


def sweep_plan(session: Session, facade: ArchiveFacade, *, today: date, shown: int | None = None) -> SweepPlan:
    """The moves and the proposal :func:`sweep` makes today, computed by the same rule it uses.

    The candidates come from the stored answers (the caller refreshes them first:
    ``answers.refresh_now``); only they are decided again, by ``decide`` on today's facts. With
    *shown*, only the first *shown* records to propose (by row id, the batch's order) are decided and
    returned, and ``proposed`` counts them all from the stored answers, as the lists count (those
    answers are the rule's once refreshed; holds are asked of the rule: ``answers.held_today``).
    """
    from backoffice.retention import answers  # answers builds on this module

    taken, _batches = _in_open_batch(session)
    if shown is None:
        candidates, proposed = answers.propose_candidates(session, today=today), None
    else:
        left_out = set(answers.held_today(session, facade, today)) | answers.pks_of(session, taken)
        candidates, proposed = answers.propose_preview(session, today=today, left_out=left_out, limit=shown)
    to_propose = [p for p in retention_of(session, facade, today=today, patient_pks=candidates)
                  if p.decision.purgeable(today) and (p.record.patient_id, p.record.issuer_of_patient_id) not in taken]
    movers = [p for p in retention_of(session, facade, today=today,
                                      patient_pks=answers.move_candidates(session, facade, today=today))
              if p.decision.tier == "archive" and p.record.instances_active]
    patients, needs_review = answers.totals(session)
    return SweepPlan(today, patients, needs_review, tuple(movers), tuple(to_propose),
                     len(to_propose) if proposed is None else proposed)


def sweep(facade: ArchiveFacade, *, today: date, dry_run: bool = False, certificates: Path | None = None,
          render: CertificateRenderer | None = None, actor: str = SCHEDULER, actor_kind: str = "system") -> SweepReport:
    """Recompute every answer, move tiers, propose a batch, finish interrupted executions (idempotent).

    It never starts the execution of an approved batch: that needs a person other than the requester.
    A manager who runs it from the page is its *actor*: the moves and the proposal are theirs (so
    another manager approves).
    """
    from backoffice.retention import answers  # answers builds on this module

    report = SweepReport(today)
    answers.refresh_now(facade)
    with facade.new_session() as s:
        plan = sweep_plan(s, facade, today=today)
    report.patients = plan.patients
    report.needs_review = plan.needs_review
    report.due = plan.proposed
    movers = plan.to_move
    report.to_move = [str(p.record.patient_pk) for p in movers]
    if dry_run:
        return report
    for p in movers:
        # The move writes its tier.moved audit event in the transaction that switches the index.
        moved = facade.move_patient_to_archive(p.record.patient_pk, actor=actor, actor_kind=actor_kind)
        report.moved_instances += moved.instances
    with facade.new_session(write=True) as s:
        batch = propose_batch(s, facade, today=today, actor=actor, actor_kind=actor_kind)
        report.proposed_batch_id = batch.id if batch else None
        s.commit()
    if certificates is not None and render is not None:
        with facade.new_session() as s:
            # Only executions a person started and a crash interrupted: starting one is a person's act.
            pending = list(s.scalars(select(PurgeBatch.id).where(PurgeBatch.status == "tombstoned")))
        for batch_id in pending:
            run_purge(facade, batch_id, certificates=certificates, render=render, actor=SCHEDULER, today=today)
            report.executed_batches.append(batch_id)
    log.info("retention sweep %s: %d patients, %d to move (%d instances moved), %d due, batch %s, executed %s",
             today, report.patients, len(report.to_move), report.moved_instances, report.due,
             report.proposed_batch_id, report.executed_batches)
    return report


# -- corrections -----------------------------------------------------------------------------------------


def _open_batch_items(session: Session) -> list[tuple[int, str, str | None]]:
    """(batch id, patient ID, study UID or None) of every item of a batch not yet executed or rejected."""
    return list(session.execute(
        select(PurgeBatch.id, PurgeItem.patient_id, PurgeItem.study_uid)
        .join(PurgeItem, PurgeItem.batch_pk == PurgeBatch.id)
        .where(PurgeBatch.status.in_(OPEN_STATUSES)).order_by(PurgeBatch.id)
    ).all())


def _refuse_if_in_open_batch(session: Session, *, study_uid: str | None = None, owner: str | None = None,
                             patients: tuple[str, ...] = ()) -> None:
    """A correction never changes what a batch awaiting a decision or an execution names.

    Refused: moving a study of an open batch, or out of or into a record proposed as a whole; merging
    a patient who has anything in an open batch.
    """
    for batch_id, patient_id, item_study in _open_batch_items(session):
        if study_uid is not None and (item_study == study_uid or (item_study is None and patient_id == owner)):
            raise RetentionError("study_in_open_batch", batch=batch_id)
        if patient_id in patients and (item_study is None or study_uid is None):
            raise RetentionError("patient_in_open_batch", patient=patient_id, batch=batch_id)


def move_study(session: Session, facade: ArchiveFacade, study_uid: str, to_patient_id: str, reason: str, *,
               actor: str) -> None:
    _require_reason(reason)
    owner = facade.study_owner(session, study_uid)
    if owner is None:
        raise RetentionError("study_not_found")
    _refuse_if_in_open_batch(session, study_uid=study_uid, owner=owner[0], patients=(to_patient_id,))
    try:
        previous = facade.move_study(session, study_uid, to_patient_id)
    except NotFound:
        raise RetentionError("patient_not_found") from None
    except ArchiveError as exc:
        raise RetentionError("correction_failed", detail=str(exc)) from exc
    facade.audit(session, "correction.study_moved", actor=actor, patient_id=to_patient_id, study_uid=study_uid,
                 detail={"from_patient_id": previous, "reason": reason.strip()})


def merge_patients(session: Session, facade: ArchiveFacade, source_id: str, target_id: str, reason: str, *,
                   actor: str) -> int:
    _require_reason(reason)
    _refuse_if_in_open_batch(session, patients=(source_id, target_id))
    try:
        moved = facade.merge_patients(session, source_id, target_id, at=datetime.now(timezone.utc))
    except NotFound:
        raise RetentionError("patient_not_found") from None
    except ArchiveError as exc:
        raise RetentionError("correction_failed", detail=str(exc)) from exc
    # Holds and a recorded death follow the record into the surviving patient.
    for hold in session.scalars(select(LegalHold).where(LegalHold.patient_id == source_id)):
        hold.patient_id = target_id
    death = session.scalar(select(DeathRecord).where(DeathRecord.patient_id == source_id))
    if death is not None and session.scalar(select(DeathRecord).where(DeathRecord.patient_id == target_id)) is None:
        death.patient_id = target_id
    session.flush()
    facade.audit(session, "correction.patients_merged", actor=actor, patient_id=target_id,
                 detail={"merged_patient_id": source_id, "studies": moved, "reason": reason.strip()})
    return moved
