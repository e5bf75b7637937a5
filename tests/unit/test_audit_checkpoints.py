"""Signed checkpoints make ``audit verify`` notice rows deleted or rewritten by someone with database access.

Each test plays an attacker who owns the database (the append-only triggers dropped) but not the
signing key kept outside it, does one kind of tampering, and runs ``flask --app wsgi audit verify``
as the manager would. Before the checkpoints, deleting the last rows or rewriting a row and
recomputing the chain passed as "intact".
"""

from __future__ import annotations

import json
import os
import stat

import pytest
from sqlalchemy import text


@pytest.fixture
def trail(database_url, instance_path):
    """The app on SQLite and PostgreSQL, 10 audit events, a checkpoint written by the scheduler's job."""
    from backoffice import create_app
    from tests.helpers import migrate
    from backoffice.scheduler import audit_checkpoint_job

    migrate(database_url)
    app = create_app({"TESTING": True, "INSTANCE_PATH": str(instance_path), "DATABASE_URL": database_url,
                      "STORAGE_MIN_FREE_BYTES": 0})
    facade = app.extensions["archivage"]
    for n in range(1, 11):
        facade.audit_now("hold.placed", actor="gerante", patient_id=f"P{n}", detail={"reason": f"motif {n}"})
    with app.app_context():
        audit_checkpoint_job()
    yield app
    facade.archive.close()


def verify(app) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(args=["audit", "verify"])
    return result.exit_code, result.output


def attacker(app):
    """A write session of someone with the database owner's rights: the append-only triggers are off."""
    facade = app.extensions["archivage"]
    s = facade.new_session(write=True)
    if s.get_bind().dialect.name == "sqlite":
        for name in ("audit_event_no_update", "audit_event_no_delete", "audit_checkpoint_no_update",
                     "audit_checkpoint_no_delete"):
            s.execute(text(f"DROP TRIGGER IF EXISTS {name}"))
    else:
        s.execute(text("ALTER TABLE audit_event DISABLE TRIGGER USER"))
        s.execute(text("ALTER TABLE audit_checkpoint DISABLE TRIGGER USER"))
    return s


def recompute_chain(s) -> None:
    """What an attacker who read archive_core/audit.py does after an edit: every hash recomputed."""
    from archive_core.audit import GENESIS, AuditEvent, _digest

    prev = GENESIS
    for event in s.query(AuditEvent).order_by(AuditEvent.id).all():
        event.prev_hash = prev
        event.hash = _digest(prev, event)
        prev = event.hash
    s.flush()


def test_an_untouched_trail_verifies_with_its_checkpoint(trail, instance_path):
    """Baseline: the key exists with mode 0600, one signed line per checkpoint, verify says intact."""
    key = instance_path / "audit-signing.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    lines = (instance_path / "audit-checkpoints.log").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["event_count"] == 10
    code, output = verify(trail)
    assert code == 0 and "10 events" in output and "1 signed checkpoints" in output


def test_deleting_the_last_rows_is_reported_as_a_cut(trail):
    """Bad input: the last five events deleted (before: "intact")."""
    with attacker(trail) as s:
        s.execute(text("DELETE FROM audit_event WHERE id > 5"))
        s.commit()
    code, output = verify(trail)
    assert code == 1
    assert "events 6 to 10 are missing" in output and "cut short" in output


def test_deleting_a_middle_row_names_the_next_one(trail):
    """Bad input: event 4 deleted, the chain left as it was."""
    with attacker(trail) as s:
        s.execute(text("DELETE FROM audit_event WHERE id = 4"))
        s.commit()
    code, output = verify(trail)
    assert code == 1 and "broken at event 5" in output


def test_deleting_a_middle_row_and_recomputing_the_chain_is_caught_by_the_count(trail):
    """Bad input: event 4 deleted and every later hash recomputed: the chain holds, the count does not."""
    with attacker(trail) as s:
        s.execute(text("DELETE FROM audit_event WHERE id = 4"))
        recompute_chain(s)
        s.commit()
    code, output = verify(trail)
    assert code == 1
    assert "vouches for 10 events up to event 10" in output and "the table now has 9" in output
    assert "events were deleted between event 1 and event 10" in output


