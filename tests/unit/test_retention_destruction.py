"""Destruction needs two people and today's facts (issue 10 §2): the hold bypass, four eyes on every
path, corrections refused while a batch is open, impossible death dates, shortening confirmed, and
executions that are whole or nothing. "Today" is set on the app's clock in every test."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest
from sqlalchemy import func, select

from tests.retention_support import add_study, bearer, instance_files, make_user, sign_in

NOW = datetime(2026, 6, 15, 10, 0, tzinfo=timezone.utc)
TODAY = date(2026, 6, 15)


@pytest.fixture
def clocked(app):
    app.config["CLOCK"] = lambda: NOW
    return app


@pytest.fixture
def gerante(clocked):
    return bearer(make_user(clocked, "gerante", "manager"))


@pytest.fixture
def associe(clocked):
    """The practice's second manager account (docs/retention.md: a one-doctor practice creates one)."""
    return bearer(make_user(clocked, "associe", "manager"))


def _studies_of(facade, patient_id):
    with facade.new_session() as s:
        return {st.study_uid for st in facade.visible_studies(s, patient=(patient_id, ""))}


def _actions(facade, prefix=""):
    from archive_core.audit import AuditEvent

    with facade.new_session() as s:
        return list(s.scalars(select(AuditEvent.action).where(AuditEvent.action.like(prefix + "%"))
                              .order_by(AuditEvent.id)))


def _batch(client, headers, batch_id):
    return client.get(f"/api/v1/retention/batches/{batch_id}", headers=headers).get_json()


