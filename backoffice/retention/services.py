"""Retention services: today's answer per patient, deaths, holds, purge batches and corrections.

Functions taking a ``Session`` first flush and never commit (the edge commits). The two that
run a whole process — :func:`run_purge` and :func:`sweep` — own their transactions, like a CLI
command: a purge must commit its tombstones before it deletes a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Callable
from zoneinfo import ZoneInfo

from flask_babel import gettext as _
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from archive_core.api import ArchiveError, ArchiveFacade, NotFound, PatientRecord
from archive_core.retention import HoldPeriod, RetentionDecision, RetentionFacts, decide, parse_da
from backoffice.retention.models import OPEN_STATUSES, DeathRecord, LegalHold, PurgeBatch, PurgeItem

log = logging.getLogger(__name__)
PARIS = ZoneInfo("Europe/Paris")


class RetentionError(Exception):
    """A retention action that cannot be done (mapped to 4xx at the edges)."""

    status = 409
    code = "conflict"


class PatientNotFound(RetentionError):
    status = 404
    code = "not_found"


class NotApproved(RetentionError):
    """Nothing is destroyed without an approved batch."""

    code = "not_approved"


class InvalidRequest(RetentionError):
    status = 400
    code = "bad_request"


def _require_reason(reason: str | None) -> None:
    # Every decision on a record (hold, destruction, correction) carries its reason into the audit trail.
    if not reason or not reason.strip():
        raise InvalidRequest(_("un motif est requis"))


def today_paris(now: datetime | None = None) -> date:
    return (now or datetime.now(timezone.utc)).astimezone(PARIS).date()


def _local_date(at: datetime) -> date:
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return at.astimezone(PARIS).date()


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
            HoldPeriod(_local_date(h.placed_at), _local_date(h.released_at) if h.released_at else None) for h in holds
        ),
    )


def retention_of(session: Session, facade: ArchiveFacade, *, today: date,
                 patient_id: str | None = None) -> list[PatientRetention]:
    """Today's answer for every visible patient (or those with *patient_id*)."""
    records = facade.patient_records(session, patient_id=patient_id)
    deaths_q = select(DeathRecord)
    holds_q = select(LegalHold).order_by(LegalHold.id)
    if patient_id is not None:
        deaths_q = deaths_q.where(DeathRecord.patient_id == patient_id)
        holds_q = holds_q.where(LegalHold.patient_id == patient_id)
    deaths = {(d.patient_id, d.issuer_of_patient_id): d.death_date for d in session.scalars(deaths_q)}
    holds: dict[tuple[str, str], list[LegalHold]] = {}
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
        raise PatientNotFound(_("aucun patient avec cet identifiant"))
    if len(found) > 1:
        raise RetentionError(_("plusieurs patients portent cet identifiant : précisez l'émetteur (issuer)"))
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
                 today: date) -> PatientRetention:
    patient = patient_retention(session, facade, patient_id, today=today)
    if death_date > today:
        raise InvalidRequest(_("la date de décès ne peut être dans le futur"))
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
                 detail={"death_date": death_date.isoformat(), "previous": previous})
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
        raise PatientNotFound(_("aucun séquestre avec cet identifiant"))
    if hold.released_at is not None:
        raise RetentionError(_("ce séquestre est déjà levé"))
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


