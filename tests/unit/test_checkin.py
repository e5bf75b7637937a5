"""Check-in at the desk, as the front desk does it through the page and the API: the patient looked up
first, never a second patient from a typo, "NOM Prénom" as typed, the existing exam group rather than
an error, the fee and the consent question at once, and an invoice that names the patient."""

from __future__ import annotations

import re
import subprocess

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from archive_core.worklist import WorklistItem
from backoffice.billing.models import ExamGroup
from tests.helpers import make_ct, migration_drift, require_tool
from tests.retention_support import bearer, make_user, sign_in

VISIT = "2026-03-10"  # every check-in names its day: nothing here depends on today


def _store(app, tmp_path, patient_id, name, birth, study_date="20250102"):
    from archive_core.maintenance import import_path

    folder = tmp_path / f"in-{generate_uid()}"
    folder.mkdir()
    make_ct(patient_id=patient_id, patient_name=name, charset="ISO_IR 192", study_date=study_date,
            PatientBirthDate=birth, AccessionNumber="OLD1").save_as(folder / "1.dcm", enforce_file_format=True)
    assert import_path(app.extensions["archivage"].archive, folder).stored == 1


@pytest.fixture
def known(app, tmp_path):
    """Patients of earlier visits (images of 2025 in the archive)."""
    _store(app, tmp_path, "PAT-1", "DUPRÉ^JEAN-FRANÇOIS", "19610312")
    _store(app, tmp_path, "PAT-2", "LEFÈVRE^Marie-Hélène", "19751224")


@pytest.fixture
def desk(app, client):
    app.config["WTF_CSRF_ENABLED"] = False
    sign_in(client, app, "accueil", "front_desk")
    return client


def _count(app, model) -> int:
    with app.extensions["archivage"].new_session() as s:
        return s.scalar(select(func.count()).select_from(model))


def _groups(app) -> list[tuple[str, str | None, str | None]]:
    with app.extensions["archivage"].new_session() as s:
        return [(g.patient_id, g.patient_name, g.patient_birth_date)
                for g in s.scalars(select(ExamGroup).order_by(ExamGroup.id))]


def _post(client, **form):
    return client.post("/billing/checkin", data={"visit_date": VISIT, "exam_group": "scanner", **form})


def test_a_known_patient_checked_in_by_id_alone_is_named_on_the_invoice_pdf(app, desk, known):
    """The reproduced bug: the ID alone gave an invoice printed "Patient : —". Now the archive's identity
    comes with the ID, and the PDF names the patient and the birth date."""
    pdftotext = require_tool("pdftotext")
    response = _post(desk, patient_id="PAT-2")
    assert response.status_code == 302
    group_id = int(response.headers["Location"].rstrip("/").split("/")[-1])
    desk.post(f"/billing/groups/{group_id}/consent", data={"accepted": "1"})
    invoice_url = desk.post(f"/billing/groups/{group_id}/invoice", data={}).headers["Location"]
    pdf = desk.get(invoice_url + "/invoice.pdf")
    assert pdf.status_code == 200
    text = " ".join(subprocess.run([pdftotext, "-", "-"], input=pdf.data, capture_output=True, check=True)
                    .stdout.decode().split())
    assert "Patient : LEFÈVRE Marie-Hélène" in text and "—" not in text.split("Patient :")[1][:5]
    assert "24 décembre 1975" in text


def test_a_group_left_nameless_gets_the_patient_name_when_invoiced(app, desk, known):
    """A group created by ID alone before this fix (no name stored) is named from the archive when its
    invoice is issued: the snapshot never says "—" for a patient the archive knows."""
    from backoffice.billing import services as S

    with app.extensions["archivage"].new_session(write=True) as s:
        group = S.create_exam_group(s, patient_id="PAT-1", visit_date=S.parse_date(VISIT, "d"),
                                    exam_group="scanner", created_by="old")
        s.commit()
        group_id = group.id
    desk.post(f"/billing/groups/{group_id}/consent", data={"accepted": "1"})
    invoice_url = desk.post(f"/billing/groups/{group_id}/invoice", data={}).headers["Location"]
    assert "DUPRÉ JEAN-FRANÇOIS" in desk.get(invoice_url).get_data(as_text=True)  # as the archive holds it


@pytest.mark.parametrize("typed, stored", [
    ("DUPRÉ Jean-François", "DUPRÉ^Jean-François"),
    ("LE GALL Anne-Marie", "LE GALL^Anne-Marie"),
    ("Martin Lucie", "MARTIN^Lucie"),
    ("martin lucie", "MARTIN^Lucie"),
    ("  N'DIAYE   Awa ", "N'DIAYE^Awa"),
    ("MOREAU", "MOREAU"),
    ("Dupont^Jean", "Dupont^Jean"),  # already PN: kept, never required
])
def test_nom_prenom_as_typed_is_stored_as_family_caret_given(typed, stored):
    """What a desk types, spaces and capitals as they come; bad input tried: lower case, extra spaces,
    a compound family name, a name alone."""
    from backoffice.billing.checkin import dicom_person_name

    assert dicom_person_name(typed) == stored