def test_editing_a_row_and_recomputing_the_chain_is_caught_by_the_signed_head(trail):
    """Bad input: event 3's patient changed, the chain recomputed (before: "intact")."""
    facade = trail.extensions["archivage"]
    for n in range(11, 16):  # five more events and a second checkpoint: the edit falls between the two
        facade.audit_now("hold.released", actor="gerante", patient_id=f"P{n}")
    with trail.app_context():
        assert facade.audit_checkpoint() == 2
    with attacker(trail) as s:
        s.execute(text("UPDATE audit_event SET patient_id = 'P99' WHERE id = 12"))
        recompute_chain(s)
        s.commit()
    code, output = verify(trail)
    assert code == 1
    # Checkpoint 1 (events 1..10) still holds; checkpoint 2 names the range the edit is in.
    assert "broken at event 11" in output and "events were rewritten between event 11 and event 15" in output


def test_a_checkpoint_changed_in_the_table_without_the_key_is_refused(trail):
    """Bad input: rows 6..10 deleted, the checkpoint row made to match the shorter chain (no key to re-sign)."""
    with attacker(trail) as s:
        s.execute(text("DELETE FROM audit_event WHERE id > 5"))
        head = s.execute(text("SELECT hash FROM audit_event WHERE id = 5")).scalar_one()
        s.execute(text("UPDATE audit_checkpoint SET last_event_id = 5, event_count = 5, head_hash = :h"), {"h": head})
        s.commit()
    code, output = verify(trail)
    assert code == 1
    assert "checkpoint 1 in the database (audit_checkpoint) has a bad signature" in output
    assert "events 6 to 10 are missing" in output  # the log's copy still vouches for ten


def test_a_checkpoint_forged_with_another_key_is_refused(trail, instance_path):
    """Bad input: the attacker signs his own checkpoint for a cut chain with a key of his own."""
    import hashlib
    import hmac as hmac_

    from archive_core import audit_checkpoints

    log = instance_path / "audit-checkpoints.log"
    line = json.loads(log.read_text().splitlines()[0])
    with attacker(trail) as s:
        s.execute(text("DELETE FROM audit_event WHERE id > 5"))
        head = s.execute(text("SELECT hash FROM audit_event WHERE id = 5")).scalar_one()
        line.update(last_event_id=5, event_count=5, head_hash=head)
        line["mac"] = hmac_.new(b"0" * 64, audit_checkpoints._signed_fields(*(line[k] for k in (
            "id", "at", "last_event_id", "event_count", "head_hash", "prev_mac", "reason"))), hashlib.sha256).hexdigest()
        s.execute(text("UPDATE audit_checkpoint SET last_event_id = 5, event_count = 5, head_hash = :h, mac = :m"),
                  {"h": head, "m": line["mac"]})
        s.commit()
    log.write_text(json.dumps(line) + "\n")
    code, output = verify(trail)
    assert code == 1 and "bad signature" in output


def test_deleting_the_checkpoint_log_lines_is_noticed(trail, instance_path):
    """Bad input: the last lines of instance/audit-checkpoints.log removed (the table keeps its copy)."""
    facade = trail.extensions["archivage"]
    facade.audit_now("hold.released", actor="gerante", patient_id="P1")
    assert facade.audit_checkpoint() == 2
    log = instance_path / "audit-checkpoints.log"
    log.write_text(log.read_text().splitlines(keepends=True)[0])
    code, output = verify(trail)
    assert code == 1 and "checkpoint 2" in output and "log lines deleted" in output
    log.write_text("")
    code, output = verify(trail)
    assert code == 1 and "checkpoint 1" in output and "log lines deleted" in output


