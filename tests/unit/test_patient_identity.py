"""The patient's INS, legal guardian and balance on the patient page, and the INS on documents (issue 11 §1).

Patients arrive the way images do (the import path) or the way the desk checks them in (an exam
group). Each test names the bad input it tries.
"""

from __future__ import annotations

import re
import subprocess
from html import unescape
from datetime import date, datetime, timezone

import pytest
from sqlalchemy import select

from tests.helpers import make_ct, migration_drift, require_tool
from tests.retention_support import bearer, make_user, sign_in

NIR = "184127645108946"  # the key of 1841276451089 is 46
NIR_PRINTED = "1 84 12 76 451 089 46"
NIA = "799129912345606"  # a temporary number (first digit 7): an INS-NIA


def _text(pdf: bytes) -> str:
    pdftotext = require_tool("pdftotext")
    out = subprocess.run([pdftotext, "-", "-"], input=pdf, capture_output=True, check=True).stdout.decode()
    return " ".join(out.replace("\u202f", " ").replace("\xa0", " ").split())


def _page_text(html: str) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).replace("\u202f", " ").replace("\xa0", " ").split())


# -- the NIR and its key, table-driven ---------------------------------------------------------------


@pytest.mark.parametrize("typed, expected", [
    ("184127645108946", NIR),
    ("1 84 12 76 451 089 46", NIR),  # grouped as on the carte Vitale
    ("1.84.12.76.451.089-46", NIR),
    ("269029934173285", "269029934173285"),
    ("185052A12345633", "185052A12345633"),  # Corsica: 2A counts as 19 for the key
    ("185052a12345633", "185052A12345633"),  # typed in lower case
    ("185052B12345660", "185052B12345660"),  # Corsica: 2B counts as 18
    ("293032012345617", "293032012345617"),
    (NIA, NIA),
])
def test_a_nir_with_its_right_key_is_accepted(typed, expected):
    from backoffice.patients.nir import validate

    assert validate(typed) == expected


@pytest.mark.parametrize("typed, reason", [
    ("184127645108947", "key"),  # one off on the key
    ("184127645108964", "key"),  # key digits swapped
    ("284127645108946", "key"),  # sex digit changed, key kept
    ("185052A12345660", "key"),  # the 2B key on a 2A number
    ("185052B12345633", "key"),  # the 2A key on a 2B number
    ("185052019123456", "key"),  # 2A typed as 19 (the computation form, not the number)
    ("18412764510894", "length"),  # 14 characters
    ("1841276451089460", "length"),  # 16 characters
    ("", "length"),
    ("1841276451O8946", "form"),  # letter O for zero
    ("18412ABC5108946", "form"),  # letters outside the department
    ("185052C12345633", "form"),  # 2C is no department
    ("584127645108946", "form"),  # first digit 5: neither a sex nor a temporary number
    ("084127645108946", "form"),
])
def test_a_wrong_nir_is_refused_with_its_reason(typed, reason):
    from backoffice.patients.nir import InvalidNir, validate

    with pytest.raises(InvalidNir) as refused:
        validate(typed)
    assert refused.value.reason == reason


def test_the_key_counts_corsica_as_19_and_18():
    from backoffice.patients.nir import key_of

    assert key_of("185052A123456") == 97 - 1850519123456 % 97
    assert key_of("185052B123456") == 97 - 1850518123456 % 97
    assert key_of("1841276451089") == 46


@pytest.mark.parametrize("nir, oid", [(NIR, "1.2.250.1.213.1.4.8"), ("269029934173285", "1.2.250.1.213.1.4.8"),
                                      (NIA, "1.2.250.1.213.1.4.9")])
def test_the_oid_follows_the_kind_of_number(nir, oid):
    from backoffice.patients.nir import oid_of

    assert oid_of(nir) == oid


# -- the patient page ----------------------------------------------------------------------------------


@pytest.fixture
def patients(app, tmp_path):
    from pydicom.uid import generate_uid

    from archive_core.maintenance import import_path

    app.config["CLOCK"] = lambda: datetime(2026, 6, 15, 10, 0, tzinfo=timezone.utc)
    archive = app.extensions["archivage"].archive
    out = {}
    for pid, name in (("PAT001", "DUPRÉ^JEAN"), ("PAT002", "LEFÈVRE^Marie")):
        folder = tmp_path / f"in-{generate_uid()}"
        folder.mkdir()
        ds = make_ct(patient_id=pid, patient_name=name, charset="ISO_IR 192", study_date="20260615",
                     PatientBirthDate="19841201", StudyDescription="Thorax")
        ds.save_as(folder / "1.dcm", enforce_file_format=True)
        assert import_path(archive, folder).stored == 1
        out[pid] = ds.StudyInstanceUID
    return out