def test_the_form_never_shows_or_asks_for_dicom_caret_syntax(app, desk, known):
    """The chosen patient fills the form as people write it ("DUPRÉ Jean-François", no ^); posted back,
    the group keeps the archive's own name, not a second spelling of it."""
    page = desk.get("/billing/checkin", query_string={"patient_id": "PAT-1"}).get_data(as_text=True)
    assert 'value="DUPRÉ Jean-François"' in page and 'value="1961-03-12"' in page
    assert "^" not in re.sub(r"<script.*?</script>", "", page, flags=re.S)
    assert _post(desk, patient_id="PAT-1", patient_name="DUPRÉ Jean-François",
                 patient_birth_date="1961-03-12").status_code == 302
    assert _groups(app) == [("PAT-1", "DUPRÉ^JEAN-FRANÇOIS", "19610312")]


@pytest.mark.parametrize("typo", ["DUPRE Jean-Francois", "DUPRÈ Jean-Fançois", "Jean-François DUPRÉ"])
def test_a_typo_of_a_known_patient_is_offered_never_created(app, desk, known, typo):
    """A new ID with a known patient's name (accents dropped, a letter missing, words swapped) and birth
    date: the page offers the known patient and creates nothing until the desk confirms another person."""
    response = _post(desk, patient_id="PAT-NEW", patient_name=typo, patient_birth_date="1961-03-12")
    page = response.get_data(as_text=True)
    assert response.status_code == 409
    assert "peut-être déjà connu" in page and "/billing/checkin?patient_id=PAT-1" in page
    assert f'value="{typo}"' in page  # nothing typed is lost
    assert _groups(app) == [] and _count(app, WorklistItem) == 0
    confirmed = _post(desk, patient_id="PAT-NEW", patient_name=typo, patient_birth_date="1961-03-12",
                      confirm_new_patient="1")
    assert confirmed.status_code == 302 and [g[0] for g in _groups(app)] == ["PAT-NEW"]


def test_a_different_person_is_created_without_question(app, desk, known):
    """The control: a name and birth date nobody has go straight through."""
    assert _post(desk, patient_id="PAT-9", patient_name="BERNARD Paul", patient_birth_date="1970-07-07"
                 ).status_code == 302
    assert _groups(app) == [("PAT-9", "BERNARD^Paul", "19700707")]


def test_a_patient_checked_in_earlier_without_images_is_found_too(app, client):
    """A patient known only from this morning's check-in (no image yet) is offered through the API,
    with the candidates in the error; ``confirm_new_patient`` overrides."""
    headers = bearer(make_user(app, "accueil", "front_desk"))
    body = {"visit_date": VISIT, "exam_group": "echographie", "patient_birth_date": "1980-01-01"}
    assert client.post("/api/v1/exam-groups", headers=headers,
                       json={**body, "patient_id": "A1", "patient_name": "MOREAU Claire"}).status_code == 201
    near = client.post("/api/v1/exam-groups", headers=headers,
                       json={**body, "patient_id": "A2", "patient_name": "MOREAU Clair", "exam_group": "scanner"})
    assert near.status_code == 409
    error = near.get_json()["error"]
    assert error["code"] == "near_match"
    assert error["candidates"] == [{"patient_id": "A1", "name": "MOREAU Claire", "birth_date": "1980-01-01"}]
    forced = client.post("/api/v1/exam-groups", headers=headers,
                         json={**body, "patient_id": "A2", "patient_name": "MOREAU Clair", "exam_group": "scanner",
                               "confirm_new_patient": True})
    assert forced.status_code == 201


def test_a_new_patient_needs_a_name_and_keeps_what_was_typed(app, desk):
    """Bad input tried: a new ID without a name (the invoice would say "—"): refused in French, the form
    comes back filled, nothing created."""
    response = _post(desk, patient_id="PAT-X", patient_birth_date="1999-09-09", patient_address="3 rue Haute")
    page = response.get_data(as_text=True)
    assert response.status_code == 400 and "saisissez son nom" in page
    assert 'value="PAT-X"' in page and 'value="3 rue Haute"' in page
    assert _groups(app) == []


