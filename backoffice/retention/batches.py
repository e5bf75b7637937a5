"""Purge batches: proposing one, a study deletion request, the four-eyes decision, what an approval
records and what execution compares.

Functions take the caller's ``Session``, flush and never commit (the caller commits; the edges'
error handlers roll back on a :class:`~backoffice.retention.errors.RetentionError`). The jobs that
own their transactions are :func:`backoffice.retention.sweep.sweep` and
:func:`backoffice.retention.purge.run_purge`.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timezone

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from archive_core.api import ArchiveFacade
from archive_core.values import LOCK_RETENTION_SWEEP
from backoffice.retention import answers
from backoffice.retention.decisions import columns_json, iso, require_reason, retention_of
from backoffice.retention.errors import RetentionError
from backoffice.retention.models import OPEN_STATUSES, PurgeBatch, PurgeItem

# The requester of the batches the sweep proposes: not a person (docs/retention.md, four eyes).
SCHEDULER = "scheduler"


def is_scheduler(login: str) -> bool:
    return login == SCHEDULER


def in_open_batch(session: Session) -> tuple[set[tuple[str, str]], set[str]]:
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

    answers.refresh(session, facade)  # the stored answers are as current as the facts
    taken, _studies = in_open_batch(session)
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
    require_reason(reason)
    owner = facade.study_owner(session, study_uid)
    if owner is None:
        raise RetentionError("study_not_found")
    _patients, studies = in_open_batch(session)
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


def item_facts(session: Session, facade: ArchiveFacade, item: PurgeItem, today: date) -> dict:
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
        facts.update(keep_until=iso(d.keep_until), basis=d.basis,
                     needs_review=d.needs_review, purgeable=d.purgeable(today))
        facts["destroyable"] = d.purgeable(today) and bool(studies)
    else:
        facts["destroyable"] = bool(studies) and not answer.decision.on_hold
    return facts


def changed_facts(approved: dict | None, current: dict) -> list[str]:
    if approved is None:  # approved before approvals recorded their facts: decide again
        return ["approval"]
    return sorted(k for k in set(approved) | set(current) if k != "destroyable" and approved.get(k) != current.get(k))


def item_view(session: Session, facade: ArchiveFacade, item: PurgeItem, today: date) -> dict:
    """What the batch page shows for an item: names, birth dates and exams (today's, or the approved ones
    once destroyed), and what changed since approval."""
    if item.batch.status in ("tombstoned", "executed"):
        facts = json.loads(item.approved_facts) if item.approved_facts else {}
        return {"facts": facts, "changed": [], "destroyable": True}
    facts = item_facts(session, facade, item, today)
    approved = json.loads(item.approved_facts) if item.approved_facts else None
    changed = changed_facts(approved, facts) if item.batch.status == "approved" else []
    return {"facts": facts, "changed": changed, "destroyable": facts.get("destroyable", False)}



def decide_batch(session: Session, facade: ArchiveFacade, batch_id: int, *, approve: bool, reason: str,
                 actor: str, today: date) -> PurgeBatch:
    """A manager's decision on a proposed batch (the approver, the reason and today's facts are recorded).

    Four eyes: the approver is another person than the requester (any manager for the scheduler's
    batches). An approval looks at today's facts: a record no longer destructible is left out
    (``purge.skipped``); a study whose patient is on hold cannot be approved.
    """
    require_reason(reason)
    batch = get_batch(session, batch_id, lock=True)
    if batch.status != "proposed":
        raise RetentionError("already_decided", batch=batch.id, status=batch.status)
    if approve and actor == batch.proposed_by:
        raise RetentionError("approver_is_requester", login=actor)
    if approve:
        for item in list(batch.items):
            facts = item_facts(session, facade, item, today)
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
    if is_scheduler(batch.proposed_by) and actor == batch.decided_by:
        raise RetentionError("executor_is_approver", login=actor)


def batch_json(batch: PurgeBatch) -> dict:
    return {
        **columns_json(batch, "id kind status proposed_by proposed_at decided_by decision_reason executed_by "
                              "executed_at instances bytes_destroyed certificate_sha256",
                       dates="proposed_at executed_at"),
        "items": [
            {"patient_id": i.patient_id, "study_uid": i.study_uid, "basis": i.basis,
             "keep_until": iso(i.keep_until), "explanation": i.explanation}
            for i in batch.items
        ],
    }