def test_deleting_every_checkpoint_with_the_key_left_is_noticed(trail, instance_path):
    """Bad input: both copies of the checkpoints removed, then the last rows deleted."""
    with attacker(trail) as s:
        s.execute(text("DELETE FROM audit_checkpoint"))
        s.execute(text("DELETE FROM audit_event WHERE id > 5"))
        s.commit()
    (instance_path / "audit-checkpoints.log").unlink()
    code, output = verify(trail)
    assert code == 1 and "no checkpoint at all" in output


def test_the_checkpoint_job_is_idempotent_and_the_key_can_live_elsewhere(tmp_path, migrated, monkeypatch):
    """A second run with nothing new writes nothing; AUDIT_SIGNING_KEY_FILE and AUDIT_CHECKPOINT_LOG move them."""
    from backoffice import create_app
    from backoffice.scheduler import audit_checkpoint_job

    elsewhere = tmp_path / "other-volume"
    app = create_app({"TESTING": True, "INSTANCE_PATH": str(migrated.instance_path), "STORAGE_MIN_FREE_BYTES": 0,
                      "AUDIT_SIGNING_KEY_FILE": str(elsewhere / "k.key"),
                      "AUDIT_CHECKPOINT_LOG": str(elsewhere / "checkpoints.log")})
    facade = app.extensions["archivage"]
    try:
        facade.audit_now("hold.placed", actor="gerante", patient_id="P1")
        with app.app_context():
            audit_checkpoint_job()
            audit_checkpoint_job()
        assert len((elsewhere / "checkpoints.log").read_text().splitlines()) == 1
        assert stat.S_IMODE((elsewhere / "k.key").stat().st_mode) == 0o600
        assert not (migrated.instance_path / "audit-signing.key").exists()
        facade.audit_now("hold.released", actor="gerante", patient_id="P1")
        with app.app_context():
            audit_checkpoint_job()
        assert len((elsewhere / "checkpoints.log").read_text().splitlines()) == 2
        # Without its key, verify cannot vouch for anything and says so.
        os.rename(elsewhere / "k.key", elsewhere / "k.moved")
        code, output = verify(app)
        assert code == 1 and "signing key is missing" in output
    finally:
        facade.archive.close()


def test_a_crash_between_the_log_and_the_commit_is_repaired_by_the_next_checkpoint(trail, instance_path):
    """A signed log line whose database row never committed (simulated by deleting it) is put back."""
    with attacker(trail) as s:
        s.execute(text("DELETE FROM audit_checkpoint"))
        s.commit()
    code, output = verify(trail)
    assert code == 1 and "not in the database" in output
    facade = trail.extensions["archivage"]
    facade.audit_now("hold.released", actor="gerante", patient_id="P1")
    assert facade.audit_checkpoint() == 2
    code, output = verify(trail)
    assert code == 0, output


def test_the_scheduler_process_signs_the_head_on_start(tmp_path):
    """`flask --app wsgi scheduler run` as a child process writes the first checkpoint (job audit_checkpoint),
    and `audit verify` run as a command then vouches for the events; without the job there is no log."""
    import subprocess
    import sys
    import time

    from archive_core.archive import Archive
    from archive_core.audit import record
    from archive_core.config import Settings
    from archive_core.db import write_session
    from tests.helpers import migrate
    from tests.servers import ROOT, archive_env, flask_cli

    instance = tmp_path / "instance"
    instance.mkdir()
    settings = Settings(instance_path=instance)
    migrate(settings.database_url)
    archive = Archive.open(settings)
    with write_session(archive.sessions) as s:
        for n in range(3):
            record(s, "hold.placed", actor="gerante", patient_id=f"P{n}")
    archive.close()
    log = instance / "audit-checkpoints.log"
    child = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "scheduler", "run"], cwd=ROOT,
                             env={**os.environ, **archive_env(instance)}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and log.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        child.terminate()
        child.wait(timeout=30)
    line = json.loads(log.read_text().splitlines()[0])
    assert (line["reason"], line["event_count"], line["last_event_id"]) == ("periodic", 3, 3)
    result = flask_cli(instance, "audit", "verify")
    assert result.returncode == 0 and "3 events, 1 signed checkpoints" in result.stdout, result.stdout
