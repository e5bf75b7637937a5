"""Patient search on every page and the API, and the patient page, through the Flask test client.

Patients arrive the way images do (the import path), exam groups the way the day list makes them
(from arrived studies). Each reproduced case of issue 11 is a parameter: before, the day list found
"DUPRÉ" and "dupr" but not "Dupré", "dupre", "lefevre" or "martin lucas"; the study browser found
"Dupré" but not "dupre" or "jean-francois".
"""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest
from sqlalchemy import select

from tests.helpers import make_ct
from tests.retention_support import bearer, make_user, sign_in

TODAY = date(2026, 6, 15)
PATIENTS = [("PAT001", "DUPRÉ^JEAN", "19610312"), ("PAT002", "LEFÈVRE^Marie", "19751224"),
            ("PAT003", "MARTIN^LUCAS", "19900505"), ("PAT004", "MOREAU^JEAN-FRANÇOIS", "19550202"),
            ("PAT005", "BERNARD^PAUL", "19700707")]


def _store(archive, tmp_path, patient_id, name, birth, study_date="20260615"):
    from pydicom.uid import generate_uid

    from archive_core.maintenance import import_path

    folder = tmp_path / f"in-{generate_uid()}"
    folder.mkdir()
    ds = make_ct(patient_id=patient_id, patient_name=name, charset="ISO_IR 192", study_date=study_date,
                 PatientBirthDate=birth, StudyDescription="Thorax")
    ds.save_as(folder / "1.dcm", enforce_file_format=True)
    assert import_path(archive, folder).stored == 1
    return ds.StudyInstanceUID


@pytest.fixture
def patients(app, tmp_path):
    app.config["CLOCK"] = lambda: datetime(2026, 6, 15, 10, 0, tzinfo=timezone.utc)  # the day list's "today"
    archive = app.extensions["archivage"].archive
    return {pid: _store(archive, tmp_path, pid, name, birth) for pid, name, birth in PATIENTS}


def _last_audit(app):
    from archive_core.audit import AuditEvent

    with app.extensions["archivage"].new_session() as s:
        return s.execute(select(AuditEvent.action, AuditEvent.actor).order_by(AuditEvent.id.desc())).first()


@pytest.mark.parametrize("typed, expected", [
    ("DUPRÉ", "PAT001"), ("dupr", "PAT001"), ("Dupré", "PAT001"), ("dupre", "PAT001"),
    ("lefevre", "PAT002"), ("martin lucas", "PAT003"), ("lucas martin", "PAT003"), ("12/03/1961", "PAT001"),
])
def test_the_day_list_search_finds_the_patient(app, client, patients, typed, expected):
    sign_in(client, app, "accueil", "front_desk")
    # The day list makes the day's exam groups from the arrived studies.
    client.get("/billing/?date=2026-06-15")
    page = client.get("/billing/", query_string={"q": typed}).get_data(as_text=True)
    others = {pid for pid, _n, _b in PATIENTS} - {expected}
    assert f"/patients/{expected}" in page
    assert not any(f"<td>{pid}</td>" in page for pid in others)


@pytest.mark.parametrize("typed, expected", [("Dupré", "PAT001"), ("dupre", "PAT001"),
                                             ("jean-francois", "PAT004"), ("Jean François", "PAT004")])
def test_the_study_browser_finds_the_patient(app, client, patients, typed, expected):
    sign_in(client, app, "radio", "radiologist")
    page = client.get("/radiology/", query_string={"patient": typed}).get_data(as_text=True)
    assert patients[expected] in page
    assert patients["PAT005"] not in page
    study = client.get(f"/radiology/studies/{patients[expected]}").get_data(as_text=True)
    assert f'href="/patients/{expected}"' in study  # the study page leads to the patient page