def _request_deletion(client, headers, study):
    response = client.post(f"/api/v1/studies/{study}/deletion-requests", json={"reason": "examen de test"},
                           headers=headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def _approve(client, headers, batch_id):
    return client.post(f"/api/v1/retention/batches/{batch_id}/approve", json={"reason": "vérifié"}, headers=headers)


# -- the hold bypass ---------------------------------------------------------------------------------


def test_hold_bypass_reproduced_through_the_api_is_refused(client, gerante, associe, facade, tmp_path):
    """The attack: request deletion of P-ONE's study, have it approved, hold P-HELD, move the study to
    P-HELD, execute. Before: the held patient's study was destroyed and the certificate named P-ONE."""
    study = add_study(facade.archive, tmp_path, "P-ONE", "20240102")
    held = add_study(facade.archive, tmp_path, "P-HELD", "20230101")
    batch_id = _request_deletion(client, gerante, study)
    assert _approve(client, associe, batch_id).status_code == 200
    assert client.post("/api/v1/retention/holds", json={"patient_id": "P-HELD", "reason": "litige"},
                       headers=gerante).status_code == 201

    response = client.post(f"/api/v1/studies/{study}/move", json={"patient_id": "P-HELD", "reason": "erreur"},
                           headers=gerante)
    assert response.status_code == 409
    error = response.get_json()["error"]
    assert error["code"] == "in_open_batch" and f"n° {batch_id}" in error["message"]
    assert _studies_of(facade, "P-HELD") == {held} and _studies_of(facade, "P-ONE") == {study}

    # What is executed is what was approved: P-ONE's study, never anything of the held patient.
    body = client.post(f"/api/v1/retention/batches/{batch_id}/execute", headers=associe).get_json()
    assert body["status"] == "executed" and [i["patient_id"] for i in body["items"]] == ["P-ONE"]
    assert instance_files(facade.archive, study) == []
    assert len(instance_files(facade.archive, held)) == 2


def test_an_owner_changed_behind_the_services_sends_the_batch_back(client, gerante, associe, facade, tmp_path):
    """Bad input: the study's owner changed after approval by a path that skips the services' refusal
    (the core's move, as another process could): execution re-checks the owner and destroys nothing."""
    study = add_study(facade.archive, tmp_path, "P-ONE", "20240102")
    add_study(facade.archive, tmp_path, "P-HELD", "20230101")
    batch_id = _request_deletion(client, gerante, study)
    assert _approve(client, associe, batch_id).status_code == 200
    client.post("/api/v1/retention/holds", json={"patient_id": "P-HELD", "reason": "litige"}, headers=gerante)
    with facade.new_session(write=True) as s:
        facade.move_study(s, study, "P-HELD")
        s.commit()

    response = client.post(f"/api/v1/retention/batches/{batch_id}/execute", headers=associe)
    assert response.status_code == 409
    error = response.get_json()["error"]
    assert error["code"] == "changed_since_approval" and "patient propriétaire" in error["message"]
    assert len(instance_files(facade.archive, study)) == 2 and study in _studies_of(facade, "P-HELD")
    batch = _batch(client, associe, batch_id)
    assert batch["status"] == "proposed" and batch["decided_by"] is None
    assert _actions(facade, "purge.")[-1] == "purge.returned"
    # The new decision sees today's owner, who is on hold: it cannot be approved.
    response = _approve(client, associe, batch_id)
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "on_hold"


def test_a_new_visit_after_approval_sends_the_batch_back(clocked, client, gerante, associe, facade, tmp_path):
    """Bad input: a study arrives for a patient whose record was approved for destruction."""
    from backoffice.scheduler import retention_sweep_job

    old = add_study(facade.archive, tmp_path, "OLD", "20000105")
    with clocked.app_context():
        retention_sweep_job(today=TODAY)
    assert _approve(client, gerante, 1).status_code == 200
    add_study(facade.archive, tmp_path, "OLD", "20260601")
    response = client.post("/api/v1/retention/batches/1/execute", headers=associe)
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "changed_since_approval"
    assert len(instance_files(facade.archive, old)) == 2
    # Approved again, the record is no longer due: it is left out and nothing remains to destroy.
    response = _approve(client, gerante, 1)
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "nothing_to_destroy"


# -- four eyes -----------------------------------------------------------------------------------------


def test_the_requester_can_neither_approve_nor_execute(client, gerante, associe, facade, tmp_path):
    """Bad input: the manager who asked for the destruction approves it, then executes it."""
    study = add_study(facade.archive, tmp_path, "P-ONE", "20240102")
    batch_id = _request_deletion(client, gerante, study)
    response = _approve(client, gerante, batch_id)
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "same_person"
    assert _batch(client, gerante, batch_id)["status"] == "proposed"
    assert _approve(client, associe, batch_id).status_code == 200
    response = client.post(f"/api/v1/retention/batches/{batch_id}/execute", headers=gerante)
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "same_person"
    assert len(instance_files(facade.archive, study)) == 2
    # The approver may execute a batch a person requested: two people decided.
    assert client.post(f"/api/v1/retention/batches/{batch_id}/execute", headers=associe).status_code == 200
    assert instance_files(facade.archive, study) == []


@pytest.fixture
def sweep_batch(clocked, facade, tmp_path):
    """The scheduler proposes OLD (last visit 2000): requester "scheduler", not a person."""
    from backoffice.scheduler import retention_sweep_job

    old = add_study(facade.archive, tmp_path, "OLD", "20000105", birth_date="19650304")
    with clocked.app_context():
        retention_sweep_job(today=TODAY)
    return old


def test_a_scheduler_batch_is_approved_by_any_manager_and_executed_by_another(client, gerante, associe, facade,
                                                                             sweep_batch):
    """Bad input: the one manager who approved the scheduler's batch executes it alone."""
    assert _approve(client, gerante, 1).status_code == 200
    response = client.post("/api/v1/retention/batches/1/execute", headers=gerante)
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "same_person"
    assert len(instance_files(facade.archive, sweep_batch)) == 2
    assert client.post("/api/v1/retention/batches/1/execute", headers=associe).get_json()["executed_by"] == "associe"


def test_the_sweep_never_starts_an_approved_execution(clocked, client, gerante, facade, sweep_batch):
    """Bad input: an approved batch left for the nightly job, which is not a second person."""
    from backoffice.scheduler import retention_sweep_job

    assert _approve(client, gerante, 1).status_code == 200
    with clocked.app_context():
        retention_sweep_job(today=TODAY)
    assert _batch(client, gerante, 1)["status"] == "approved"
    assert len(instance_files(facade.archive, sweep_batch)) == 2


def test_pages_refuse_the_same_person_and_ask_for_confirmation_with_names(clocked, client, facade, sweep_batch):
    """Bad input: the approver opens the execution page; then another manager posts without confirming."""
    clocked.config["WTF_CSRF_ENABLED"] = False
    sign_in(client, clocked, "gerante", "manager")
    client.post("/retention/batches/1/approve", data={"reason": "vérifié"})
    response = client.get("/retention/batches/1/execute", follow_redirects=True)
    assert "un autre responsable doit l&#39;exécuter" in response.get_data(as_text=True)

    sign_in(client, clocked, "associe", "manager")
    page = client.get("/retention/batches/1/execute").get_data(as_text=True)
    # Names, birth dates and exams, not IDs.
    assert "DUPONT Jean" in page and "04/03/1965" in page and "05/01/2000" in page and "CT" in page
    assert ">OLD<" not in page
    response = client.post("/retention/batches/1/execute", data={}, follow_redirects=True)
    assert "cochez la confirmation" in response.get_data(as_text=True)
    assert len(instance_files(facade.archive, sweep_batch)) == 2
    client.post("/retention/batches/1/execute", data={"confirmed": "y"})
    assert instance_files(facade.archive, sweep_batch) == []


def test_cli_purge_names_a_second_manager_and_asks_for_confirmation(clocked, runner, client, gerante, facade,
                                                                    sweep_batch):
    """Bad input: the approver runs the purge from the shell; an unknown login; a "no" at the prompt."""
    assert _approve(client, gerante, 1).status_code == 200
    make_user(clocked, "associe", "manager")
    make_user(clocked, "root", "admin")
    with clocked.app_context():
        for login in ("gerante", "nobody", "root"):
            result = runner.invoke(args=["retention", "purge", "1", "--as", login, "--yes"])
            assert result.exit_code == 1 and "refused" in result.output, result.output
        result = runner.invoke(args=["retention", "purge", "1", "--as", "associe"], input="n\n")
        assert result.exit_code == 1 and "nothing destroyed" in result.output
        assert "Dupont Jean (born 04/03/1965)" in result.output and "05/01/2000 CT" in result.output
        assert len(instance_files(facade.archive, sweep_batch)) == 2
        result = runner.invoke(args=["retention", "purge", "1", "--as", "associe"], input="y\n")
    assert result.exit_code == 0, result.output
    assert instance_files(facade.archive, sweep_batch) == []
    assert _batch(client, gerante, 1)["executed_by"] == "associe"


# -- corrections while a batch is open ---------------------------------------------------------------


def test_moves_and_merges_touching_an_open_batch_are_refused(clocked, client, gerante, facade, tmp_path,
                                                             sweep_batch):
    """Bad input: moving a study whose deletion is requested, moving a study into a record proposed
    for destruction, merging either patient."""
    study = add_study(facade.archive, tmp_path, "P-ONE", "20240102")
    other = add_study(facade.archive, tmp_path, "P-TWO", "20240103")
    _request_deletion(client, gerante, study)
    cases = [
        (f"/api/v1/studies/{study}/move", {"patient_id": "P-TWO"}),
        (f"/api/v1/studies/{other}/move", {"patient_id": "OLD"}),
        (f"/api/v1/studies/{sweep_batch}/move", {"patient_id": "P-TWO"}),
        ("/api/v1/patients/P-ONE/merge", {"into_patient_id": "P-TWO"}),
        ("/api/v1/patients/P-TWO/merge", {"into_patient_id": "OLD"}),
    ]
    for path, body in cases:
        response = client.post(path, json={**body, "reason": "erreur"}, headers=gerante)
        assert response.status_code == 409, (path, response.get_json())
        assert response.get_json()["error"]["code"] == "in_open_batch"
    assert _studies_of(facade, "P-ONE") == {study} and _studies_of(facade, "P-TWO") == {other}
    assert _studies_of(facade, "OLD") == {sweep_batch}
    assert "correction.study_moved" not in _actions(facade)


def test_corrections_page_says_why_a_move_is_refused(clocked, client, gerante, facade, tmp_path):
    clocked.config["WTF_CSRF_ENABLED"] = False
    study = add_study(facade.archive, tmp_path, "P-ONE", "20240102")
    add_study(facade.archive, tmp_path, "P-TWO", "20240103")
    _request_deletion(client, gerante, study)
    sign_in(client, clocked, "secretaire", "manager")
    response = client.post("/retention/corrections", data={"action": "move", "move-study_uid": study,
                                                           "move-patient_id": "P-TWO", "move-reason": "erreur"},
                           headers={"Referer": "http://localhost/retention/corrections"}, follow_redirects=True)
    assert "fait partie du lot de destruction n° 1" in response.get_data(as_text=True)
    assert _studies_of(facade, "P-ONE") == {study}


# -- death dates -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("death, code", [
    ("2026-06-16", "death_in_future"),  # the day after the app's today
    ("1969-12-31", "death_before_birth"),  # born 1970-01-01
    ("2024-01-01", "death_before_last_visit"),  # an exam on 2024-01-02
])
def test_impossible_death_dates_are_refused(client, gerante, facade, tmp_path, death, code):
    from backoffice.retention.models import DeathRecord

    add_study(facade.archive, tmp_path, "PAT-D", "20240102", birth_date="19700101")
    response = client.put("/api/v1/patients/PAT-D/death", json={"date": death, "confirm_shortening": True},
                          headers=gerante)
    assert response.status_code == 422 and response.get_json()["error"]["code"] == code
    assert len(response.get_json()["error"]["message"]) > 20
    with facade.new_session() as s:
        assert s.scalar(select(func.count(DeathRecord.id))) == 0
    assert "death.recorded" not in _actions(facade)
    body = client.get("/api/v1/patients/PAT-D/retention", headers=gerante).get_json()
    assert body["death_date"] is None and body["keep_until"] == "2044-01-02"


