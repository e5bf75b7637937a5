"""Send jobs as the radiologist sees them: the JSON API of the public contract, the page, the migration."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect, text

from tests.unit.test_radiology_web import bearer, sign_in, users  # noqa: F401 - fixtures
from tests.radiology_support import make_history


@pytest.fixture
def history(facade):
    return make_history(facade.archive)


@pytest.fixture
def failed_job(facade, history):
    """A finished job whose workstation refused one object and warned on another."""
    from backoffice.radiology.models import SendFailure
    from backoffice.radiology.sending import create_send_job

    with facade.new_session(write=True) as s:
        job = create_send_job(s, "WS1", [history.current], requested_by="u_radiologist", total=3)
        job.status, job.sent, job.failed = "failed", 1, 2
        s.add_all([SendFailure(job_id=job.id, sop_instance_uid="1.2.3.4", status=0xA700, comment="disque plein"),
                   SendFailure(job_id=job.id, sop_instance_uid="1.2.3.5", status=0xB000, comment="coerced")])
        s.commit()
        return job.id


def test_the_api_answers_the_contract_with_each_failure(client, users, failed_job):  # noqa: F811
    response = client.get(f"/api/v1/send-jobs/{failed_job}", headers=bearer(users, "radiologist"))
    assert response.status_code == 200
    body = response.get_json()
    assert {k: body[k] for k in ("id", "peer", "status", "sent", "failed", "message")} == {
        "id": failed_job, "peer": "WS1", "status": "failed", "sent": 1, "failed": 2, "message": ""}
    assert body["failures"] == [{"sop_instance_uid": "1.2.3.4", "status": 0xA700, "comment": "disque plein"},
                                {"sop_instance_uid": "1.2.3.5", "status": 0xB000, "comment": "coerced"}]
    assert client.get("/api/v1/send-jobs/999999", headers=bearer(users, "radiologist")).status_code == 404
    assert client.get(f"/api/v1/send-jobs/{failed_job}", headers=bearer(users, "front_desk")).status_code == 403


def test_the_api_queues_a_send_to_a_registered_peer_only(client, facade, users, history, monkeypatch):  # noqa: F811
    """Bad input tried: an unknown AE title (400, no job) and an unknown study (404)."""
    from archive_core.peers import add_peer
    from backoffice.radiology import sending

    started = []
    monkeypatch.setattr(sending, "start_in_background", lambda facade, job_id: started.append(job_id))
    with facade.new_session(write=True) as s:
        add_peer(s, "WS1", "127.0.0.1", 1)
        s.commit()
    headers = bearer(users, "radiologist")
    response = client.post(f"/api/v1/studies/{history.current}/send", json={"peer": "NOPE"}, headers=headers)
    assert response.status_code == 400
    response = client.post("/api/v1/studies/1.2.3/send", json={"peer": "WS1"}, headers=headers)
    assert response.status_code == 404
    response = client.post(f"/api/v1/studies/{history.current}/send", json={"peer": "WS1"}, headers=headers)
    assert response.status_code == 202
    assert response.get_json() == {"id": response.get_json()["id"], "status": "queued"}
    response.close()  # the job starts once the response (and the request's commit) is done
    assert started == [response.get_json()["id"]]


def test_the_study_page_shows_each_failure_in_french(client, users, history, failed_job):  # noqa: F811
    sign_in(client, users, "radiologist")
    html = client.get(f"/radiology/studies/{history.current}").get_data(as_text=True)
    assert "échec" in html and "Réponse de la station" in html
    assert "0xA700" in html and "disque plein" in html and "0xB000" in html and "1.2.3.4" in html


def test_the_migration_keeps_jobs_and_names_waiting_ones_queued(database_url):
    """A job written before the migration ("pending") reads "queued" after it; failures get their table."""
    from backoffice.migrate import upgrade

    upgrade(database_url, "0600_radiology")
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO radiology_send_job (peer_ae_title, study_uids, reason, status, total, sent, "
                          "failed, message, requested_by, created_at) VALUES ('WS1', '1.2', 'manual', 'pending', "
                          "0, 0, 0, '', 'dr', CURRENT_TIMESTAMP)"))
    upgrade(database_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT status FROM radiology_send_job")).scalar() == "queued"
    assert "radiology_send_failure" in inspect(engine).get_table_names()
    engine.dispose()