def test_the_patient_search_page_ranks_and_links_to_the_patient_page(app, client, patients):
    sign_in(client, app, "gerante", "manager")
    page = client.get("/patients/", query_string={"q": "jean"}).get_data(as_text=True)
    # DUPRÉ Jean and MOREAU Jean-François, human names (no DICOM ^), linked to their pages.
    assert "DUPRÉ Jean" in page and "MOREAU Jean-François" in page and "^" not in page
    assert 'href="/patients/PAT001"' in page and "BERNARD" not in page
    assert _last_audit(app) == ("patient.search", "gerante")


def test_the_patient_page_shows_identity_studies_groups_and_retention(app, client, patients):
    from backoffice.billing import services as S

    facade = app.extensions["archivage"]
    with facade.new_session(write=True) as s:
        insurer = S.create_insurer(s, name="Mutuelle du Port", amc_number="123", coverage_bp=5000)
        S.add_membership(s, patient_id="PAT001", insurer_id=insurer.id, member_number="A-1",
                         valid_from=date(2020, 1, 1), valid_to=date(2023, 12, 31))
        S.add_membership(s, patient_id="PAT001", insurer_id=insurer.id, member_number="B-2",
                         valid_from=date(2024, 1, 1))
        s.commit()
    sign_in(client, app, "accueil", "front_desk")
    client.get("/billing/?date=2026-06-15")  # the day's exam groups
    page = client.get("/patients/PAT001").get_data(as_text=True)
    assert "DUPRÉ Jean" in page or "DUPRÉ JEAN" in page
    assert "12/03/1961" in page
    assert "A-1" in page and "B-2" in page and "terminée" in page and "en cours" in page
    assert patients["PAT001"] in page  # the study, linked to its viewer page
    assert "Thorax" in page and "Conservé jusqu" in page
    assert "/billing/groups/" in page
    assert _last_audit(app) == ("patient.viewed", "accueil")
    assert client.get("/patients/NOBODY").status_code == 404


def test_ins_is_validated_with_its_key(app, client, patients):
    """A NIR with a wrong key is refused and nothing is stored; the right one is shown, grouped."""
    app.config["WTF_CSRF_ENABLED"] = False
    sign_in(client, app, "accueil", "front_desk")
    bad = client.post("/patients/PAT001/ins", data={"nir": "1 84 12 76 451 089 47"}, follow_redirects=True)
    assert "La clé du NIR ne correspond pas" in bad.get_data(as_text=True)
    assert "non renseigné" in bad.get_data(as_text=True)
    good = client.post("/patients/PAT001/ins", data={"nir": "184127645108946", "qualified": "y",
                                                     "document": "id_card"},
                       follow_redirects=True).get_data(as_text=True)
    assert "1 84 12 76 451 089 46" in good and "identité qualifiée" in good
    assert _last_audit(app)[0] in ("patient.viewed", "patient.ins.recorded")


@pytest.mark.parametrize("nir, ok", [
    ("184127645108946", True), ("184127645108947", False), ("18412764510894", False),
    ("2690299341732 85", True), ("185052A12345633", True), ("185052B12345630", False),
])
def test_nir_key_rules(nir, ok):
    """Key = 97 - NIR mod 97; Corsica: 2A counts as 19 and 2B as 18 for the key."""
    from backoffice.patients.nir import InvalidNir, key_of, validate

    if ok:
        assert validate(nir) == nir.replace(" ", "")
    else:
        with pytest.raises(InvalidNir):
            validate(nir)
    assert key_of("185052B123456") == 97 - 1850518123456 % 97
    assert key_of("185052A123456") == 97 - 1850519123456 % 97


@pytest.mark.parametrize("role, status", [("front_desk", 200), ("manager", 200), ("radiologist", 200),
                                          ("admin", 403)])
def test_api_patient_search_roles(app, client, patients, role, status):
    token = make_user(app, f"u_{role}", role)
    response = client.get("/api/v1/patients?q=dupre", headers=bearer(token))
    assert response.status_code == status
    if status == 200:
        item = response.get_json()["items"][0]
        assert item["patient_id"] == "PAT001" and item["name"] == "DUPRÉ Jean" and item["birth_date"] == "1961-03-12"
        assert _last_audit(app) == ("patient.search", f"u_{role}")
    else:
        assert response.get_json()["error"]["code"] == "forbidden"


