"""Move a study, merge patients, move to the archive tier: all of it or none of it, whatever fails.

For each operation a failure is injected at each step (storage full while writing the new files,
a database error at the audit write and at the commit, the process killed with SIGKILL while files
are being written and after the commit), then the database, the files on disk and the audit trail
are checked to show either the whole action or nothing, and ``archive fsck`` and ``audit verify``
(run as commands) are clean. Before: a move whose file write failed was committed by the request's
end hook with the study under the other patient, some files carrying the old identity and no audit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from tests.retention_support import add_study, bearer, make_user, sign_in
from tests.servers import ROOT, archive_env, flask_cli

OPERATIONS = ["move", "merge", "tier"]
ACTION = {"move": "correction.study_moved", "merge": "correction.patients_merged", "tier": "tier.moved"}


def _state(archive, study_uid: str) -> dict:
    """What a user could observe: owner, tiers, identity inside each indexed file, audit actions, files on disk."""
    from pydicom import dcmread

    from archive_core.audit import AuditEvent
    from archive_core.index.models import Instance, Patient, Series, Study

    with archive.sessions() as s:
        owner = s.scalar(select(Patient.patient_id).join(Study, Study.patient_pk == Patient.id)
                         .where(Study.study_uid == study_uid))
        source_gone = s.scalar(select(Patient.deleted_at).where(Patient.patient_id == "P-A")) is not None
        rows = s.execute(select(Instance.tier, Instance.storage_key).join(Series).join(Study)
                         .where(Study.study_uid == study_uid)).all()
        all_rows = {(tier, key) for tier, key in s.execute(select(Instance.tier, Instance.storage_key))}
        actions = set(s.scalars(select(AuditEvent.action)))
    on_file = set()
    for tier, key in rows:
        with archive.store_for(tier).open(key) as f:
            on_file.add(str(dcmread(f, stop_before_pixels=True).PatientID))
    disk = {(tier, key) for tier in ("active", "archive") for key in archive.store_for(tier).keys()
            if key.endswith(".dcm")}
    return {"owner": owner, "source_gone": source_gone, "tiers": {t for t, _k in rows}, "on_file": on_file,
            "actions": actions, "disk": disk, "indexed": all_rows}


def _assert_all_or_nothing(operation: str, state: dict, *, done: bool, settled: bool = True) -> None:
    action = ACTION[operation]
    if done:
        assert action in state["actions"]
        if operation == "tier":
            assert state["tiers"] == {"archive"} and state["owner"] == "P-A" and state["on_file"] == {"P-A"}
        else:
            assert state["owner"] == "P-B" and state["on_file"] == {"P-B"} and state["tiers"] == {"active"}
            assert state["source_gone"] is (operation == "merge")
    else:
        assert not set(ACTION.values()) & state["actions"]
        assert state["owner"] == "P-A" and state["on_file"] == {"P-A"} and state["tiers"] == {"active"}
        assert not state["source_gone"]
    if settled:  # no file the index does not use, none it uses missing
        assert state["disk"] == state["indexed"]


def _arrange(archive, tmp_path) -> tuple[str, int]:
    """P-A with a two-image study (the one acted on), P-B with one; returns the study UID and P-A's row."""
    from archive_core.index.models import Patient

    study = add_study(archive, tmp_path, "P-A", "20240101", images=2)
    add_study(archive, tmp_path, "P-B", "20200101", images=1)
    with archive.sessions() as s:
        return study, s.scalar(select(Patient.id).where(Patient.patient_id == "P-A"))


# -- in the web process: storage full, database errors ------------------------------------------------


@pytest.fixture
def web(database_url, instance_path):
    """The web app on SQLite and on PostgreSQL."""
    from backoffice import create_app
    from tests.helpers import migrate

    migrate(database_url)
    app = create_app({"TESTING": True, "INSTANCE_PATH": str(instance_path), "DATABASE_URL": database_url,
                      "STORAGE_MIN_FREE_BYTES": 0})
    app.config["PROPAGATE_EXCEPTIONS"] = False  # a 500 as in production, not an exception in the test
    yield app
    app.extensions["archivage"].archive.close()