def _ins_row(app, patient_id):
    from backoffice.patients.models import PatientIns

    with app.extensions["archivage"].new_session() as s:
        row = s.scalar(select(PatientIns).where(PatientIns.patient_id == patient_id))
        return None if row is None else (row.nir, row.oid, row.qualified, row.document, row.verified_by)


def _audits(app, action):
    from archive_core.audit import AuditEvent

    with app.extensions["archivage"].new_session() as s:
        return list(s.execute(select(AuditEvent.actor, AuditEvent.patient_id, AuditEvent.detail)
                              .where(AuditEvent.action == action).order_by(AuditEvent.id)))


def test_qualified_needs_a_checked_document(app, client, patients):
    """Bad input: "qualified" ticked without any identity document checked; then a wrong key with
    a document. Both refused in French, nothing stored; the right NIR with a passport is kept with
    who checked it, and the page says the qualification also needs INSi."""
    app.config["WTF_CSRF_ENABLED"] = False
    sign_in(client, app, "accueil", "front_desk")
    page = client.post("/patients/PAT001/ins", data={"nir": NIR, "qualified": "y"}, follow_redirects=True)
    assert "vérifiez d'abord une pièce d'identité" in _page_text(page.get_data(as_text=True))
    assert _ins_row(app, "PAT001") is None
    page = client.post("/patients/PAT001/ins", data={"nir": "184127645108947", "document": "passport"},
                       follow_redirects=True)
    assert "La clé du NIR ne correspond pas" in _page_text(page.get_data(as_text=True))
    assert _ins_row(app, "PAT001") is None

    page = _page_text(client.post("/patients/PAT001/ins", data={"nir": NIR, "document": "passport"},
                                  follow_redirects=True).get_data(as_text=True))
    assert _ins_row(app, "PAT001") == (NIR, "1.2.250.1.213.1.4.8", False, "passport", "accueil")
    assert NIR_PRINTED in page and "identité non qualifiée" in page
    assert re.search(r"Pièce vérifiée : passeport, par accueil le \d+ \w+ \d{4}", page)
    assert "téléservice INSi, que ce logiciel n'interroge pas" in page

    page = _page_text(client.post("/patients/PAT001/ins", data={"nir": NIR, "document": "id_card",
                                                                "qualified": "y"},
                                  follow_redirects=True).get_data(as_text=True))
    assert _ins_row(app, "PAT001") == (NIR, "1.2.250.1.213.1.4.8", True, "id_card", "accueil")
    assert "identité qualifiée" in page and "carte nationale d'identité" in page
    recorded = _audits(app, "patient.ins.recorded")
    assert [(actor, pid) for actor, pid, _d in recorded] == [("accueil", "PAT001"), ("accueil", "PAT001")]
    assert NIR not in "".join(d for _a, _p, d in recorded)  # the trail names the patient, not the number


def test_a_temporary_number_is_an_ins_nia(app, client, patients):
    app.config["WTF_CSRF_ENABLED"] = False
    sign_in(client, app, "gerante", "manager")  # the manager records it too
    page = client.post("/patients/PAT002/ins", data={"nir": "7 99 12 99 123 456 06"},
                       follow_redirects=True).get_data(as_text=True)
    assert _ins_row(app, "PAT002") == (NIA, "1.2.250.1.213.1.4.9", False, None, None)
    assert "NIA, numéro temporaire" in page and "1.2.250.1.213.1.4.9" in page


def test_recording_the_ins_needs_the_desk_and_a_csrf_token(app, client, patients):
    """Bad input: a radiologist posts a NIR; the desk posts without a CSRF token; an unknown patient."""
    app.config["WTF_CSRF_ENABLED"] = False
    sign_in(client, app, "radio", "radiologist")
    page = client.get("/patients/PAT001").get_data(as_text=True)
    assert "Enregistrer l'INS" not in page and "Ajouter le représentant légal" not in page
    assert client.post("/patients/PAT001/ins", data={"nir": NIR}).status_code == 403
    assert client.post("/patients/PAT001/guardians", data={"name": "X", "relationship": "mother",
                                                           "phone": "0600000000"}).status_code == 403
    app.config["WTF_CSRF_ENABLED"] = True
    sign_in(client, app, "accueil", "front_desk")
    assert client.post("/patients/PAT001/ins", data={"nir": NIR}).status_code == 400  # no CSRF token
    assert _ins_row(app, "PAT001") is None
    app.config["WTF_CSRF_ENABLED"] = False
    assert client.post("/patients/NOBODY/ins", data={"nir": NIR}).status_code == 404
    assert _ins_row(app, "NOBODY") is None