def test_the_death_date_today_is_accepted(client, gerante, facade, tmp_path):
    add_study(facade.archive, tmp_path, "PAT-D", "20240102")
    response = client.put("/api/v1/patients/PAT-D/death", json={"date": "2026-06-15", "confirm_shortening": True},
                          headers=gerante)
    assert response.status_code == 200 and response.get_json()["keep_until"] == "2036-06-15"


def test_a_death_date_that_shortens_retention_needs_confirmation(client, gerante, facade, tmp_path):
    """Bad input: a death date that makes the record destructible 8 years sooner, sent once."""
    add_study(facade.archive, tmp_path, "PAT-D", "20240102")
    response = client.put("/api/v1/patients/PAT-D/death", json={"date": "2025-01-01"}, headers=gerante)
    assert response.status_code == 409
    error = response.get_json()["error"]
    assert error["code"] == "shortening_needs_confirmation" and "02/01/2044" in error["message"] \
        and "01/01/2035" in error["message"]
    assert client.get("/api/v1/patients/PAT-D/retention", headers=gerante).get_json()["death_date"] is None
    response = client.put("/api/v1/patients/PAT-D/death", json={"date": "2025-01-01", "confirm_shortening": True},
                          headers=gerante)
    assert response.status_code == 200 and response.get_json()["keep_until"] == "2035-01-01"


