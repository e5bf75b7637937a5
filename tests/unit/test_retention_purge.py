"""The sweep on a controlled clock, two-step purges, approval on every path, crash and rerun, the certificate."""

from __future__ import annotations

import subprocess
from datetime import date, datetime, timezone

import pytest
import time_machine
from sqlalchemy import select

from tests.helpers import STORAGE_BACKENDS, require_tool
from tests.retention_support import add_study, bearer, instance_files, make_user

TODAY = date(2026, 11, 28)


@pytest.fixture
def archive_of(facade):
    return facade.archive


@pytest.fixture
def manager(app):
    return bearer(make_user(app, "gerante", "manager"))


@pytest.fixture
def executor(app):
    """A second manager: the scheduler's batches are approved by one person and executed by another."""
    return bearer(make_user(app, "associe", "manager"))


@pytest.fixture
def patients(archive_of, tmp_path):
    """OLD is due (last visit 2000), MID belongs in the archive tier, NEW stays active."""
    return {
        "OLD": add_study(archive_of, tmp_path, "OLD", "20000105"),
        "MID": add_study(archive_of, tmp_path, "MID", "20150101"),
        "NEW": add_study(archive_of, tmp_path, "NEW", "20250101"),
    }


def _sweep(app, today=TODAY):
    from backoffice.scheduler import retention_sweep_job

    with app.app_context():
        retention_sweep_job(today=today)


def _batches(facade):
    from backoffice.retention.models import PurgeBatch

    with facade.new_session() as s:
        return [(b.id, b.status, [i.patient_id for i in b.items]) for b in s.scalars(select(PurgeBatch))]


def _visible(facade):
    with facade.new_session() as s:
        return {r.patient_id for r in facade.patient_records(s)}


def _tiers(facade):
    with facade.new_session() as s:
        return {r.patient_id: (r.instances_active, r.instances_archive) for r in facade.patient_records(s)}


def test_sweep_moves_tiers_and_proposes_without_deleting(app, facade, archive_of, patients):
    _sweep(app)
    assert _tiers(facade) == {"OLD": (0, 2), "MID": (0, 2), "NEW": (2, 0)}
    assert _batches(facade) == [(1, "proposed", ["OLD"])]
    assert len(instance_files(archive_of, patients["OLD"])) == 2  # proposed is not destroyed
    _sweep(app)  # idempotent: the same patient is not proposed twice
    assert _batches(facade) == [(1, "proposed", ["OLD"])]


def test_sweep_on_an_earlier_day_proposes_nothing(app, facade, patients):
    _sweep(app, today=date(2019, 1, 1))
    assert _batches(facade) == []
    assert _tiers(facade)["MID"] == (2, 0)  # less than 5 years after 2015-01-01 then


def test_dry_run_changes_nothing(app, runner, facade, patients):
    with app.app_context():
        result = runner.invoke(args=["retention", "sweep", "--dry-run", "--today", "2026-11-28"])
    assert result.exit_code == 0, result.output
    assert "2 patients to move" in result.output and "1 patients due" in result.output
    assert _batches(facade) == [] and _tiers(facade)["MID"] == (2, 0)


def test_patients_on_hold_or_without_birth_date_are_not_proposed(app, client, manager, facade, archive_of, tmp_path,
                                                                 patients):
    add_study(archive_of, tmp_path, "NOBIRTH", "19990101", birth_date=None)
    with time_machine.travel(datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)):  # a hold placed before the sweep's day
        response = client.post("/api/v1/retention/holds", json={"patient_id": "OLD", "reason": "réclamation"},
                                headers=manager)
    assert response.status_code == 201, response.get_json()
    _sweep(app)
    assert _batches(facade) == []


# -- approval on every path ----------------------------------------------------------------------


@pytest.fixture
def proposed(app, facade, patients):
    _sweep(app)
    return 1


def test_api_refuses_to_execute_a_batch_not_approved(client, manager, archive_of, patients, proposed):
    response = client.post("/api/v1/retention/batches/1/execute", headers=manager)
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "not_approved"
    assert len(instance_files(archive_of, patients["OLD"])) == 2


def test_cli_refuses_to_purge_a_batch_not_approved(app, runner, manager, archive_of, patients, proposed):
    with app.app_context():
        result = runner.invoke(args=["retention", "purge", "1", "--as", "gerante", "--yes"])
    assert result.exit_code == 1 and "refused" in result.output
    assert len(instance_files(archive_of, patients["OLD"])) == 2


