"""The billing JSON API of DESIGN.md's public contract, through the Flask test client."""

from __future__ import annotations

import hashlib
import subprocess
from datetime import date
from urllib.parse import quote

import pytest

from tests.helpers import make_ct, require_tool



def _today() -> str:
    """The practice's day by billing's own clock (Paris): at 23:30 UTC on 31 December the invoice
    is already numbered in the next year, which the machine's date.today() would not say."""
    from backoffice.billing.base import paris_today

    return paris_today().isoformat()


@pytest.fixture
def tokens(app):
    from backoffice.auth.services import create_token, create_user

    facade = app.extensions["archivage"]
    out = {}
    with facade.new_session(write=True) as s:
        for role in ("front_desk", "manager", "radiologist"):
            create_user(s, f"u_{role}", role=role, password="correct horse battery")
            out[role] = {"Authorization": f"Bearer {create_token(s, f'u_{role}')}"}
        s.commit()
    return out


@pytest.fixture
def desk(tokens):
    return tokens["front_desk"]


def _arrive(app, tmp_path, *datasets, external=False):
    from archive_core.maintenance import import_path

    folder = tmp_path / f"incoming-{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    for n, ds in enumerate(datasets):
        ds.save_as(folder / f"{n}.dcm", enforce_file_format=True)
    import_path(app.extensions["archivage"].archive, folder, external=external)


def _checkin(client, headers, patient_id="PAT/01", exam_group="echographie", **extra):
    response = client.post("/api/v1/exam-groups", headers=headers,
                           json={"patient_id": patient_id, "exam_group": exam_group, "visit_date": _today(),
                                 "patient_name": "Durand^Marie", **extra})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_exam_groups_exist_as_soon_as_a_study_arrived(app, client, desk, tmp_path):
    _arrive(app, tmp_path, make_ct(patient_id="P1", study_date="20260310", modality="CT"),
            make_ct(patient_id="P1", study_date="20260310", modality="US", AccessionNumber="ACC2"),
            make_ct(patient_id="P2", study_date="20260310", modality="MR", AccessionNumber="ACC3"))
    _arrive(app, tmp_path, make_ct(patient_id="P1", study_date="20260310", modality="MG"), external=True)
    body = client.get("/api/v1/exam-groups?date=2026-03-10", headers=desk).get_json()
    got = sorted((i["patient_id"], i["exam_group"], i["fee_cents"], i["consent"], len(i["study_uids"]))
                 for i in body["items"])
    assert got == [("P1", "echographie", 400, "pending", 1), ("P1", "scanner", 500, "pending", 1),
                   ("P2", "irm", 500, "pending", 1)]
    assert set(body["items"][0]) >= {"id", "patient_id", "visit_date", "exam_group", "study_uids", "fee_cents",
                                     "consent", "invoice_id"}
    again = client.get("/api/v1/exam-groups?date=2026-03-10", headers=desk).get_json()
    assert len(again["items"]) == 3


def test_a_study_arriving_after_check_in_joins_its_group_by_accession(app, client, desk, tmp_path):
    group = _checkin(client, desk, patient_id="P9", exam_group="scanner", accession_number="A77",
                     visit_date="2026-03-11")
    _arrive(app, tmp_path, make_ct(patient_id="P9", study_date="20260311", AccessionNumber="A77"))
    items = client.get("/api/v1/exam-groups?patient_id=P9", headers=desk).get_json()["items"]
    assert [(i["id"], len(i["study_uids"])) for i in items] == [(group["id"], 1)]


def test_consent_invoice_payment_receipt(app, client, desk, tokens):
    group = _checkin(client, desk)
    response = client.post(f"/api/v1/exam-groups/{group['id']}/consent", headers=desk, json={"accepted": True})
    assert response.status_code == 200 and response.get_json()["consent"] == "accepted"
    response = client.post("/api/v1/invoices", headers=desk, json={"exam_group_id": group["id"]})
    assert response.status_code == 201
    invoice = response.get_json()
    assert invoice["number"].endswith("-000001") and invoice["number"].startswith(_today()[:4])
    assert (invoice["total_cents"], invoice["insurer_cents"], invoice["patient_cents"], invoice["balance_cents"],
            invoice["status"]) == (400, 0, 400, 400, "issued")
    response = client.post(f"/api/v1/invoices/{invoice['id']}/payments", headers=desk,
                           json={"amount_cents": 150, "method": "card"})
    assert response.status_code == 201
    assert (response.get_json()["balance_cents"], response.get_json()["status"]) == (250, "partially_paid")
    response = client.post(f"/api/v1/invoices/{invoice['id']}/payments", headers=desk,
                           json={"amount_cents": 300, "method": "cash"})
    assert response.status_code == 409
    assert "overpayment" in response.get_json()["error"]["message"]
    assert client.post(f"/api/v1/invoices/{invoice['id']}/payments", headers=desk,
                       json={"amount_cents": 250, "method": "cash"}).get_json()["status"] == "paid"
    listed = client.get(f"/api/v1/exam-groups?patient_id={quote('PAT/01', safe='')}", headers=desk).get_json()
    assert listed["items"][0]["invoice_id"] == invoice["id"]
    receipt = client.get(f"/api/v1/invoices/{invoice['id']}/receipt.pdf", headers=desk)
    assert receipt.status_code == 200 and receipt.mimetype == "application/pdf"
    assert receipt.data.startswith(b"%PDF")