def _run(operation: str, app, client, headers, study: str, pk: int) -> int | None:
    if operation == "move":
        return client.post(f"/api/v1/studies/{study}/move", json={"patient_id": "P-B", "reason": "erreur"},
                           headers=headers).status_code
    if operation == "merge":
        return client.post("/api/v1/patients/P-A/merge", json={"into_patient_id": "P-B", "reason": "doublon"},
                           headers=headers).status_code
    try:
        app.extensions["archivage"].move_patient_to_archive(pk)
    except Exception as exc:  # noqa: BLE001  (the scheduler logs it; here the outcome is what counts)
        return type(exc).__name__
    return 200


def _storage_full_on_second_write(monkeypatch, archive):
    from archive_core.errors import StorageFull

    calls = {"n": 0}
    for store in (archive.store, archive.archive_store):
        for name in ("put",):  # put_bytes and put_file write through put
            original = getattr(store, name)

            def full(*a, _original=original, **k):
                calls["n"] += 1
                if calls["n"] == 2:
                    raise StorageFull("No space left on device")
                return _original(*a, **k)

            monkeypatch.setattr(store, name, full)


def _database_error_at_audit(monkeypatch, archive):
    from archive_core import audit

    def broken(*a, **k):
        raise OperationalError("INSERT INTO audit_event", {}, Exception("disk I/O error"))

    monkeypatch.setattr(audit, "record", broken)


def _database_error_at_commit(monkeypatch, archive):
    """The commit of the transaction that holds the action's audit event fails (everything else commits)."""
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    from archive_core.audit import AuditEvent

    def mark(session, _context):
        if any(isinstance(o, AuditEvent) and o.action in ACTION.values() for o in session.new):
            session.info["action audited"] = True

    event.listen(Session, "before_flush", mark)
    original = Session.commit

    def commit(self):
        if self.info.pop("action audited", False):
            raise OperationalError("COMMIT", {}, Exception("database is locked"))
        return original(self)

    monkeypatch.setattr(Session, "commit", commit)
    monkeypatch.setattr(sys.modules[__name__], "_unhook", lambda: event.remove(Session, "before_flush", mark))


def _unhook() -> None:
    pass


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("failure", [_storage_full_on_second_write, _database_error_at_audit,
                                     _database_error_at_commit], ids=["storage-full", "db-error-audit", "db-error-commit"])
def test_a_failure_in_the_web_or_scheduler_process_leaves_nothing(web, tmp_path, monkeypatch, operation, failure):
    """Bad input: storage full at the second file, the audit insert failing, the commit failing."""
    archive = web.extensions["archivage"].archive
    headers = bearer(make_user(web, "gerante", "manager"))
    study, pk = _arrange(archive, tmp_path)
    with monkeypatch.context() as m:
        failure(m, archive)
        try:
            outcome = _run(operation, web, web.test_client(), headers, study, pk)
        finally:
            _unhook()
    assert outcome not in (200, None), outcome
    _assert_all_or_nothing(operation, _state(archive, study), done=False)
    assert not list((Path(web.instance_path) / "pending-files").glob("*"))
    runner = web.test_cli_runner()
    fsck = runner.invoke(args=["archive", "fsck"])
    assert fsck.exit_code == 0 and "0 problems" in fsck.output, fsck.output
    assert runner.invoke(args=["audit", "verify"]).exit_code == 0
    # And the same action, retried once the cause is gone, is whole.
    assert _run(operation, web, web.test_client(), headers, study, pk) == 200
    _assert_all_or_nothing(operation, _state(archive, study), done=True)


