"""The billing pages (front desk and manager), CSRF on their forms, exports and `billing verify`."""

from __future__ import annotations

import re

import pytest

from backoffice.billing import services as S


@pytest.fixture
def users(app):
    from backoffice.auth.services import create_user

    ids = {}
    with app.extensions["archivage"].new_session(write=True) as s:
        for role in ("front_desk", "manager"):
            ids[role] = create_user(s, f"p_{role}", role=role, password="correct horse battery").id
        s.commit()
    return ids


def _sign_in(client, user_id):
    with client.session_transaction() as session:
        session["_user_id"] = str(user_id)
        session["_fresh"] = True


def _group(app, patient_id="PX", exam_group="radiologie", **kw):
    with app.extensions["archivage"].new_session(write=True) as s:
        group = S.create_exam_group(s, patient_id=patient_id, visit_date=S.paris_today(), exam_group=exam_group,
                                    created_by="t", patient_name="Martin^Paul", **kw)
        s.commit()
        return group.id


def test_front_desk_flow_consent_invoice_payment(app, client, users):
    app.config["WTF_CSRF_ENABLED"] = False
    _sign_in(client, users["front_desk"])
    response = client.post("/billing/checkin", data={"patient_id": "PX", "patient_name": "Martin^Paul",
                                                     "exam_group": "radiologie",
                                                     "visit_date": S.paris_today().isoformat()})
    assert response.status_code == 302
    group_url = response.headers["Location"]
    page = client.get("/billing/").get_data(as_text=True)
    assert "MARTIN Paul" in page and "à demander" in page and "3,00" in page
    group_id = int(group_url.rstrip("/").split("/")[-1])
    client.post(f"/billing/groups/{group_id}/consent", data={"accepted": "1"})
    assert "accepté" in client.get("/billing/").get_data(as_text=True)
    response = client.post(f"/billing/groups/{group_id}/invoice", data={})
    invoice_url = response.headers["Location"]
    page = client.get(invoice_url).get_data(as_text=True)
    assert re.search(r"\d{4}-000001", page) and "émise" in page
    invoice_id = int(invoice_url.split("/")[-1])
    client.post(f"/billing/invoices/{invoice_id}/payments", data={"amount": "5,00", "method": "card"})
    page = client.get(invoice_url).get_data(as_text=True)
    assert "dépasse le reste dû" in page  # flashed: refused
    client.post(f"/billing/invoices/{invoice_id}/payments", data={"amount": "3,00", "method": "card"})
    assert "payée" in client.get(invoice_url).get_data(as_text=True)
    assert "payé" in client.get("/billing/").get_data(as_text=True)
    receipt = client.get(f"/billing/invoices/{invoice_id}/receipt.pdf")
    assert receipt.status_code == 200 and receipt.data.startswith(b"%PDF")


def test_forms_without_csrf_token_are_refused(app, client, users):
    _sign_in(client, users["front_desk"])
    group_id = _group(app)
    response = client.post(f"/billing/groups/{group_id}/consent", data={"accepted": "1"})
    assert response.status_code == 400
    with app.extensions["archivage"].new_session() as s:
        assert s.get(S.ExamGroup, group_id).consent == "pending"


def test_manager_pages_are_not_for_the_front_desk(client, users):
    _sign_in(client, users["front_desk"])
    assert client.get("/billing/tariffs").status_code == 403
    _sign_in(client, users["manager"])
    page = client.get("/billing/tariffs").get_data(as_text=True)
    assert "Radiologie conventionnelle" in page and "3,00" in page


def test_exports_list_invoices_and_payments(app, client, users):
    group_id = _group(app, exam_group="echographie")
    with app.extensions["archivage"].new_session(write=True) as s:
        invoice = S.issue_invoice(s, group_id, issued_by="t")
        S.record_payment(s, invoice.id, amount_cents=400, method="cash", received_by="t")
        number = invoice.number
        s.commit()
    _sign_in(client, users["manager"])
    today = S.paris_today().isoformat()
    csv_text = client.get(f"/billing/exports/invoices.csv?start={today}&end={today}").get_data(as_text=True)
    assert f"facture;{number};" in csv_text and ";400;" in csv_text and "paiement" in csv_text
    fec = client.get(f"/billing/exports/fec.txt?start={today}&end={today}").get_data(as_text=True)
    lines = [line.split("\t") for line in fec.strip().split("\r\n")]
    assert lines[0][0] == "JournalCode" and all(len(line) == 18 for line in lines)
    debit = sum(float(line[11].replace(",", ".")) for line in lines[1:])
    credit = sum(float(line[12].replace(",", ".")) for line in lines[1:])
    assert debit == credit == 8.0  # sale 4 € + cash 4 €, balanced


def test_billing_verify_command(app, runner):
    group_id = _group(app)
    with app.extensions["archivage"].new_session(write=True) as s:
        invoice = S.issue_invoice(s, group_id, issued_by="t")
        S.record_payment(s, invoice.id, amount_cents=100, method="cash", received_by="t")
        s.commit()
    result = runner.invoke(args=["billing", "verify"])
    assert result.exit_code == 0 and "intact: 1 entries" in result.output
    from sqlalchemy import text

    with app.extensions["archivage"].new_session(write=True) as s:
        s.execute(text("DROP TRIGGER billing_payment_no_update"))
        s.execute(text("UPDATE billing_payment SET method = 'card'"))
        s.commit()
    result = runner.invoke(args=["billing", "verify"])
    assert result.exit_code == 1 and "broken at entry" in result.output


def test_cheque_remittance_slip_page(app, client, users):
    app.config["WTF_CSRF_ENABLED"] = False
    for n in range(2):
        group_id = _group(app, patient_id=f"CH{n}")
        with app.extensions["archivage"].new_session(write=True) as s:
            invoice = S.issue_invoice(s, group_id, issued_by="t")
            S.record_payment(s, invoice.id, amount_cents=300, method="cheque", received_by="t")
            s.commit()
    _sign_in(client, users["front_desk"])
    response = client.post("/billing/remittance")
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "2 chèque(s)" in page and "6,00" in page and "MARTIN Paul" in page
