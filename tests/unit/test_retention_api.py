"""The retention API of the public contract: today's answer, deaths and legal holds (managers only)."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import select

from tests.retention_support import add_study, bearer, make_user


@pytest.fixture
def manager(app):
    return bearer(make_user(app, "gerante", "manager"))


@pytest.fixture
def archive_of(app):
    return app.extensions["archivage"].archive


def _last_action(app) -> str:
    from archive_core.audit import AuditEvent

    with app.extensions["archivage"].new_session() as s:
        return s.scalar(select(AuditEvent.action).order_by(AuditEvent.id.desc()))


def test_retention_of_a_patient_is_computed_on_read(app, client, manager, archive_of, tmp_path):
    add_study(archive_of, tmp_path, "PAT-A", "20120915")
    body = client.get("/api/v1/patients/PAT-A/retention", headers=manager).get_json()
    assert body["keep_until"] == "2032-09-15"
    assert body["basis"] == "last_visit_20y"
    assert body["tier"] == "archive"  # more than 5 years since the last visit
    assert body["on_hold"] is False
    assert body["explanation"] == "conservé jusqu'au 15/09/2032 : 20 ans après le dernier passage du 15/09/2012"
    assert _last_action(app) == "retention.viewed"


def test_outside_priors_are_not_visits(client, manager, archive_of, tmp_path):
    add_study(archive_of, tmp_path, "PAT-X", "20240101", external=True)
    add_study(archive_of, tmp_path, "PAT-X", "20100101")
    assert client.get("/api/v1/patients/PAT-X/retention", headers=manager).get_json()["keep_until"] == "2030-01-01"


def test_a_patient_id_with_a_slash_is_url_encoded(client, manager, archive_of, tmp_path):
    add_study(archive_of, tmp_path, "12/34", "20200101")
    response = client.get("/api/v1/patients/12%2F34/retention", headers=manager)
    assert response.status_code == 200 and response.get_json()["keep_until"] == "2040-01-01"


def test_unknown_patient_is_a_json_404(client, manager):
    response = client.get("/api/v1/patients/NOBODY/retention", headers=manager)
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"


def test_recording_a_death_applies_the_death_rule_and_is_audited(app, client, manager, archive_of, tmp_path):
    add_study(archive_of, tmp_path, "PAT-D", "20200101")
    # 20 years after 2020 -> 10 years after 2021: shorter, so it needs the explicit second confirmation.
    response = client.put("/api/v1/patients/PAT-D/death", json={"date": "2021-03-04"}, headers=manager)
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "shortening_needs_confirmation"
    response = client.put("/api/v1/patients/PAT-D/death", json={"date": "2021-03-04", "confirm_shortening": True},
                          headers=manager)
    assert response.status_code == 200
    assert response.get_json()["basis"] == "death_10y"
    assert client.get("/api/v1/patients/PAT-D/retention", headers=manager).get_json()["keep_until"] == "2031-03-04"
    from archive_core.audit import AuditEvent

    with app.extensions["archivage"].new_session() as s:
        assert s.scalar(select(AuditEvent.patient_id).where(AuditEvent.action == "death.recorded")) == "PAT-D"


@pytest.mark.parametrize("payload", [{}, {"date": "04/03/2021"}, {"date": "2021-03-04", "confirm_shortening": "oui"}])
def test_a_bad_death_date_is_refused(client, manager, archive_of, tmp_path, payload):
    add_study(archive_of, tmp_path, "PAT-D", "20200101")
    response = client.put("/api/v1/patients/PAT-D/death", json=payload, headers=manager)
    assert response.status_code == 400


def test_hold_placed_then_released(app, client, manager, archive_of, tmp_path):
    add_study(archive_of, tmp_path, "PAT-H", "20000101")
    response = client.post("/api/v1/retention/holds", json={"patient_id": "PAT-H", "reason": "réclamation"},
                           headers=manager)
    assert response.status_code == 201
    hold_id = response.get_json()["id"]
    assert client.get("/api/v1/patients/PAT-H/retention", headers=manager).get_json()["on_hold"] is True
    assert client.delete(f"/api/v1/retention/holds/{hold_id}", headers=manager).status_code == 200
    assert client.get("/api/v1/patients/PAT-H/retention", headers=manager).get_json()["on_hold"] is False
    assert client.delete(f"/api/v1/retention/holds/{hold_id}", headers=manager).status_code == 409


@pytest.mark.parametrize("payload, status", [
    ({"patient_id": "PAT-H"}, 400),
    ({"patient_id": "PAT-H", "reason": "  "}, 400),
    ({"patient_id": "NOBODY", "reason": "x"}, 404),
])
def test_a_hold_needs_a_reason_and_a_patient(client, manager, archive_of, tmp_path, payload, status):
    add_study(archive_of, tmp_path, "PAT-H", "20000101")
    assert client.post("/api/v1/retention/holds", json=payload, headers=manager).status_code == status


@pytest.mark.parametrize("role", ["front_desk", "radiologist", "admin"])
def test_only_managers_place_holds_and_record_deaths(app, client, archive_of, tmp_path, role):
    add_study(archive_of, tmp_path, "PAT-R", "20000101")
    headers = bearer(make_user(app, f"u_{role}", role))
    assert client.post("/api/v1/retention/holds", json={"patient_id": "PAT-R", "reason": "x"},
                       headers=headers).status_code == 403
    assert client.put("/api/v1/patients/PAT-R/death", json={"date": "2020-01-01"}, headers=headers).status_code == 403
    assert client.get("/api/v1/patients/PAT-R/retention", headers=headers).status_code == 403


def test_no_birth_date_is_flagged(client, manager, archive_of, tmp_path):
    add_study(archive_of, tmp_path, "PAT-N", "20000101", birth_date=None)
    body = client.get("/api/v1/patients/PAT-N/retention", headers=manager).get_json()
    assert body["needs_review"] is True
    assert date.fromisoformat(body["keep_until"]) == date(2020, 1, 1)


def test_the_holds_list_pages_with_a_next_link(client, manager, archive_of, tmp_path):
    for n in range(3):
        add_study(archive_of, tmp_path, f"PAT-L{n}", "20000101", images=1)
        assert client.post("/api/v1/retention/holds", json={"patient_id": f"PAT-L{n}", "reason": "litige"},
                           headers=manager).status_code == 201
    first = client.get("/api/v1/retention/holds?limit=2", headers=manager).get_json()
    assert [h["patient_id"] for h in first["items"]] == ["PAT-L0", "PAT-L1"]
    second = client.get(first["next"], headers=manager).get_json()
    assert [h["patient_id"] for h in second["items"]] == ["PAT-L2"]
    assert "next" not in second
    assert "next" not in client.get("/api/v1/retention/holds", headers=manager).get_json()


def test_the_batches_list_pages_with_a_next_link_and_keeps_its_filter(app, client, manager):
    from backoffice.retention.models import PurgeBatch

    with app.extensions["archivage"].new_session(write=True) as s:
        s.add_all([PurgeBatch(proposed_by="balayage", status=status)
                   for status in ("proposed", "rejected", "proposed", "proposed")])
        s.commit()
    first = client.get("/api/v1/retention/batches?status=proposed&limit=2", headers=manager).get_json()
    assert [b["status"] for b in first["items"]] == ["proposed", "proposed"]
    assert "status=proposed" in first["next"]
    second = client.get(first["next"], headers=manager).get_json()
    assert len(second["items"]) == 1 and "next" not in second
    ids = [b["id"] for b in first["items"] + second["items"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 3


def test_a_bad_page_argument_is_a_json_400(client, manager):
    response = client.get("/api/v1/retention/batches?after=x", headers=manager)
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "bad_request"