def test_api_patient_search_needs_a_token_and_a_query(app, client, patients):
    assert client.get("/api/v1/patients?q=dupre").status_code == 401
    assert client.get("/api/v1/patients?q=dupre").get_json()["error"]["code"] == "unauthorized"
    token = make_user(app, "accueil", "front_desk")
    assert client.get("/api/v1/patients", headers=bearer(token)).status_code == 400


def test_api_patient_search_pages_with_a_next_link(app, client, patients):
    token = make_user(app, "accueil", "front_desk")
    first = client.get("/api/v1/patients?q=jean&limit=1", headers=bearer(token)).get_json()
    assert [i["patient_id"] for i in first["items"]] == ["PAT001"] and "next" in first
    second = client.get(first["next"], headers=bearer(token)).get_json()
    assert [i["patient_id"] for i in second["items"]] == ["PAT004"] and "next" not in second
    spec = client.get("/api/v1/openapi.json", headers=bearer(token)).get_json()
    assert "get" in spec["paths"]["/api/v1/patients"]


def test_the_retention_lookup_takes_a_name(app, client, patients):
    """Before: the manager's lookup took an ID only ("lefevre" -> patient not found)."""
    sign_in(client, app, "gerante", "manager")
    one = client.get("/retention/patient", query_string={"patient_id": "lefevre"})
    assert one.status_code == 302 and one.headers["Location"].endswith("/retention/patient?patient_id=PAT002")
    several = client.get("/retention/patient", query_string={"patient_id": "jean"}).get_data(as_text=True)
    assert "DUPRÉ Jean" in several and "MOREAU Jean-François" in several
    assert "/retention/patient?patient_id=PAT004" in several


def test_check_in_looks_the_patient_up_and_fills_the_form(app, client, patients):
    """Before: check-in had no lookup; the desk retyped the ID and name (and made typos)."""
    sign_in(client, app, "accueil", "front_desk")
    found = client.get("/billing/checkin", query_string={"q": "Lefevre marie"}).get_data(as_text=True)
    assert "LEFÈVRE Marie" in found and "/billing/checkin?patient_id=PAT002" in found
    form = client.get("/billing/checkin", query_string={"patient_id": "PAT002"}).get_data(as_text=True)
    assert 'name="patient_id" required maxlength="64" value="PAT002"' in form
    assert 'value="1975-12-24"' in form


@pytest.mark.parametrize("role", ["radiologist", "manager"])
def test_every_reading_role_sees_the_patient_page(app, client, patients, role):
    """The radiologist gets the studies with their viewer links and no billing links; the manager the
    billing links and the retention management link; nobody gets a 500 on a patient without images."""
    sign_in(client, app, f"u_{role}", role)
    page = client.get("/patients/PAT003").get_data(as_text=True)
    assert "MARTIN Lucas" in page or "MARTIN LUCAS" in page
    assert ("/radiology/studies/" in page) == (role == "radiologist")
    assert ("/retention/patient?patient_id=PAT003" in page) == (role == "manager")
    assert "/billing/" not in page or role == "manager"


def test_a_patient_checked_in_before_any_image_has_a_page(app, client, patients):
    from backoffice.billing import services as S

    with app.extensions["archivage"].new_session(write=True) as s:
        S.create_exam_group(s, patient_id="NEW1", visit_date=date(2026, 6, 15), exam_group="radiologie",
                            created_by="t", patient_name="NOUVEAU^Paul", patient_birth_date="20000101")
        s.commit()
    sign_in(client, app, "accueil", "front_desk")
    page = client.get("/patients/NEW1").get_data(as_text=True)
    assert "NOUVEAU" in page and "01/01/2000" in page and "Aucune image archivée" in page