def test_a_death_date_that_does_not_shorten_needs_no_confirmation(client, gerante, facade, tmp_path):
    add_study(facade.archive, tmp_path, "PAT-D", "20100101")  # died more than 10 years after: 20-year rule
    response = client.put("/api/v1/patients/PAT-D/death", json={"date": "2021-01-01"}, headers=gerante)
    assert response.status_code == 200 and response.get_json()["keep_until"] == "2030-01-01"


def test_death_page_asks_a_second_confirmation_when_shortening(clocked, client, facade, tmp_path):
    clocked.config["WTF_CSRF_ENABLED"] = False
    add_study(facade.archive, tmp_path, "PAT-D", "20240102")
    sign_in(client, clocked, "gerante", "manager")
    response = client.post("/retention/deaths", data={"patient_id": "PAT-D", "death_date": "2025-01-01"})
    page = response.get_data(as_text=True)
    assert response.status_code == 409 and "02/01/2044" in page and "01/01/2035" in page
    assert 'name="confirm_shortening"' in page and 'value="yes"' in page
    assert "death.recorded" not in _actions(facade)
    client.post("/retention/deaths", data={"patient_id": "PAT-D", "death_date": "2025-01-01",
                                           "confirm_shortening": "yes"})
    assert _actions(facade, "death.") == ["death.recorded"]


def test_death_page_refuses_a_future_date(clocked, client, facade, tmp_path):
    clocked.config["WTF_CSRF_ENABLED"] = False
    add_study(facade.archive, tmp_path, "PAT-D", "20240102")
    sign_in(client, clocked, "gerante", "manager")
    response = client.post("/retention/deaths", data={"patient_id": "PAT-D", "death_date": "2027-01-01"},
                           follow_redirects=True)
    assert "dans le futur" in response.get_data(as_text=True)
    assert "death.recorded" not in _actions(facade)


# -- whole or nothing ------------------------------------------------------------------------------------


