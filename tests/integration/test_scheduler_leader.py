"""One scheduler leads, the others wait: ``flask --app wsgi scheduler run`` as child processes.

Two "nodes" (two instance folders) share one PostgreSQL database, as a cluster's nodes do; on
SQLite two schedulers share one instance. What an operator sees: which process runs the jobs
(APScheduler logs each run), the standby taking over after a ``kill -9`` of the leader, and a
leader that lost its lock stopping rather than working beside another.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.servers import ROOT, archive_env

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


class Node:
    def __init__(self, tmp_path: Path, name: str, database_url: str | None, instance: Path | None = None) -> None:
        self.instance = instance or tmp_path / name
        self.instance.mkdir(exist_ok=True)
        self.log = tmp_path / f"{name}.log"
        self.env = {**os.environ, **archive_env(self.instance), "ARCHIVAGE_SCHEDULER_STANDBY_SECONDS": "1"}
        if database_url:
            self.env["ARCHIVAGE_DATABASE_URL"] = database_url
        self.process: subprocess.Popen | None = None

    def start(self) -> "Node":
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "scheduler", "run"],
                                            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not in the log within {timeout} s:\n{self.text()[-3000:]}")
            time.sleep(0.2)  # polling a log file: there is no event to wait on

    def jobs_run(self) -> int:
        return self.text().count("Running job")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


def _migrated(database_url: str | None, instance: Path) -> None:
    from archive_core.config import Settings
    from tests.helpers import migrate

    migrate(database_url or Settings(instance_path=instance).database_url)


@pytest.mark.parametrize("engine", ["postgresql", "sqlite"])
def test_one_leader_runs_the_jobs_and_a_standby_takes_over_after_kill_9(engine, tmp_path, request):
    """Leader A runs the jobs, B (started second) waits and runs none; A is killed with -9 (no
    clean-up, its lock goes with its process or connection); B leads within seconds and runs them."""
    url = request.getfixturevalue("postgres_url") if engine == "postgresql" else None
    if url:
        from tests.conftest import _reset_postgres

        _reset_postgres(url)
    a = Node(tmp_path, "node-a", url)
    # On SQLite the two schedulers are on one machine and share one instance (the lock is its file).
    b = Node(tmp_path, "node-b", url, instance=None if url else a.instance)
    _migrated(url, a.instance)
    try:
        a.start()
        a.wait_for("this scheduler leads")
        a.wait_for("Running job")
        b.start()
        b.wait_for("waits as a standby")
        time.sleep(3)  # three standby retries: B must still not lead
        assert "this scheduler leads" not in b.text() and b.jobs_run() == 0
        assert b.process.poll() is None, "a standby keeps running (it used to exit with status 1)"
        # A checked its lock every second meanwhile, without a line each time; its jobs' runs are logged.
        assert 'Running job "retention_sweep' in a.text() and 'Running job "audit_checkpoint' in a.text()
        assert not re.search(r'(Running job|Job) "leadership', a.text())
        a.process.send_signal(signal.SIGKILL)
        a.process.wait(timeout=30)
        b.wait_for("this scheduler leads", timeout=30)
        b.wait_for("Running job", timeout=30)
    finally:
        a.stop()
        b.stop()


def test_a_leader_that_loses_its_postgresql_lock_stops(postgres_url, tmp_path):
    """The lock's connection is cut (pg_terminate_backend, as a restarted server or a network cut
    would): the leader notices at its next check and exits with status 3 instead of leading beside
    a new leader."""
    import psycopg

    from tests.conftest import _reset_postgres

    _reset_postgres(postgres_url)
    node = Node(tmp_path, "node", postgres_url)
    _migrated(postgres_url, node.instance)
    try:
        node.start()
        node.wait_for("this scheduler leads")
        from backoffice.scheduler import SCHEDULER_LOCK_KEY

        dsn = postgres_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn, autocommit=True) as c:
            killed = c.execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                               "AND objid = %s", (SCHEDULER_LOCK_KEY,)).fetchall()
        assert killed == [(True,)]
        assert node.process.wait(timeout=30) == 3
        assert "the scheduler lock was lost" in node.text()
    finally:
        node.stop()