def test_ins_errors_in_english_when_chosen(app, client, patients):
    app.config["WTF_CSRF_ENABLED"] = False
    sign_in(client, app, "accueil", "front_desk")
    page = client.post("/patients/PAT001/ins", data={"nir": "18412764510894"}, follow_redirects=True,
                       headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert "15 characters" in page and "Le NIR compte" not in page
    page = client.post("/patients/PAT001/ins", data={"nir": NIR, "qualified": "y"}, follow_redirects=True,
                       headers={"Accept-Language": "en"}).get_data(as_text=True)
    page = _page_text(page)
    assert "identity document" in page and "vérifiez d'abord" not in page


def test_the_desk_records_and_ends_a_guardian(app, client, patients):
    """Bad input: a phone number with letters, an empty name, an unknown relationship, ending a
    guardian of another patient. Each refused in French with nothing stored."""
    from backoffice.patients.models import PatientGuardian

    app.config["WTF_CSRF_ENABLED"] = False
    sign_in(client, app, "accueil", "front_desk")
    for data, message in [
        ({"name": "DUPRÉ Anne", "relationship": "mother", "phone": "06 douze"}, "Numéro de téléphone non reconnu"),
        ({"name": "  ", "relationship": "mother", "phone": "06 12 34 56 78"}, "Indiquez le nom du représentant"),
        ({"name": "DUPRÉ Anne", "relationship": "aunt", "phone": "06 12 34 56 78"}, "Choisissez le lien"),
    ]:
        page = client.post("/patients/PAT001/guardians", data=data, follow_redirects=True).get_data(as_text=True)
        assert message in _page_text(page)
    with app.extensions["archivage"].new_session() as s:
        assert s.scalars(select(PatientGuardian)).all() == []

    page = _page_text(client.post("/patients/PAT001/guardians", data={
        "name": "DUPRÉ Anne", "relationship": "mother", "phone": "+33 6 12 34 56 78"},
        follow_redirects=True).get_data(as_text=True))
    assert "DUPRÉ Anne mère +33 6 12 34 56 78" in page
    with app.extensions["archivage"].new_session() as s:
        guardian_id = s.scalar(select(PatientGuardian.id))
    assert _audits(app, "patient.guardian.recorded")[0][:2] == ("accueil", "PAT001")
    # Another patient's page cannot end it.
    other = client.post(f"/patients/PAT002/guardians/{guardian_id}/end", follow_redirects=True)
    assert "n'est plus enregistré pour ce patient" in _page_text(other.get_data(as_text=True))
    assert "DUPRÉ Anne" in client.get("/patients/PAT001").get_data(as_text=True)
    ended = client.post(f"/patients/PAT001/guardians/{guardian_id}/end", follow_redirects=True)
    assert "DUPRÉ Anne" not in ended.get_data(as_text=True)
    with app.extensions["archivage"].new_session() as s:
        row = s.get(PatientGuardian, guardian_id)
        assert row.ended_by == "accueil" and row.ended_at is not None  # kept, ended
    assert _audits(app, "patient.guardian.ended")[0][:2] == ("accueil", "PAT001")


@pytest.mark.parametrize("birth, minor", [("20080616", True), ("20080615", False), ("19841201", False),
                                          ("", False), ("2008", False)])
def test_a_minor_is_told_apart_on_the_day(birth, minor):
    """Eighteen on 15 June 2026 for a birth on 15 June 2008, not the day before; no or a partial
    birth date is not taken for a minor."""
    from backoffice.patients.services import is_minor

    assert is_minor(birth, date(2026, 6, 15)) is minor


def test_the_page_asks_for_a_minor_s_guardian(app, client, patients):
    from backoffice.billing import services as S

    with app.extensions["archivage"].new_session(write=True) as s:
        S.create_exam_group(s, patient_id="KID1", visit_date=date(2026, 6, 15), exam_group="radiologie",
                            created_by="t", patient_name="PETIT^Léo", patient_birth_date="20150301")
        s.commit()
    app.config["WTF_CSRF_ENABLED"] = False
    sign_in(client, app, "accueil", "front_desk")
    assert "Patient mineur : enregistrez son représentant légal." in _page_text(
        client.get("/patients/KID1").get_data(as_text=True))
    assert "Patient mineur" not in _page_text(client.get("/patients/PAT001").get_data(as_text=True))
    page = client.post("/patients/KID1/guardians", data={"name": "PETIT Anne", "relationship": "mother",
                                                         "phone": "0612345678"}, follow_redirects=True)
    assert "Patient mineur" not in _page_text(page.get_data(as_text=True))


# -- documents -----------------------------------------------------------------------------------------


def test_the_paper_reproduction_carries_a_qualified_ins_only(app, client, patients):
    app.config["WTF_CSRF_ENABLED"] = False
    sign_in(client, app, "accueil", "front_desk")
    client.post("/patients/PAT001/ins", data={"nir": NIR, "document": "id_card", "qualified": "y"})
    client.post("/patients/PAT002/ins", data={"nir": "293032012345617", "document": "id_card"})  # not qualified
    text = _text(client.get(f"/radiology/studies/{patients['PAT001']}/reproduction.pdf").data)
    assert f"INS : {NIR_PRINTED} (NIR, OID 1.2.250.1.213.1.4.8), identité qualifiée" in text
    other = _text(client.get(f"/radiology/studies/{patients['PAT002']}/reproduction.pdf").data)
    assert "LEFÈVRE" in other and "INS" not in other and "2 93 03 20" not in other


def _desk_invoice(app, client, patient_id, *, coverage_bp, third_party):
    """A patient with a mutuelle and the invoice of an échographie (400 cents), through the API."""
    from backoffice.billing import services as S

    manager = bearer(make_user(app, f"api_gerante_{patient_id}", "manager"))
    desk = bearer(make_user(app, f"api_accueil_{patient_id}", "front_desk"))
    insurer = client.post("/api/v1/insurers", headers=manager, json={
        "name": f"Mutuelle {patient_id}", "amc_number": f"AMC-{patient_id}", "coverage_bp": coverage_bp,
        "third_party_payment": third_party}).get_json()
    # Checked in first: a mutuelle is recorded for a patient the practice knows.
    group = client.post("/api/v1/exam-groups", headers=desk, json={
        "patient_id": patient_id, "exam_group": "echographie", "visit_date": S.paris_today().isoformat(),
        "patient_name": "Durand^Marie"}).get_json()
    assert client.post(f"/api/v1/patients/{patient_id}/memberships", headers=desk, json={
        "insurer_id": insurer["id"], "member_number": "123", "valid_from": "2000-01-01"}).status_code == 201
    response = client.post("/api/v1/invoices", headers=desk, json={"exam_group_id": group["id"]})
    assert response.status_code == 201, response.get_json()
    return response.get_json(), desk


def test_the_invoice_carries_the_qualified_ins(app, client):
    """The invoice PDF's patient box prints the INS once the identity is qualified; an unqualified
    identity (document checked, INSi not consulted) prints none."""
    from backoffice.billing import services as S

    with app.extensions["archivage"].new_session(write=True) as s:
        for pid in ("INV1", "INV2"):
            S.create_exam_group(s, patient_id=pid, visit_date=S.paris_today(), exam_group="radiologie",
                                created_by="t", patient_name="DURAND^Marie")
        s.commit()
    app.config["WTF_CSRF_ENABLED"] = False
    sign_in(client, app, "accueil", "front_desk")
    client.post("/patients/INV1/ins", data={"nir": "185052A12345633", "document": "passport", "qualified": "y"})
    client.post("/patients/INV2/ins", data={"nir": NIR, "document": "passport"})
    texts = {}
    for pid in ("INV1", "INV2"):
        invoice, _desk = _desk_invoice(app, client, pid, coverage_bp=5000, third_party=False)
        texts[pid] = _text(client.get(f"/billing/invoices/{invoice['id']}/invoice.pdf").data)
    assert "INS : 1 85 05 2A 123 456 33 (NIR, OID 1.2.250.1.213.1.4.8), identité qualifiée" in texts["INV1"]
    assert "Identifiant patient : INV2" in texts["INV2"] and "INS" not in texts["INV2"]


# -- balance -------------------------------------------------------------------------------------------


def test_the_balance_splits_what_the_patient_and_the_mutuelle_owe(app, client):
    """An échographie (4,00 €) with a mutuelle covering 60 % in tiers payant: the patient owes
    1,60 €, pays 1,00 € at the desk (a partial payment): the page shows 0,60 € for the patient and
    2,40 € expected from the mutuelle, separately, in euros with a decimal comma."""
    invoice, desk = _desk_invoice(app, client, "BAL1", coverage_bp=6000, third_party=True)
    assert (invoice["patient_balance_cents"], invoice["insurer_balance_cents"]) == (160, 240)
    paid = client.post(f"/api/v1/invoices/{invoice['id']}/payments", headers=desk,
                       json={"amount_cents": 100, "method": "cash"})
    assert paid.status_code == 201, paid.get_json()
    sign_in(client, app, "accueil", "front_desk")
    page = _page_text(client.get("/patients/BAL1").get_data(as_text=True))
    assert "Reste dû par le patient 0,60 €" in page
    assert "Attendu des mutuelles (tiers payant) 2,40 €" in page
    english = _page_text(client.get("/patients/BAL1", headers={"Accept-Language": "en"}).get_data(as_text=True))
    assert "€0.60" in english and "€2.40" in english


def test_the_balance_shows_what_is_owed_back_to_the_patient(app, client):
    """No tiers payant: the patient pays the 4,00 €, then the invoice is cancelled by a credit note.
    The page shows nothing owed either way and 4,00 € to give back to the patient."""
    invoice, desk = _desk_invoice(app, client, "BAL2", coverage_bp=6000, third_party=False)
    assert client.post(f"/api/v1/invoices/{invoice['id']}/payments", headers=desk,
                       json={"amount_cents": 400, "method": "card"}).status_code == 201
    sign_in(client, app, "accueil", "front_desk")
    assert "À rembourser au patient" not in _page_text(client.get("/patients/BAL2").get_data(as_text=True))
    assert client.post(f"/api/v1/invoices/{invoice['id']}/credit-notes", headers=desk,
                       json={"reason": "examen non réalisé"}).status_code == 201
    page = _page_text(client.get("/patients/BAL2").get_data(as_text=True))
    assert "Reste dû par le patient 0,00 €" in page and "Attendu des mutuelles (tiers payant) 0,00 €" in page
    assert "À rembourser au patient 4,00 €" in page


# -- schema --------------------------------------------------------------------------------------------


def test_the_migration_matches_the_patient_models(tmp_path):
    """`db upgrade` (all heads) creates exactly the INS and guardian tables the models use."""
    assert migration_drift(tmp_path, "patient_ins", "patient_guardian") == []


def test_ins_and_guardians_round_trip_on_sqlite_and_postgresql(database_url):
    """The upgraded schema on both databases: a corrected NIR (wrong key first: refused, the stored
    one kept), its check cleared by a record without a document, a guardian ended and kept."""
    from archive_core.db import make_engine, session_factory, write_session
    from tests.helpers import migrate
    from backoffice.patients import services
    from backoffice.patients.models import PatientGuardian, PatientIns
    from backoffice.patients.nir import InvalidNir

    migrate(database_url)
    engine = make_engine(database_url)
    factory = session_factory(engine)
    try:
        with write_session(factory) as s:
            services.record_ins(s, "P1", "185052B12345660", qualified=True, document="passport", recorded_by="a")
            services.add_guardian(s, "P1", name="MARTIN Paul", relationship="tutor", phone="01 23 45 67 89",
                                  recorded_by="a")
        with pytest.raises(InvalidNir):
            with write_session(factory) as s:
                services.record_ins(s, "P1", "185052B12345661", qualified=False, recorded_by="b")
        with factory() as s:
            row = s.scalar(select(PatientIns))
            assert (row.nir, row.qualified, row.document, row.verified_by) == ("185052B12345660", True, "passport", "a")
            assert row.verified_at is not None
        with write_session(factory) as s:
            services.record_ins(s, "P1", NIR, qualified=False, recorded_by="b")  # corrected, not checked again
            guardian = services.current_guardians(s, "P1")[0]
            services.end_guardian(s, "P1", guardian.id, ended_by="b")
        with factory() as s:
            row = s.scalar(select(PatientIns))
            assert (row.nir, row.qualified, row.document, row.verified_at) == (NIR, False, None, None)
            assert services.current_guardians(s, "P1") == ()
            assert s.scalar(select(PatientGuardian.ended_by)) == "b"
    finally:
        engine.dispose()