def test_refused_consent_blocks_the_invoice(client, desk):
    group = _checkin(client, desk)
    client.post(f"/api/v1/exam-groups/{group['id']}/consent", headers=desk, json={"accepted": False})
    response = client.post("/api/v1/invoices", headers=desk, json={"exam_group_id": group["id"]})
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "consent_refused"


@pytest.mark.parametrize("body", [{"amount_cents": -100, "method": "card"}, {"amount_cents": 0, "method": "card"},
                                  {"amount_cents": "4", "method": "card"}, {"amount_cents": 1.5, "method": "cash"},
                                  {"amount_cents": 100, "method": "bitcoin"}, {"method": "card"}])
def test_impossible_amounts_are_refused_with_a_json_error(client, desk, body):
    group = _checkin(client, desk)
    invoice = client.post("/api/v1/invoices", headers=desk, json={"exam_group_id": group["id"]}).get_json()
    response = client.post(f"/api/v1/invoices/{invoice['id']}/payments", headers=desk, json=body)
    assert 400 <= response.status_code < 500
    assert set(response.get_json()["error"]) == {"code", "message"}


def test_insurer_membership_split_and_credit_note(client, desk, tokens):
    manager = tokens["manager"]
    assert client.post("/api/v1/insurers", headers=desk, json={"name": "X", "amc_number": "1"}).status_code == 403
    response = client.post("/api/v1/insurers", headers=manager,
                           json={"name": "Mutuelle Bleue", "amc_number": "88888888", "coverage_bp": 3333,
                                 "third_party_payment": True})
    assert response.status_code == 201
    insurer = response.get_json()
    group = _checkin(client, desk, exam_group="mammographie")  # the patient is known before the mutuelle
    response = client.post(f"/api/v1/patients/{quote('PAT/01', safe='')}/memberships", headers=desk,
                           json={"insurer_id": insurer["id"], "member_number": "M-1", "valid_from": "2020-01-01"})
    assert response.status_code == 201
    invoice = client.post("/api/v1/invoices", headers=desk, json={"exam_group_id": group["id"]}).get_json()
    # 400 × 33.33 % = 133.32 -> 133 cents for the insurer, the rest for the patient
    assert (invoice["insurer_cents"], invoice["patient_cents"]) == (133, 267)
    response = client.post(f"/api/v1/invoices/{invoice['id']}/credit-notes", headers=desk, json={"reason": "erreur"})
    assert response.status_code == 201
    note = response.get_json()
    assert note["number"].startswith("AV-") and note["number"].endswith("-000001") and note["total_cents"] == -400
    assert client.get(f"/api/v1/invoices/{invoice['id']}", headers=desk).get_json()["status"] == "credited"


def test_bad_insurer_rates_are_refused(client, tokens):
    response = client.post("/api/v1/insurers", headers=tokens["manager"],
                           json={"name": "Trop", "amc_number": "2", "coverage_bp": 12000})
    assert response.status_code == 400


def test_lists_stop_at_100_with_a_next_link(app, client, desk):
    from backoffice.billing import services as S

    facade = app.extensions["archivage"]
    with facade.new_session(write=True) as s:
        for n in range(105):
            S.create_exam_group(s, patient_id=f"P{n:03d}", visit_date=date(2026, 5, 1), exam_group="radiologie",
                                created_by="t")
        s.commit()
    first = client.get("/api/v1/exam-groups?date=2026-05-01", headers=desk).get_json()
    assert len(first["items"]) == 100 and "next" in first
    second = client.get(first["next"], headers=desk).get_json()
    assert len(second["items"]) == 5 and "next" not in second
    assert {i["id"] for i in first["items"]}.isdisjoint({i["id"] for i in second["items"]})


def test_roles_outside_the_desk_are_refused(client, tokens):
    assert client.get("/api/v1/exam-groups", headers=tokens["radiologist"]).status_code == 403
    assert client.get("/api/v1/exam-groups").status_code == 401