def test_the_corrections_page_rolls_back_a_move_when_storage_is_full(web, tmp_path, monkeypatch):
    """The issue's reproduction: the page turns the error into a message and a redirect; nothing is committed."""
    archive = web.extensions["archivage"].archive
    web.config["WTF_CSRF_ENABLED"] = False
    client = web.test_client()
    sign_in(client, web, "gerante", "manager")
    study, _pk = _arrange(archive, tmp_path)
    _storage_full_on_second_write(monkeypatch, archive)
    response = client.post("/retention/corrections", data={
        "action": "move", "move-study_uid": study, "move-patient_id": "P-B", "move-reason": "erreur d'accueil"})
    assert response.status_code == 302
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "error" in page  # the flashed message is shown
    _assert_all_or_nothing("move", _state(archive, study), done=False)


# -- a separate process killed with SIGKILL -------------------------------------------------------------------


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("step", ["mid-write", "after-commit"])
def test_a_process_killed_mid_operation_leaves_all_or_nothing(tmp_path, operation, step):
    """Bad input: kill -9 after the first new file is written (nothing committed), and after the commit
    (old files not yet deleted). ``archive fsck`` is clean at once (leftovers are listed as pending),
    ``fsck --repair`` finishes the job, ``audit verify`` holds against a checkpoint taken before."""
    from archive_core.archive import Archive
    from archive_core.config import Settings
    from tests.helpers import migrate

    instance = tmp_path / "instance"
    instance.mkdir()
    settings = Settings(instance_path=instance, STORAGE_MIN_FREE_BYTES=0)
    migrate(settings.database_url)
    archive = Archive.open(settings)
    try:
        study, pk = _arrange(archive, tmp_path)
        from backoffice import create_app

        app = create_app({"INSTANCE_PATH": str(instance), "STORAGE_MIN_FREE_BYTES": 0})
        token = make_user(app, "gerante", "manager")
        app.extensions["archivage"].archive.close()
    finally:
        archive.close()
    assert flask_cli(instance, "audit", "checkpoint").returncode == 0
    args = {"move": [study, "P-B", token], "merge": ["P-A", "P-B", token], "tier": [str(pk)]}[operation]
    child = subprocess.Popen([sys.executable, "-m", "tests.crash_child", str(instance), operation, step, *args],
                             cwd=ROOT, env={**os.environ, **archive_env(instance)}, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "PAUSED"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
    archive = Archive.open(settings)
    try:
        _assert_all_or_nothing(operation, _state(archive, study), done=step == "after-commit", settled=False)
        fsck = flask_cli(instance, "archive", "fsck")
        assert fsck.returncode == 0 and "0 problems" in fsck.stdout, fsck.stdout
        assert "pending" in fsck.stdout  # the leftover is named, not hidden
        repair = flask_cli(instance, "archive", "fsck", "--repair")
        assert repair.returncode == 0 and "finished an interrupted file change" in repair.stdout, repair.stdout
        again = flask_cli(instance, "archive", "fsck")
        assert again.returncode == 0 and "pending" not in again.stdout, again.stdout
        _assert_all_or_nothing(operation, _state(archive, study), done=step == "after-commit")
        verify = flask_cli(instance, "audit", "verify")
        assert verify.returncode == 0 and "intact" in verify.stdout, verify.stdout
    finally:
        archive.close()


def test_a_handled_error_turned_into_a_redirect_commits_nothing(web):
    """Bad input: a view writes (an audit event), then raises an error its handler turns into a flash and a
    302; before, the request's end hook committed the half-done work because the status was below 400."""
    from flask import redirect

    from backoffice.extensions import db, facade

    class Refused(Exception):
        pass

    web.config["WTF_CSRF_ENABLED"] = False

    @web.route("/half-done", methods=["POST"])
    def half_done():
        facade().audit(db(), "hold.placed", actor="gerante", patient_id="P-A", detail={"reason": "x"})
        raise Refused()

    web.register_error_handler(Refused, lambda exc: redirect("/"))
    assert web.test_client().post("/half-done").status_code == 302
    from archive_core.audit import AuditEvent

    with web.extensions["archivage"].new_session() as s:
        assert s.scalar(select(AuditEvent.id).where(AuditEvent.action == "hold.placed")) is None
