"""The scheduler process: APScheduler 3, one per deployment (a lock file makes a second one exit)."""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from pathlib import Path

from apscheduler.schedulers.blocking import BlockingScheduler
from flask import Flask

log = logging.getLogger(__name__)


def journal_backlog_job() -> None:
    """Log the ingest journal's backlog: entries stay there only while the archive is down."""
    from backoffice.extensions import facade

    pending = facade().journal_backlog()
    if pending:
        log.warning("%d received objects wait in the ingest journal (is the archive running?)", pending)


def retention_sweep_job(today=None) -> None:
    """Daily: move tiers, propose purges, finish interrupted purges (idempotent; *today* for tests)."""
    from backoffice.extensions import facade
    from backoffice.retention.certificate import certificates_dir, render_certificate
    from backoffice.retention.services import sweep, today_paris

    sweep(facade(), today=today or today_paris(), certificates=certificates_dir(), render=render_certificate)


def audit_checkpoint_job() -> None:
    """Sign the audit chain's head (idempotent: nothing is written when no event was appended since)."""
    from backoffice.extensions import facade

    facade().audit_checkpoint(reason="periodic")


def acquire_lock(instance_path: Path):
    """The deployment-wide scheduler lock; None when another scheduler holds it."""
    handle = open(instance_path / "scheduler.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def run_scheduler(app: Flask) -> None:
    lock = acquire_lock(Path(app.instance_path))
    if lock is None:
        log.error("another scheduler is running for this instance; exiting")
        sys.exit(1)
    scheduler = BlockingScheduler(timezone="Europe/Paris", job_defaults={"coalesce": True, "max_instances": 1})

    def in_app(func):
        def run() -> None:
            with app.app_context():
                func()

        return run

    scheduler.add_job(
        in_app(journal_backlog_job), "interval", minutes=5, id="journal_backlog", name="journal_backlog", replace_existing=True
    )
    # Daily at 02:30, and once at start: a missed night is caught up (the sweep is idempotent).
    from datetime import datetime, timezone

    scheduler.add_job(
        in_app(retention_sweep_job), "cron", hour=2, minute=30, id="retention_sweep", name="retention_sweep",
        replace_existing=True, coalesce=True, max_instances=1, misfire_grace_time=None,
        next_run_time=datetime.now(timezone.utc),
    )
    from backoffice.radiology.sending import prefetch_job

    scheduler.add_job(in_app(prefetch_job), "interval", minutes=2, id="radiology_prefetch", name="radiology_prefetch",
                      replace_existing=True)
    # The audit chain's head, signed with the key kept outside the database (docs/operations.md).
    minutes = int(app.config.get("AUDIT_CHECKPOINT_MINUTES", 10))
    scheduler.add_job(in_app(audit_checkpoint_job), "interval", minutes=minutes, id="audit_checkpoint",
                      name="audit_checkpoint", replace_existing=True, next_run_time=datetime.now(timezone.utc))
    log.info("scheduler started")
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        pass