def test_invoice_pdf_is_stored_at_issue_identical_on_reprint_and_carries_the_mentions(app, client, desk):
    pdftotext = require_tool("pdftotext")
    app.config.update(PRACTICE_NAME="Cabinet de radiologie du Parc", PRACTICE_SIRET="12345678900011")
    group = _checkin(client, desk, exam_group="echographie")
    invoice = client.post("/api/v1/invoices", headers=desk, json={"exam_group_id": group["id"]}).get_json()
    first = client.get(f"/api/v1/invoices/{invoice['id']}/invoice.pdf", headers=desk)
    app.config.update(PRACTICE_NAME="Autre nom")  # a later change of settings does not alter an issued invoice
    second = client.get(f"/api/v1/invoices/{invoice['id']}/invoice.pdf", headers=desk)
    assert first.status_code == 200 and hashlib.sha256(first.data).digest() == hashlib.sha256(second.data).digest()
    text = subprocess.run([pdftotext, "-", "-"], input=first.data, capture_output=True, check=True).stdout.decode()
    for mention in ("Cabinet de radiologie du Parc", "12345678900011", invoice["number"], "DURAND Marie",
                    "Échographie", "4,00", "€", "à configurer"):
        assert mention in text, mention


def test_receipt_names_invoice_amount_method_and_remaining_due(client, desk):
    pdftotext = require_tool("pdftotext")
    group = _checkin(client, desk, exam_group="echographie")
    invoice = client.post("/api/v1/invoices", headers=desk, json={"exam_group_id": group["id"]}).get_json()
    client.post(f"/api/v1/invoices/{invoice['id']}/payments", headers=desk, json={"amount_cents": 150,
                                                                                  "method": "card"})
    pdf = client.get(f"/api/v1/invoices/{invoice['id']}/receipt.pdf", headers=desk).data
    text = " ".join(subprocess.run([pdftotext, "-", "-"], input=pdf, capture_output=True, check=True)
                    .stdout.decode().split())
    assert invoice["number"] in text and "carte bancaire" in text
    assert "1,50" in text and "Reste dû par le patient 2,50" in text.replace("\u202f", " ").replace("\xa0", " ")


def test_an_invoice_lists_the_studies_that_arrived_even_if_nobody_listed_them(app, client, desk, tmp_path):
    pdftotext = require_tool("pdftotext")
    group = _checkin(client, desk, patient_id="P5", exam_group="scanner", visit_date="2026-03-12")
    ds = make_ct(patient_id="P5", study_date="20260312", modality="CT", AccessionNumber="Z9",
                 StudyDescription="TDM thorax")
    _arrive(app, tmp_path, ds)
    invoice = client.post("/api/v1/invoices", headers=desk, json={"exam_group_id": group["id"]}).get_json()
    pdf = client.get(f"/api/v1/invoices/{invoice['id']}/invoice.pdf", headers=desk).data
    text = " ".join(subprocess.run([pdftotext, "-", "-"], input=pdf, capture_output=True, check=True)
                    .stdout.decode().split())
    assert "TDM thorax" in text and "Z9" in text and "12 mars 2026" in text


def test_dates_come_back_in_iso_8601_with_their_utc_offset(client, desk):
    group = _checkin(client, desk)
    invoice = client.post("/api/v1/invoices", headers=desk, json={"exam_group_id": group["id"]}).get_json()
    again = client.get(f"/api/v1/invoices/{invoice['id']}", headers=desk).get_json()
    assert again["issued_at"].endswith("+00:00") and again["issued_at"] == invoice["issued_at"]


def test_a_study_without_a_date_is_a_visit_on_the_day_it_arrived(app, client, desk, tmp_path):
    from backoffice.billing.services import paris_today

    ds = make_ct(patient_id="P-NODATE", modality="US")
    del ds.StudyDate
    _arrive(app, tmp_path, ds)
    items = client.get(f"/api/v1/exam-groups?date={paris_today().isoformat()}", headers=desk).get_json()["items"]
    assert [(i["patient_id"], i["exam_group"], i["visit_date"]) for i in items] == [
        ("P-NODATE", "echographie", paris_today().isoformat())]


def test_a_guardian_paying_for_a_minor_is_named_on_the_invoice(client, desk):
    pdftotext = require_tool("pdftotext")
    group = _checkin(client, desk, patient_id="MINEUR/1", exam_group="echographie")
    invoice = client.post("/api/v1/invoices", headers=desk,
                          json={"exam_group_id": group["id"], "payer_name": "Durand^Paul"}).get_json()
    pdf = client.get(f"/api/v1/invoices/{invoice['id']}/invoice.pdf", headers=desk).data
    text = " ".join(subprocess.run([pdftotext, "-", "-"], input=pdf, capture_output=True, check=True)
                    .stdout.decode().split())
    assert "Payeur : DURAND Paul" in text  # the guardian pays; the patient stays Marie Durand
    assert "DURAND Marie" in text