def test_a_page_error_rolls_back_what_the_service_had_done(clocked, client, gerante, facade, sweep_batch):
    """Bad input: approving (on the page) a batch whose only record went on hold since the proposal.
    The approval had already left the record out (purge.skipped) when it found nothing to destroy:
    the page says so and none of it is kept."""
    clocked.config["WTF_CSRF_ENABLED"] = False
    client.post("/api/v1/retention/holds", json={"patient_id": "OLD", "reason": "litige"}, headers=gerante)
    sign_in(client, clocked, "associe", "manager")
    response = client.post("/retention/batches/1/approve", data={"reason": "vérifié"}, follow_redirects=True)
    assert "plus rien dans ce lot" in response.get_data(as_text=True)
    batch = _batch(client, gerante, 1)
    assert batch["status"] == "proposed" and [i["patient_id"] for i in batch["items"]] == ["OLD"]
    assert "purge.skipped" not in _actions(facade)


@pytest.fixture
def two_due(clocked, facade, tmp_path):
    from backoffice.scheduler import retention_sweep_job

    studies = [add_study(facade.archive, tmp_path, pid, "20000105") for pid in ("OLD-A", "OLD-B")]
    with clocked.app_context():
        retention_sweep_job(today=TODAY)
    return studies


def _state(facade, studies):
    """Files per study, OLD-A visible, purge audit entries; the audit chain and `archive fsck` clean."""
    from archive_core.audit import verify
    from archive_core.maintenance import fsck

    with facade.new_session() as s:
        assert verify(s).ok
    report = fsck(facade.archive)
    assert (report.missing_files, report.orphan_files, report.checksum_mismatches) == ([], [], [])
    return ([len(instance_files(facade.archive, st)) for st in studies], _studies_of(facade, "OLD-A") != set(),
            _actions(facade, "purge.tombstoned"), _actions(facade, "purge.executed"))


def test_a_database_failure_during_execution_destroys_nothing(client, gerante, associe, facade, two_due,
                                                              monkeypatch):
    """Injected: the second record's tombstone fails (a database error). Neither record, file nor
    audit entry of the first is kept."""
    from sqlalchemy.exc import OperationalError

    assert _approve(client, gerante, 1).status_code == 200
    real = type(facade).tombstone_patient
    calls = []

    def failing(self, session, patient_id, issuer, *, at):
        calls.append(patient_id)
        if len(calls) == 2:
            raise OperationalError("UPDATE instance", {}, Exception("disk I/O error"))
        return real(self, session, patient_id, issuer, at=at)

    monkeypatch.setattr(type(facade), "tombstone_patient", failing)
    client.application.config["PROPAGATE_EXCEPTIONS"] = False
    assert client.post("/api/v1/retention/batches/1/execute", headers=associe).status_code == 500
    assert _state(facade, two_due) == ([2, 2], True, [], [])
    assert _batch(client, gerante, 1)["status"] == "approved"

    monkeypatch.setattr(type(facade), "tombstone_patient", real)
    assert client.post("/api/v1/retention/batches/1/execute", headers=associe).status_code == 200
    assert _state(facade, two_due) == ([0, 0], False, ["purge.tombstoned"] * 2, ["purge.executed"])


def test_a_failure_writing_the_certificate_is_finished_by_a_rerun(client, gerante, associe, facade, two_due,
                                                                  monkeypatch):
    """Injected: the certificate cannot be written (storage full) after the files went. The rows and
    audit say tombstoned, the rerun writes the certificate once: all of it in the end."""
    import backoffice.retention.certificate as certificate

    assert _approve(client, gerante, 1).status_code == 200

    def full(batch):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(certificate, "render_certificate", full)
    client.application.config["PROPAGATE_EXCEPTIONS"] = False
    assert client.post("/api/v1/retention/batches/1/execute", headers=associe).status_code == 500
    assert _state(facade, two_due) == ([0, 0], False, ["purge.tombstoned"] * 2, [])
    assert _batch(client, gerante, 1)["status"] == "tombstoned"

    monkeypatch.undo()
    body = client.post("/api/v1/retention/batches/1/execute", headers=associe).get_json()
    assert body["status"] == "executed" and body["certificate_sha256"]
    assert _state(facade, two_due) == ([0, 0], False, ["purge.tombstoned"] * 2, ["purge.executed"])


