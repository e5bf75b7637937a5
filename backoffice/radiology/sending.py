"""Sending studies to reading workstations: background send jobs with progress, and the prefetch rule."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from archive_core.api import ArchiveFacade, UnknownPeer, escape_like, utcnow
from backoffice.radiology.models import SendFailure, SendJob

log = logging.getLogger(__name__)
PROGRESS_EVERY_SECONDS = 0.5


def create_send_job(
    session: Session,
    peer_ae_title: str,
    study_uids: list[str],
    *,
    requested_by: str,
    reason: str = "manual",
    trigger_study_uid: str | None = None,
    total: int = 0,
) -> SendJob:
    job = SendJob(peer_ae_title=peer_ae_title, study_uids="\\".join(study_uids), reason=reason, status="queued",
                  requested_by=requested_by, trigger_study_uid=trigger_study_uid, total=total)
    session.add(job)
    session.flush()
    return job


@contextmanager
def _committed(facade: ArchiveFacade):
    """A job's own short write transaction (a background job is its own edge)."""
    with facade.new_session(write=True) as s:
        yield s
        s.commit()


def _update(facade: ArchiveFacade, job_id: int, **values: Any) -> None:
    with _committed(facade) as s:
        job = s.get(SendJob, job_id)
        for key, value in values.items():
            setattr(job, key, value)


def run_send_job(facade: ArchiveFacade, job_id: int) -> SendJob:
    """Run a queued job to its end (in the caller's thread); progress is committed as it goes.

    The job is ``done`` only when every instance was answered success (0x0000); a warning
    (0xB000, 0xB006, 0xB007: stored, but not as sent) or a failure counts in ``failed`` and is kept
    with the peer's status and Error Comment (:class:`SendFailure`), and the job ends ``failed``.
    """
    with facade.new_session() as s:
        job = s.get(SendJob, job_id)
        study_uids = job.study_uids.split("\\")
        peer, actor = job.peer_ae_title, job.requested_by
        total = facade.count_instances(s, study_uids)
    _update(facade, job_id, status="running", total=total)
    last = [0.0]

    def progress(sent: int, failed: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_SECONDS:
            last[0] = now
            _update(facade, job_id, sent=sent, failed=failed)

    try:
        result = facade.send_studies(peer, study_uids, progress=progress)
    except UnknownPeer as exc:
        _update(facade, job_id, status="failed", message=str(exc), finished_at=utcnow())
    except Exception as exc:  # noqa: BLE001 - a job records its failure instead of dying silently
        log.exception("send job %d failed", job_id)
        _update(facade, job_id, status="failed", message=f"erreur : {exc}", finished_at=utcnow())
    else:
        with _committed(facade) as s:
            job = s.get(SendJob, job_id)
            job.status = "done" if result.ok else "failed"
            job.sent, job.failed = result.sent, result.failed + result.warning
            job.message, job.finished_at = result.message, utcnow()
            s.add_all(SendFailure(job_id=job_id, sop_instance_uid=f.sop_instance_uid, status=f.status,
                                  comment=f.comment[:1024]) for f in result.failures)
        for uid in study_uids:
            facade.audit_now("study.send", actor=actor, actor_kind="user" if actor != "prefetch" else "system",
                             study_uid=uid, detail={"peer": peer, "job": job_id, "sent": result.sent,
                                                    "failed": result.failed + result.warning})
    with facade.new_session() as s:
        job = s.get(SendJob, job_id)
        s.expunge(job)
        return job


def start_in_background(facade: ArchiveFacade, job_id: int) -> threading.Thread:
    thread = threading.Thread(target=run_send_job, args=(facade, job_id), name=f"send-job-{job_id}", daemon=True)
    thread.start()
    return thread


def get_job(session: Session, job_id: int) -> SendJob | None:
    return session.get(SendJob, job_id)


def failures_of(session: Session, job_id: int) -> list[SendFailure]:
    return list(session.scalars(select(SendFailure).where(SendFailure.job_id == job_id).order_by(SendFailure.id)))


def job_json(session: Session, job: SendJob) -> dict:
    """A job as the JSON API and the study page's progress poll show it (DESIGN.md public contract)."""
    return {"id": job.id, "peer": job.peer_ae_title, "status": job.status, "total": job.total, "sent": job.sent,
            "failed": job.failed, "message": job.message,
            "failures": [{"sop_instance_uid": f.sop_instance_uid, "status": f.status, "comment": f.comment}
                         for f in failures_of(session, job.id)]}


def jobs_for(session: Session, study_uid: str, limit: int = 10) -> list[SendJob]:
    query = select(SendJob).where(SendJob.study_uids.like(escape_like(study_uid) + "%", escape="\\"))
    return list(session.scalars(query.order_by(SendJob.id.desc()).limit(limit)))


# -- prefetch ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrefetchRule:
    """Which priors go to which workstations when a study arrives (configuration keys PREFETCH_*)."""

    destinations: tuple[str, ...] = ()
    max_priors: int = 2
    max_age_years: int = 5
    modalities: tuple[str, ...] = ()  # only studies of these modalities trigger a prefetch (empty: all)
    lookback_hours: int = 24

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "PrefetchRule":
        return cls(
            destinations=tuple(config.get("PREFETCH_DESTINATIONS") or ()),
            max_priors=int(config.get("PREFETCH_MAX_PRIORS", 2)),
            max_age_years=int(config.get("PREFETCH_MAX_AGE_YEARS", 5)),
            modalities=tuple(config.get("PREFETCH_MODALITIES") or ()),
            lookback_hours=int(config.get("PREFETCH_LOOKBACK_HOURS", 24)),
        )


def _years_before(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


def prefetch(facade: ArchiveFacade, rule: PrefetchRule, *, now: datetime | None = None) -> list[SendJob]:
    """Send the relevant priors of each new study to each destination, once; returns the jobs it ran."""
    if not rule.destinations or rule.max_priors <= 0:
        return []
    now = now or utcnow()
    oldest = _years_before(now.date(), rule.max_age_years).isoformat()
    ran = []
    with facade.new_session() as s:  # the job's reads are short: no transaction is held over a send
        recent = facade.studies_received_since(s, now - timedelta(hours=rule.lookback_hours))
    for study in recent:
        if rule.modalities and not set(study.modalities) & set(rule.modalities):
            continue
        current_date = study.iso_date or now.date().isoformat()
        with facade.new_session() as s:
            others = facade.prior_studies(s, study.study_uid)
        priors = [p for p in others  # older relevant studies, newest first
                  if p.relevant and p.study_date and oldest <= p.study_date <= current_date][: rule.max_priors]
        if not priors:
            continue
        for destination in rule.destinations:
            with _committed(facade) as s:
                done = s.scalar(select(SendJob.id).where(SendJob.reason == "prefetch",
                                                         SendJob.trigger_study_uid == study.study_uid,
                                                         SendJob.peer_ae_title == destination))
                if done is not None:
                    continue
                job_id = create_send_job(s, destination, [p.study_uid for p in priors], requested_by="prefetch",
                                         reason="prefetch", trigger_study_uid=study.study_uid).id
            log.info("prefetch for study %s: %d priors to %s", study.study_uid, len(priors), destination)
            ran.append(run_send_job(facade, job_id))
    return ran


def prefetch_job() -> None:
    """Scheduler job (module level, fixed id): prefetch priors of the studies that arrived recently."""
    from flask import current_app

    from backoffice.extensions import facade

    prefetch(facade(), PrefetchRule.from_config(current_app.config))