def propose_batch(session: Session, facade: ArchiveFacade, *, today: date, actor: str = "scheduler",
                  actor_kind: str = "system") -> PurgeBatch | None:
    """One proposed batch of the patients whose date has passed, not on hold and not already proposed."""
    if session.get_bind().dialect.name == "postgresql":
        # One proposer at a time (a manual sweep while the scheduler runs): no patient proposed twice.
        session.execute(text("SELECT pg_advisory_xact_lock(727270500)"))
    taken, _studies = _in_open_batch(session)
    due = [p for p in retention_of(session, facade, today=today)
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
    """A study sent by mistake: proposed for destruction like any purge (approval required)."""
    _require_reason(reason)
    owner = facade.study_owner(session, study_uid)
    if owner is None:
        raise PatientNotFound(_("aucun examen avec cet identifiant"))
    _patients, studies = _in_open_batch(session)
    if study_uid in studies:
        raise RetentionError(_("cet examen est déjà proposé à la destruction"))
    batch = PurgeBatch(kind="correction", status="proposed", proposed_by=actor, proposal_note=reason.strip())
    batch.items.append(PurgeItem(patient_id=owner[0], issuer_of_patient_id=owner[1], study_uid=study_uid,
                                 basis="correction", explanation=f"examen envoyé par erreur : {reason.strip()}"))
    session.add(batch)
    session.flush()
    facade.audit(session, "correction.deletion_requested", actor=actor, patient_id=owner[0], study_uid=study_uid,
                 detail={"batch_id": batch.id, "reason": reason.strip()})
    return batch


def get_batch(session: Session, batch_id: int) -> PurgeBatch:
    batch = session.get(PurgeBatch, batch_id)
    if batch is None:
        raise PatientNotFound(_("aucun lot avec cet identifiant"))
    return batch


def decide_batch(session: Session, facade: ArchiveFacade, batch_id: int, *, approve: bool, reason: str,
                 actor: str) -> PurgeBatch:
    """A manager's decision on a proposed batch (the approver and the reason are recorded)."""
    _require_reason(reason)
    batch = get_batch(session, batch_id)
    if batch.status != "proposed":
        raise RetentionError(_("le lot est déjà %(status)s", status=batch.status))
    batch.status = "approved" if approve else "rejected"
    batch.decided_by, batch.decided_at, batch.decision_reason = actor, datetime.now(timezone.utc), reason.strip()
    session.flush()
    facade.audit(session, "purge.approved" if approve else "purge.rejected", actor=actor,
                 detail={"batch_id": batch.id, "reason": batch.decision_reason, "items": len(batch.items)})
    return batch


def batch_json(batch: PurgeBatch) -> dict:
    return {
        "id": batch.id,
        "kind": batch.kind,
        "status": batch.status,
        "proposed_by": batch.proposed_by,
        "proposed_at": batch.proposed_at.isoformat(),
        "decided_by": batch.decided_by,
        "decision_reason": batch.decision_reason,
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
              actor: str = "system", today: date | None = None) -> PurgeBatch:
    """Execute an approved batch: tombstones + audit in one transaction, then files, then the certificate.

    Rerunnable after a crash at any point: a tombstoned batch resumes at the file deletion, which
    only ever deletes files of tombstoned rows. Refuses (NotApproved) anything not approved.
    """
    today = today or today_paris()
    with facade.new_session(write=True) as s:
        # Row lock on PostgreSQL (SQLite's write lock is taken already): one executor per batch.
        batch = s.get(PurgeBatch, batch_id, with_for_update=True)
        if batch is None:
            raise PatientNotFound(_("aucun lot avec cet identifiant"))
        if batch.status == "executed":
            return batch
        if batch.status not in ("approved", "tombstoned"):
            raise NotApproved(_("ce lot n'a pas été approuvé par un responsable : rien n'est détruit"))
        if batch.status == "approved":
            _tombstone(s, facade, batch, actor=actor, today=today)
        uids = [u for item in batch.items for st in json.loads(item.manifest) for u in st["sop_instance_uids"]]
        s.commit()
    facade.delete_tombstoned_files(uids)  # a crash here: the next run starts again from this line
    with facade.new_session(write=True) as s:
        batch = get_batch(s, batch_id)
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
        facade.audit(s, "purge.executed", actor=actor, actor_kind="user" if actor != "system" else "system",
                     detail={"batch_id": batch.id, "instances": batch.instances, "bytes": batch.bytes_destroyed,
                             "certificate_sha256": batch.certificate_sha256})
        s.commit()
        return batch


def _tombstone(s: Session, facade: ArchiveFacade, batch: PurgeBatch, *, actor: str, today: date) -> None:
    now = datetime.now(timezone.utc)
    current = {(p.record.patient_id, p.record.issuer_of_patient_id): p for p in retention_of(s, facade, today=today)}
    instances = size = 0
    for item in batch.items:
        key = (item.patient_id, item.issuer_of_patient_id)
        if item.study_uid is None:
            # Re-checked at the last moment: a hold, a new visit or a death recorded since the proposal wins.
            p = current.get(key)
            if p is None or not p.decision.purgeable(today):
                item.manifest = "[]"
                item.explanation += " — écarté à l'exécution : plus destructible ce jour"
                facade.audit(s, "purge.skipped", actor=actor, patient_id=item.patient_id,
                             detail={"batch_id": batch.id})
                continue
            result = facade.tombstone_patient(s, item.patient_id, item.issuer_of_patient_id, at=now)
        else:
            if current.get(key) is not None and current[key].decision.on_hold:
                raise RetentionError(_("le patient de cet examen est sous séquestre : rien n'est détruit"))
            try:
                result = facade.tombstone_study(s, item.study_uid, at=now)
            except NotFound:  # already gone (another batch): nothing left to destroy
                item.manifest = "[]"
                continue
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
    batch.status, batch.tombstoned_at = "tombstoned", now
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


def sweep(facade: ArchiveFacade, *, today: date, dry_run: bool = False, certificates: Path | None = None,
          render: CertificateRenderer | None = None) -> SweepReport:
    """Recompute every answer, move tiers, propose a batch, and finish approved batches (idempotent)."""
    report = SweepReport(today)
    with facade.new_session() as s:
        answers = retention_of(s, facade, today=today)
        taken, _batches = _in_open_batch(s)
    report.patients = len(answers)
    report.needs_review = sum(1 for p in answers if p.decision.needs_review)
    report.due = sum(1 for p in answers if p.decision.purgeable(today)
                     and (p.record.patient_id, p.record.issuer_of_patient_id) not in taken)
    movers = [p for p in answers if p.decision.tier == "archive" and p.record.instances_active]
    report.to_move = [str(p.record.patient_pk) for p in movers]
    if dry_run:
        return report
    for p in movers:
        moved = facade.move_patient_to_archive(p.record.patient_pk)
        report.moved_instances += moved.instances
        if moved.instances:
            facade.audit_now("tier.moved", actor="scheduler", actor_kind="system", patient_id=p.record.patient_id,
                             detail={"instances": moved.instances, "bytes": moved.bytes_moved, "to": "archive"})
    with facade.new_session(write=True) as s:
        batch = propose_batch(s, facade, today=today)
        report.proposed_batch_id = batch.id if batch else None
        s.commit()
    if certificates is not None and render is not None:
        with facade.new_session() as s:
            pending = list(s.scalars(select(PurgeBatch.id).where(PurgeBatch.status.in_(("approved", "tombstoned")))))
        for batch_id in pending:
            run_purge(facade, batch_id, certificates=certificates, render=render, today=today)
            report.executed_batches.append(batch_id)
    log.info("retention sweep %s: %d patients, %d to move (%d instances moved), %d due, batch %s, executed %s",
             today, report.patients, len(report.to_move), report.moved_instances, report.due,
             report.proposed_batch_id, report.executed_batches)
    return report


# -- corrections -----------------------------------------------------------------------------------------


def move_study(session: Session, facade: ArchiveFacade, study_uid: str, to_patient_id: str, reason: str, *,
               actor: str) -> None:
    _require_reason(reason)
    try:
        previous = facade.move_study(session, study_uid, to_patient_id)
    except NotFound as exc:
        raise PatientNotFound(str(exc)) from exc
    except ArchiveError as exc:
        raise RetentionError(str(exc)) from exc
    facade.audit(session, "correction.study_moved", actor=actor, patient_id=to_patient_id, study_uid=study_uid,
                 detail={"from_patient_id": previous, "reason": reason.strip()})


def merge_patients(session: Session, facade: ArchiveFacade, source_id: str, target_id: str, reason: str, *,
                   actor: str) -> int:
    _require_reason(reason)
    try:
        moved = facade.merge_patients(session, source_id, target_id, at=datetime.now(timezone.utc))
    except NotFound as exc:
        raise PatientNotFound(str(exc)) from exc
    except ArchiveError as exc:
        raise RetentionError(str(exc)) from exc
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