def test_openapi_describes_confirmation_and_refusals(client, gerante):
    spec = client.get("/api/v1/openapi.json", headers=gerante).get_json()["paths"]
    death = spec["/api/v1/patients/{patient_id}/death"]["put"]
    assert "confirm_shortening" in death["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert "shortening_needs_confirmation" in death["responses"]["409"]["description"]
    assert "death_before_birth" in death["responses"]["422"]["description"]
    execute = spec["/api/v1/retention/batches/{batch_id}/execute"]["post"]
    assert "changed_since_approval" in execute["responses"]["409"]["description"]
    assert "same_person" in execute["responses"]["409"]["description"]
    move = spec["/api/v1/studies/{study_uid}/move"]["post"]
    assert "in_open_batch" in move["responses"]["409"]["description"]


def test_send_back_and_four_eyes_on_both_databases(database_url, instance_path, tmp_path):
    """The same refusals on SQLite and a real PostgreSQL (row locks, the committed send-back)."""
    from backoffice import create_app
    from tests.helpers import migrate
    from backoffice.retention import batches, purge, records
    from backoffice.retention.certificate import certificates_dir, render_certificate
    from backoffice.retention.errors import RetentionError

    migrate(database_url)
    app = create_app({"TESTING": True, "INSTANCE_PATH": str(instance_path), "STORAGE_MIN_FREE_BYTES": 0,
                      "DATABASE_URL": database_url})
    facade = app.extensions["archivage"]
    try:
        study = add_study(facade.archive, tmp_path, "P-ONE", "20240102")
        with app.app_context():
            with facade.new_session(write=True) as s:
                batch_id = batches.request_study_deletion(s, facade, study, "test", actor="gerante").id
                s.commit()
            with facade.new_session(write=True) as s, pytest.raises(RetentionError) as refused:
                batches.decide_batch(s, facade, batch_id, approve=True, reason="ok", actor="gerante", today=TODAY)
            assert refused.value.key == "approver_is_requester"
            with facade.new_session(write=True) as s:
                batches.decide_batch(s, facade, batch_id, approve=True, reason="ok", actor="associe", today=TODAY)
                records.place_hold(s, facade, "P-ONE", "litige", actor="associe", today=TODAY, now=NOW)
                s.commit()
            run = dict(certificates=certificates_dir(), render=render_certificate, today=TODAY)
            with pytest.raises(RetentionError) as refused:
                purge.run_purge(facade, batch_id, actor="gerante", **run)
            assert refused.value.key == "executor_is_requester"
            with pytest.raises(RetentionError) as refused:
                purge.run_purge(facade, batch_id, actor="associe", **run)
            assert refused.value.key == "changed_since_approval"
        with facade.new_session() as s:
            assert batches.get_batch(s, batch_id).status == "proposed"
        assert len(instance_files(facade.archive, study)) == 2
    finally:
        facade.archive.close()


def test_cli_purge_in_its_own_process_obeys_four_eyes(clocked, client, gerante, facade, instance_path, sweep_batch):
    """`flask --app wsgi retention purge` as the operator runs it: the approver is refused, a second
    manager sees the names and confirms at the prompt."""
    from tests.servers import flask_cli

    assert _approve(client, gerante, 1).status_code == 200
    make_user(clocked, "associe", "manager")
    done = flask_cli(instance_path, "retention", "purge", "1", "--as", "gerante", "--today", "2026-06-15", "--yes")
    assert done.returncode == 1 and "refused" in done.stderr and "gerante" in done.stderr
    assert len(instance_files(facade.archive, sweep_batch)) == 2
    done = flask_cli(instance_path, "retention", "purge", "1", "--as", "associe", "--today", "2026-06-15", input="y\n")
    assert done.returncode == 0, done.stderr
    assert "Dupont Jean (born 04/03/1965)" in done.stdout and "batch 1 executed: 2 instances" in done.stdout
    assert instance_files(facade.archive, sweep_batch) == []


def test_approval_leaves_out_a_record_held_since_the_proposal(client, gerante, associe, facade, two_due):
    """Bad input: one of two proposed records went on hold before the approval. It is left out (and
    audited); the other is approved and destroyed; the held one keeps every file."""
    client.post("/api/v1/retention/holds", json={"patient_id": "OLD-A", "reason": "litige"}, headers=gerante)
    body = _approve(client, gerante, 1).get_json()
    assert body["status"] == "approved" and [i["patient_id"] for i in body["items"]] == ["OLD-B"]
    assert _actions(facade, "purge.skipped") == ["purge.skipped"]
    assert client.post("/api/v1/retention/batches/1/execute", headers=associe).status_code == 200
    assert [len(instance_files(facade.archive, st)) for st in two_due] == [2, 0]