def test_checking_in_twice_opens_the_existing_group(app, desk, client, known):
    """The same patient, day and exam group again: the desk lands on the group already there (page) or
    gets it back with 200 (API), never "already exists"; one worklist item only."""
    first = _post(desk, patient_id="PAT-1")
    second = _post(desk, patient_id="PAT-1")
    assert second.status_code == 302 and second.headers["Location"] == first.headers["Location"]
    page = desk.get(second.headers["Location"]).get_data(as_text=True)
    assert "Ce patient a déjà ce groupe" in page and "existe déjà" not in page
    headers = bearer(make_user(app, "accueil2", "front_desk"))
    again = client.post("/api/v1/exam-groups", headers=headers,
                        json={"patient_id": "PAT-1", "exam_group": "scanner", "visit_date": VISIT})
    assert again.status_code == 200
    assert again.get_json()["created"] is False
    assert again.get_json()["id"] == int(first.headers["Location"].rstrip("/").split("/")[-1])
    assert _count(app, ExamGroup) == 1 and _count(app, WorklistItem) == 1


def test_the_fee_and_the_consent_question_come_at_once(app, desk, known):
    """The form shows each exam group's fee; the page the check-in lands on asks the consent question with
    the price, and says the step is on the modalities' worklist with its accession number."""
    form = desk.get("/billing/checkin").get_data(as_text=True)
    assert "Scanner — 5,00" in form and "Échographie — 4,00" in form
    response = _post(desk, patient_id="PAT-1")
    page = desk.get(response.headers["Location"]).get_data(as_text=True)
    assert "Indiquer le prix au patient (5,00" in page
    assert 'id="consent-accept"' in page and 'id="consent-refuse"' in page
    accession = re.search(r"accession (\d{13})", page).group(1)
    assert "sur la liste de travail" in page
    with app.extensions["archivage"].new_session() as s:
        item = s.scalar(select(WorklistItem))
    assert (item.accession_number, item.modality, item.patient_name, item.start_date) == (
        accession, "CT", "DUPRÉ^JEAN-FRANÇOIS", "20260310")


def test_a_typed_accession_number_already_used_is_refused(app, desk):
    """Bad input tried: an accession number the worklist already has: refused in French, nothing created."""
    assert _post(desk, patient_id="P1", patient_name="ROUX Léa", accession_number="ACC-7").status_code == 302
    response = _post(desk, patient_id="P2", patient_name="FAURE Jeanne", accession_number="ACC-7")
    assert response.status_code == 409 and "déjà utilisé" in response.get_data(as_text=True)
    assert [g[0] for g in _groups(app)] == ["P1"]


def test_generated_accession_numbers_are_unique(app, client):
    """Thirty check-ins the same day: thirty different accession numbers of at most 16 characters."""
    headers = bearer(make_user(app, "accueil", "front_desk"))
    numbers = set()
    for n in range(30):
        body = client.post("/api/v1/exam-groups", headers=headers,
                           json={"patient_id": f"U{n}", "patient_name": f"PATIENT{n} Test", "exam_group": "irm",
                                 "visit_date": VISIT, "confirm_new_patient": True}).get_json()
        numbers.add(body["accession_number"])
    assert len(numbers) == 30 and all(len(a) <= 16 for a in numbers)


def test_migration_1100_matches_the_worklist_models(tmp_path):
    """The tables ``db upgrade`` creates are the models' (no drift between migration and ORM)."""
    assert migration_drift(tmp_path, "worklist") == []


def test_an_exam_group_without_a_modality_of_its_own_is_scheduled_as_ot(app, desk):
    """``autre`` maps to no modality: the worklist item says OT (a chosen modality would win)."""
    assert _post(desk, patient_id="P1", patient_name="ROUX Léa", exam_group="autre").status_code == 302
    assert _post(desk, patient_id="P1", patient_name="ROUX Léa", exam_group="radiologie",
                 modality="DX").status_code == 302
    with app.extensions["archivage"].new_session() as s:
        assert [i.modality for i in s.scalars(select(WorklistItem).order_by(WorklistItem.id))] == ["OT", "DX"]


@pytest.mark.parametrize("status, label", [("SCHEDULED", "sur la liste de travail"),
                                           ("IN PROGRESS", "examen en cours"), ("COMPLETED", "examen terminé"),
                                           ("DISCONTINUED", "examen interrompu")])
def test_the_group_page_says_where_the_modality_is(app, desk, status, label):
    """What MPPS recorded is on the desk's group page, in words."""
    group_url = _post(desk, patient_id="P1", patient_name="ROUX Léa").headers["Location"]
    with app.extensions["archivage"].new_session(write=True) as s:
        s.scalar(select(WorklistItem)).status = status
        s.commit()
    page = desk.get(group_url).get_data(as_text=True)
    assert re.search(r'id="procedure-status">([^<]*)<', page).group(1) == label
