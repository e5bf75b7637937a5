"""The manager's retention pages: overview, a patient, batches (approval required), audit search and CSV."""

from __future__ import annotations

from datetime import date

import pytest

from tests.retention_support import add_study, instance_files, sign_in


@pytest.fixture
def manager_client(app, client):
    app.config["WTF_CSRF_ENABLED"] = False
    sign_in(client, app, "gerante", "manager")
    return client


@pytest.fixture
def scenario(app, facade, tmp_path):
    old = add_study(facade.archive, tmp_path, "OLD", "20000105")
    add_study(facade.archive, tmp_path, "MID", "20150101", modality="MR")
    from backoffice.scheduler import retention_sweep_job

    with app.app_context():
        retention_sweep_job(today=date(2026, 11, 28))
    return old


def test_overview_shows_batches_holds_and_storage(manager_client, scenario):
    html = manager_client.get("/retention/").get_data(as_text=True)
    assert "Lots en attente" in html and "à approuver" in html
    assert "Échéances à venir" in html
    assert "<td>archive intermédiaire</td><td>2015</td><td>MR</td>" in html.replace("\n", "").replace("      ", "")


def test_patient_page_explains_and_places_a_hold(manager_client, scenario):
    html = manager_client.get("/retention/patient?patient_id=MID").get_data(as_text=True)
    assert "conservé jusqu&#39;au 01/01/2035" in html or "conservé jusqu'au 01/01/2035" in html
    response = manager_client.post("/retention/holds", data={"patient_id": "MID", "reason": "réclamation"})
    assert response.status_code == 302
    assert "séquestre en cours" in manager_client.get("/retention/patient?patient_id=MID").get_data(as_text=True)


def test_page_refuses_to_execute_a_batch_not_approved(manager_client, facade, scenario):
    response = manager_client.post("/retention/batches/1/execute", data={}, follow_redirects=True)
    assert "approuvé par un responsable" in response.get_data(as_text=True)
    assert len(instance_files(facade.archive, scenario)) == 2


def test_page_approval_needs_a_reason(manager_client, facade, scenario):
    manager_client.post("/retention/batches/1/approve", data={"reason": ""})
    assert "à approuver" in manager_client.get("/retention/batches/1").get_data(as_text=True)


def test_page_approve_then_execute_gives_a_certificate(app, manager_client, facade, scenario):
    manager_client.post("/retention/batches/1/approve", data={"reason": "vérifié"})
    # The scheduler proposed it and gerante approved it: another manager executes, after confirming.
    sign_in(manager_client, app, "associe", "manager")
    page = manager_client.get("/retention/batches/1/execute").get_data(as_text=True)
    assert "Détruire définitivement" in page
    manager_client.post("/retention/batches/1/execute", data={"confirmed": "y"})
    assert instance_files(facade.archive, scenario) == []
    pdf = manager_client.get("/retention/batches/1/certificate.pdf")
    assert pdf.status_code == 200 and pdf.data.startswith(b"%PDF")
    assert "Certificat" in manager_client.get("/retention/history").get_data(as_text=True) or \
        "PDF" in manager_client.get("/retention/history").get_data(as_text=True)


def test_audit_search_and_csv_export(manager_client, scenario):
    html = manager_client.get("/retention/audit?action=purge.proposed").get_data(as_text=True)
    assert "destruction proposée" in html
    # The select lists the kinds the trail holds: the sweep's moves, not a sign-in nobody made.
    assert 'value="tier.moved"' in html and 'value="login"' not in html
    csv_text = manager_client.get("/retention/audit?action=purge.proposed&format=csv").get_data(as_text=True)
    lines = csv_text.strip().splitlines()
    assert lines[0].lstrip("\ufeff").startswith("id;date (UTC);acteur")
    assert len(lines) == 2 and ";purge.proposed;" in lines[1]
    html = manager_client.get("/retention/audit?action=audit.exported").get_data(as_text=True)
    assert "gerante" in html  # the export itself is audited


def test_audit_search_by_date_excludes_other_days(manager_client, scenario):
    html = manager_client.get("/retention/audit?to=2001-01-01").get_data(as_text=True)
    assert "Aucun événement" in html


def test_corrections_page_requests_a_deletion(manager_client, facade, tmp_path):
    study = add_study(facade.archive, tmp_path, "P-TEST", "20240101")
    response = manager_client.post("/retention/corrections", data={"action": "delete", "delete-study_uid": study,
                                                                   "delete-reason": "examen de test"})
    assert response.status_code == 302 and "/retention/batches/" in response.headers["Location"]
    assert len(instance_files(facade.archive, study)) == 2


def test_admin_reads_the_audit_but_not_retention(app, client):
    sign_in(client, app, "root", "admin")
    assert client.get("/retention/audit").status_code == 200
    assert client.get("/retention/").status_code == 403
