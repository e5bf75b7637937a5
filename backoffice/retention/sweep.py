"""The sweep: tier moves and the proposal of a purge batch, as one job that owns its transactions.

:func:`sweep` is what the page's "run the sweep", the scheduler's daily job and ``flask retention
sweep`` call alike; :func:`sweep_plan` is its preview, computed by the same rule.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from archive_core.api import ArchiveFacade
from backoffice.retention import answers
from backoffice.retention.batches import SCHEDULER, in_open_batch, propose_batch
from backoffice.retention.decisions import PatientRetention, retention_of
from backoffice.retention.models import PurgeBatch
from backoffice.retention.purge import CertificateRenderer, run_purge

log = logging.getLogger(__name__)


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

    taken, _batches = in_open_batch(session)
    if shown is None:
        candidates, proposed = answers.propose_candidates(session, today=today), None
    else:
        left_out = set(answers.held_today(session, facade, today)) | answers.pks_of(session, taken)
        candidates, proposed = answers.propose_preview(session, today=today, left_out=left_out, limit=shown)
    to_propose = [p for p in retention_of(session, facade, today=today, patient_pks=candidates)
                  if p.decision.purgeable(today) and (p.record.patient_id, p.record.issuer_of_patient_id) not in taken]
    movers = [p for p in retention_of(session, facade, today=today,
                                      patient_pks=answers.move_candidates(session, today=today))
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