def test_job_never_executes_a_batch_not_approved(app, facade, archive_of, patients, proposed):
    _sweep(app, today=date(2030, 1, 1))
    assert _batches(facade)[0][1] == "proposed"
    assert len(instance_files(archive_of, patients["OLD"])) == 2


def test_a_rejected_batch_is_never_executed(client, manager, facade, archive_of, patients, proposed):
    assert client.post("/api/v1/retention/batches/1/reject", json={"reason": "à revoir"}, headers=manager).status_code == 200
    assert client.post("/api/v1/retention/batches/1/execute", headers=manager).status_code == 409
    assert len(instance_files(archive_of, patients["OLD"])) == 2


def test_approval_needs_a_reason_and_a_manager(app, client, manager, proposed):
    assert client.post("/api/v1/retention/batches/1/approve", json={}, headers=manager).status_code == 400
    admin = bearer(make_user(app, "root", "admin"))
    assert client.post("/api/v1/retention/batches/1/approve", json={"reason": "ok"}, headers=admin).status_code == 403


# -- an approved purge ------------------------------------------------------------------------------


def _approve(client, manager, batch_id=1):
    response = client.post(f"/api/v1/retention/batches/{batch_id}/approve",
                           json={"reason": "échéance légale dépassée, vérifié"}, headers=manager)
    assert response.status_code == 200, response.get_json()


@STORAGE_BACKENDS
def test_approved_batch_is_executed_with_audit_and_certificate(app, client, manager, executor, facade, archive_of,
                                                               patients, proposed):
    from archive_core.audit import AuditEvent, verify

    _approve(client, manager)
    response = client.post("/api/v1/retention/batches/1/execute", headers=executor)
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "executed" and body["instances"] == 2
    assert (body["decided_by"], body["executed_by"]) == ("gerante", "associe")
    assert instance_files(archive_of, patients["OLD"]) == []
    assert len(instance_files(archive_of, patients["MID"])) == 2  # nothing else touched
    assert _visible(facade) == {"MID", "NEW"}
    with facade.new_session() as s:
        assert facade.stats(s).patients == 2
        actions = list(s.scalars(select(AuditEvent.action).where(AuditEvent.action.like("purge.%")).order_by(AuditEvent.id)))
        assert actions == ["purge.proposed", "purge.approved", "purge.tombstoned", "purge.executed"]
        assert verify(s).ok


def test_certificate_pdf_says_what_why_who(app, client, manager, executor, facade, patients, proposed):
    pdftotext = require_tool("pdftotext")
    _approve(client, manager)
    client.post("/api/v1/retention/batches/1/execute", headers=executor)
    from backoffice.retention.models import PurgeBatch

    with facade.new_session() as s:
        batch = s.get(PurgeBatch, 1)
        name, digest = batch.certificate_name, batch.certificate_sha256
    pdf = __import__("pathlib").Path(app.instance_path) / "documents" / "certificates" / name
    text = subprocess.run([pdftotext, "-layout", str(pdf), "-"], capture_output=True, text=True, check=True,
                          timeout=60).stdout
    assert "Certificat de destruction" in text
    assert "OLD" in text and "R1112-7" in text and "20 ans après le dernier passage" in text
    assert "gerante" in text and "échéance légale dépassée" in text
    assert patients["OLD"][:20] in text.replace("\n", "")
    assert "2 images" in text and "Exécuté par associe" in text
    assert __import__("hashlib").sha256(pdf.read_bytes()).hexdigest() == digest


@STORAGE_BACKENDS
def test_a_crash_between_tombstones_and_files_is_finished_by_a_rerun(app, client, manager, facade, archive_of,
                                                                     patients, proposed, monkeypatch):
    from backoffice.retention.certificate import certificates_dir, render_certificate
    from backoffice.retention.purge import run_purge

    _approve(client, manager)
    real = type(facade).delete_tombstoned_files

    def crash(self, uids):
        raise OSError("power cut")

    monkeypatch.setattr(type(facade), "delete_tombstoned_files", crash)
    with app.app_context(), pytest.raises(OSError):
        run_purge(facade, 1, certificates=certificates_dir(), render=render_certificate, actor="associe", today=TODAY)
    assert _batches(facade)[0][1] == "tombstoned"
    assert _visible(facade) == {"MID", "NEW"}  # tombstones committed with their audit entries
    assert len(instance_files(archive_of, patients["OLD"])) == 2  # files not yet deleted

    monkeypatch.setattr(type(facade), "delete_tombstoned_files", real)
    _sweep(app)  # the job (or `retention purge 1`) finishes what was approved
    assert _batches(facade)[0][1] == "executed"
    assert instance_files(archive_of, patients["OLD"]) == []
    assert len(instance_files(archive_of, patients["MID"])) == 2


