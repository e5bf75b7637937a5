"""The scheduler process: APScheduler 3, one leader per deployment.

Every node may run ``scheduler run``; one of them leads and runs the jobs, the others wait as
standbys and take over when the leader stops or dies. The leadership is a lock its process holds
for life: on PostgreSQL a session advisory lock (:data:`SCHEDULER_LOCK_KEY`) on a connection of its
own, so the nodes of a cluster share it; on SQLite (one machine) ``instance/scheduler.lock``
(``flock``). The jobs are idempotent, so a take-over that repeats a run does no harm.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import time
from pathlib import Path

from apscheduler.schedulers.blocking import BlockingScheduler
from flask import Flask

from archive_core.values import LOCK_SCHEDULER_LEADER, PARIS

log = logging.getLogger(__name__)


def journal_backlog_job() -> None:
    """Log the ingest journal's backlog: entries stay there only while the archive (or its object store) is down."""
    from backoffice.extensions import facade

    pending = facade().journal_backlog()
    if pending:
        log.warning("%d received objects wait in the ingest journal (is the archive running, its object store "
                    "reachable?)", pending)


def retention_sweep_job(today=None) -> None:
    """Daily: move tiers, propose purges, finish interrupted purges (idempotent; *today* for tests)."""
    from backoffice.extensions import facade
    from backoffice.retention.certificate import certificates_dir, render_certificate
    from backoffice.retention.decisions import today_paris
    from backoffice.retention.sweep import sweep

    sweep(facade(), today=today or today_paris(), certificates=certificates_dir(), render=render_certificate)


def audit_checkpoint_job() -> None:
    """Sign the audit chain's head (idempotent: nothing is written when no event was appended since)."""
    from backoffice.extensions import facade

    facade().audit_checkpoint(reason="periodic")


SCHEDULER_LOCK_KEY = LOCK_SCHEDULER_LEADER  # PostgreSQL advisory lock of the scheduler's leader


def acquire_lock(instance_path: Path):
    """The scheduler lock of a SQLite deployment (one machine); None when another scheduler holds it."""
    handle = open(instance_path / "scheduler.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


class PostgresLeadership:
    """The leader's session advisory lock, on a connection of its own (a pool would hand it back)."""

    def __init__(self, database_url: str) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        self._engine = create_engine(database_url, poolclass=NullPool)
        self._connection = None

    def try_acquire(self) -> bool:
        from sqlalchemy import text

        if self._connection is None:
            self._connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        if self._connection.execute(text(f"SELECT pg_try_advisory_lock({SCHEDULER_LOCK_KEY})")).scalar():
            return True
        self._connection.close()
        self._connection = None
        return False

    def still_held(self) -> bool:
        """False once the lock's connection is gone (a restarted server, a cut network): the lock
        went with it and another node may lead."""
        from sqlalchemy import text

        try:
            return bool(self._connection.execute(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
                f"AND objid = {SCHEDULER_LOCK_KEY} AND granted")).scalar())
        except Exception:  # the connection is broken: whatever the error, the lock is not ours
            log.exception("the scheduler lock's connection failed")
            return False


class FileLeadership:
    def __init__(self, instance_path: Path) -> None:
        self._path, self._handle = instance_path, None

    def try_acquire(self) -> bool:
        self._handle = acquire_lock(self._path)
        return self._handle is not None

    def still_held(self) -> bool:
        return True  # a flock lasts as long as this process


def leadership_for(app: Flask):
    url = str(app.config.get("DATABASE_URL") or "")
    return PostgresLeadership(url) if url.startswith("postgresql") else FileLeadership(Path(app.instance_path))


def wait_for_leadership(leadership, *, retry_seconds: float, sleep=time.sleep) -> None:
    """Return once *leadership* is ours; until then this node is a standby and runs no job."""
    if leadership.try_acquire():
        return
    log.info("another scheduler leads; this one waits as a standby (retry every %s s)", retry_seconds)
    while not leadership.try_acquire():
        sleep(retry_seconds)


class QuietLeadershipRuns(logging.Filter):
    """APScheduler logs every run of every job at INFO (``Running job``, ``executed successfully``). The
    leadership check runs every 15 s: two lines each time, 11,520 a day, which buried the other jobs'
    runs in the scheduler's log. Its INFO lines are dropped; its missed runs (WARNING) and failures
    (ERROR) stay, and so does every line of every other job."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (record.levelno <= logging.INFO and args and getattr(args[0], "id", None) == "leadership")


def run_scheduler(app: Flask) -> None:
    logging.getLogger("apscheduler.executors.default").addFilter(QuietLeadershipRuns())
    leadership = leadership_for(app)
    wait_for_leadership(leadership, retry_seconds=float(app.config.get("SCHEDULER_STANDBY_SECONDS", 15)))
    log.info("this scheduler leads (pid %d)", os.getpid())
    scheduler = BlockingScheduler(timezone=PARIS.key, job_defaults={"coalesce": True, "max_instances": 1})

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
    lost = []

    def check_leadership() -> None:
        if not leadership.still_held():
            log.error("the scheduler lock was lost; stopping so that one leader works at a time")
            lost.append(True)
            scheduler.shutdown(wait=False)

    scheduler.add_job(check_leadership, "interval", seconds=float(app.config.get("SCHEDULER_STANDBY_SECONDS", 15)),
                      id="leadership", name="leadership", replace_existing=True)
    log.info("scheduler started")
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        pass
    if lost:
        sys.exit(3)  # the supervisor (or `serve`) starts it again: a standby if another node leads now