def test_a_hold_placed_after_approval_wins(client, manager, executor, facade, archive_of, patients, proposed):
    _approve(client, manager)
    client.post("/api/v1/retention/holds", json={"patient_id": "OLD", "reason": "enquête"}, headers=manager)
    response = client.post("/api/v1/retention/batches/1/execute", headers=executor)
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "changed_since_approval"
    assert len(instance_files(archive_of, patients["OLD"])) == 2
    assert "OLD" in _visible(facade)
    assert _batches(facade) == [(1, "proposed", ["OLD"])]  # sent back for a new decision


def test_file_deletion_refuses_rows_not_tombstoned(facade, archive_of, patients):
    from archive_core.index.models import Instance

    with facade.new_session() as s:
        uids = list(s.scalars(select(Instance.sop_instance_uid)))
    assert facade.delete_tombstoned_files(uids) == 0
    assert len(instance_files(archive_of, patients["OLD"])) == 2


def test_a_purged_patient_who_comes_back_is_a_new_record(app, client, manager, executor, facade, archive_of, tmp_path,
                                                         patients, proposed):
    _approve(client, manager)
    assert client.post("/api/v1/retention/batches/1/execute", headers=executor).status_code == 200
    add_study(archive_of, tmp_path, "OLD", "20261127")
    body = client.get("/api/v1/patients/OLD/retention", headers=manager).get_json()
    assert body["keep_until"] == "2046-11-27"


def test_sweep_and_approved_purge_on_both_databases(database_url, instance_path, tmp_path):
    """The same sweep, approval and purge on SQLite and on a real PostgreSQL."""
    from backoffice import create_app
    from tests.helpers import migrate
    from backoffice.retention import batches, purge, sweep
    from backoffice.retention.certificate import certificates_dir, render_certificate

    migrate(database_url)
    app = create_app({"TESTING": True, "INSTANCE_PATH": str(instance_path), "STORAGE_MIN_FREE_BYTES": 0,
                      "DATABASE_URL": database_url})
    facade = app.extensions["archivage"]
    try:
        old = add_study(facade.archive, tmp_path, "OLD", "20000105")
        add_study(facade.archive, tmp_path, "MID", "20150101")
        with app.app_context():
            report = sweep.sweep(facade, today=TODAY, certificates=certificates_dir(), render=render_certificate)
            assert report.proposed_batch_id == 1 and len(report.to_move) == 2
            with facade.new_session(write=True) as s:
                batches.decide_batch(s, facade, 1, approve=True, reason="vérifié", actor="gerante", today=TODAY)
                s.commit()
            batch = purge.run_purge(facade, 1, certificates=certificates_dir(), render=render_certificate,
                                    actor="associe", today=TODAY)
        assert batch.status == "executed" and batch.instances == 2
        assert instance_files(facade.archive, old) == []
        assert _visible(facade) == {"MID"}
        with facade.new_session() as s:
            usage = facade.storage_usage(s)
        assert [(u.tier, u.year, u.modality, u.instances) for u in usage] == [("archive", "2015", "CT", 2)]
    finally:
        facade.archive.close()


def test_scheduler_registers_the_sweep_once_with_catch_up(app, monkeypatch):
    from apscheduler.schedulers.blocking import BlockingScheduler

    from backoffice import scheduler

    seen = {}

    def fake_start(self, *args, **kwargs):
        job = self.get_job("retention_sweep")
        seen.update(coalesce=job.coalesce, max_instances=job.max_instances, misfire=job.misfire_grace_time,
                    trigger=str(job.trigger))
        raise KeyboardInterrupt

    monkeypatch.setattr(BlockingScheduler, "start", fake_start)
    monkeypatch.setattr(scheduler, "acquire_lock", lambda path: object())  # the real one is held for life
    scheduler.run_scheduler(app)
    assert seen == {"coalesce": True, "max_instances": 1, "misfire": None,
                    "trigger": "cron[hour='2', minute='30']"}
