"""Tiers payant and what each party owes (issue 10 §3), through the API, the pages and the services.

Each test names the bad input it tries. Visit dates are the Paris day the test runs (invoices are
numbered and dated "now"); no assertion depends on which day that is.
"""

from __future__ import annotations

import re
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backoffice.billing import services as S
from backoffice.billing.models import Closing, ExamGroupStudy, Payment
from tests.helpers import require_tool

FEE = 400  # échographie, the default tariff


def _text(pdf: bytes) -> str:
    pdftotext = require_tool("pdftotext")
    out = subprocess.run([pdftotext, "-", "-"], input=pdf, capture_output=True, check=True).stdout.decode()
    return " ".join(out.replace("\u202f", " ").replace("\xa0", " ").split())


@pytest.fixture
def people(app):
    from backoffice.auth.services import create_token, create_user

    out = {}
    with app.extensions["archivage"].new_session(write=True) as s:
        for role in ("front_desk", "manager"):
            user = create_user(s, f"tp_{role}", role=role, password="correct horse battery")
            out[role] = {"id": user.id, "headers": {"Authorization": f"Bearer {create_token(s, f'tp_{role}')}"}}
        s.commit()
    app.config["WTF_CSRF_ENABLED"] = False
    return out


def _sign_in(client, user_id):
    with client.session_transaction() as session:
        session["_user_id"] = str(user_id)
        session["_fresh"] = True


def _insured_invoice(client, people, *, coverage_bp, third_party, patient_id="TP1", issue=True):
    """A patient with a mutuelle (coverage, tiers payant or not) and the invoice of an échographie."""
    manager, desk = people["manager"]["headers"], people["front_desk"]["headers"]
    insurer = client.post("/api/v1/insurers", headers=manager, json={
        "name": f"Mutuelle {patient_id}", "amc_number": f"AMC-{patient_id}", "coverage_bp": coverage_bp,
        "third_party_payment": third_party}).get_json()
    today = S.paris_today().isoformat()
    # Checked in first (a mutuelle is recorded for a known patient); each test patient is another
    # Marie Durand than the ones before, as the desk confirms.
    response = client.post("/api/v1/exam-groups", headers=desk, json={
        "patient_id": patient_id, "exam_group": "echographie", "visit_date": today,
        "patient_name": "Durand^Marie", "confirm_new_patient": True})
    assert response.status_code in (200, 201), response.get_json()
    group = response.get_json()
    assert client.post(f"/api/v1/patients/{patient_id}/memberships", headers=desk, json={
        "insurer_id": insurer["id"], "member_number": "123", "valid_from": "2000-01-01"}).status_code == 201
    if not issue:
        return group
    response = client.post("/api/v1/invoices", headers=desk, json={"exam_group_id": group["id"]})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def _claim_of(client, people, invoice_id):
    claims = client.get("/api/v1/claims", headers=people["manager"]["headers"]).get_json()["items"]
    return next(c for c in claims if c["invoice_id"] == invoice_id)


def test_full_tiers_payant_the_desk_collects_nothing_and_the_claim_settles_it(app, client, people):
    """Reproduced: 100 % tiers payant showed "Reste dû" = the fee with the form pre-filled at it;
    one click collected from the patient what the claim still expected from the insurer."""
    desk = people["front_desk"]["headers"]
    invoice = _insured_invoice(client, people, coverage_bp=10_000, third_party=True)
    assert (invoice["patient_balance_cents"], invoice["insurer_balance_cents"], invoice["balance_cents"]) == \
        (0, FEE, FEE)
    # The bad input: the desk tries to collect the fee.
    refused = client.post(f"/api/v1/invoices/{invoice['id']}/payments", headers=desk,
                          json={"amount_cents": FEE, "method": "card"})
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "overpayment"
    assert "insurer" in refused.get_json()["error"]["message"]
    _sign_in(client, people["front_desk"]["id"])
    page = client.get(f"/billing/invoices/{invoice['id']}").get_data(as_text=True)
    assert 'id="amount"' not in page and "Rien à encaisser" in page
    assert re.search(r'id="balance">0,00', page) and re.search(r'id="insurer-balance">4,00', page)
    response = client.post(f"/billing/invoices/{invoice['id']}/payments", data={"amount": "4,00", "method": "card"},
                           follow_redirects=True)
    assert "dépasse le reste dû par le patient" in response.get_data(as_text=True)
    with app.extensions["archivage"].new_session() as s:
        assert s.query(Payment).count() == 0
    # The claim is paid: the insurer's transfer settles it, nothing left to anyone.
    claim = _claim_of(client, people, invoice["id"])
    settled = client.post(f"/api/v1/claims/{claim['id']}/settle", headers=people["manager"]["headers"],
                          json={"paid": True}).get_json()
    assert settled["status"] == "paid"
    after = client.get(f"/api/v1/invoices/{invoice['id']}", headers=desk).get_json()
    assert (after["insurer_balance_cents"], after["patient_balance_cents"], after["status"]) == (0, 0, "paid")


def test_a_credit_note_after_the_insurer_paid_is_refunded_to_the_insurer(client, people):
    """100 % tiers payant, the claim paid, then the invoice cancelled: the 4,00 go back to the
    insurer, not to the patient (who paid nothing: refunding them is the bad input)."""
    desk = people["front_desk"]["headers"]
    invoice = _insured_invoice(client, people, coverage_bp=10_000, third_party=True, patient_id="RI1")
    claim = _claim_of(client, people, invoice["id"])
    client.post(f"/api/v1/claims/{claim['id']}/settle", headers=people["manager"]["headers"], json={"paid": True})
    note = client.post(f"/api/v1/invoices/{invoice['id']}/credit-notes", headers=desk,
                       json={"reason": "examen non réalisé"}).get_json()
    assert (note["patient_cents"], note["insurer_cents"]) == (0, -FEE)
    state = client.get(f"/api/v1/invoices/{invoice['id']}", headers=desk).get_json()
    assert (state["status"], state["balance_cents"], state["refund_due_cents"]) == ("credited", 0, FEE)
    _sign_in(client, people["front_desk"]["id"])
    page = client.get(f"/billing/invoices/{invoice['id']}").get_data(as_text=True)
    assert re.search(r'id="insurer-refund-due">4,00', page) and 'id="refund-form"' not in page
    to_patient = client.post(f"/api/v1/credit-notes/{note['id']}/refunds", headers=desk,
                             json={"amount_cents": FEE, "method": "transfer"})
    assert to_patient.status_code == 409 and to_patient.get_json()["error"]["code"] == "over_refund"
    done = client.post(f"/api/v1/credit-notes/{note['id']}/refunds", headers=desk,
                       json={"amount_cents": FEE, "method": "transfer", "payer": "insurer"})
    assert done.status_code == 201 and done.get_json()["invoice"]["refund_due_cents"] == 0


def test_rejected_claim_moves_the_insurer_part_to_the_patient(client, people):
    """50 % tiers payant, the patient pays their half, the insurer rejects: the other half is the patient's."""
    desk = people["front_desk"]["headers"]
    invoice = _insured_invoice(client, people, coverage_bp=5_000, third_party=True)
    assert (invoice["patient_balance_cents"], invoice["insurer_balance_cents"]) == (200, 200)
    over = client.post(f"/api/v1/invoices/{invoice['id']}/payments", headers=desk,
                       json={"amount_cents": 201, "method": "cash"})
    assert over.status_code == 409  # one cent over the patient's part
    assert client.post(f"/api/v1/invoices/{invoice['id']}/payments", headers=desk,
                       json={"amount_cents": 200, "method": "cash"}).status_code == 201
    claim = _claim_of(client, people, invoice["id"])
    client.post(f"/api/v1/claims/{claim['id']}/settle", headers=people["manager"]["headers"],
                json={"paid": False, "reason": "droits fermés"})
    after = client.get(f"/api/v1/invoices/{invoice['id']}", headers=desk).get_json()
    assert (after["patient_balance_cents"], after["insurer_balance_cents"], after["status"]) == \
        (200, 0, "partially_paid")
    assert client.post(f"/api/v1/invoices/{invoice['id']}/payments", headers=desk,
                       json={"amount_cents": 200, "method": "cash"}).get_json()["status"] == "paid"


def test_without_tiers_payant_the_patient_pays_all_and_gets_a_receipted_invoice(client, people):
    """Reproduced: without tiers payant the page showed an insurer share the insurer never pays."""
    desk = people["front_desk"]["headers"]
    invoice = _insured_invoice(client, people, coverage_bp=6_000, third_party=False)
    assert (invoice["patient_balance_cents"], invoice["insurer_balance_cents"]) == (FEE, 0)
    _sign_in(client, people["front_desk"]["id"])
    page = client.get(f"/billing/invoices/{invoice['id']}").get_data(as_text=True)
    assert 'id="insurer-balance"' not in page and re.search(r'id="balance">4,00', page)
    assert 'value="4,00"' in page  # the form collects the whole fee
    # Bad input: asking for the receipted invoice before anything was paid.
    early = client.get(f"/api/v1/invoices/{invoice['id']}/receipted-invoice.pdf", headers=desk)
    assert early.status_code == 409 and early.get_json()["error"]["code"] == "not_paid"
    client.post(f"/api/v1/invoices/{invoice['id']}/payments", headers=desk, json={"amount_cents": 150,
                                                                                   "method": "cash"})
    assert client.get(f"/billing/invoices/{invoice['id']}/receipted.pdf").status_code == 409
    paid = client.post(f"/api/v1/invoices/{invoice['id']}/payments", headers=desk,
                       json={"amount_cents": 250, "method": "card"}).get_json()
    assert paid["status"] == "paid"
    for pdf in (client.get(f"/api/v1/invoices/{invoice['id']}/receipted-invoice.pdf", headers=desk).data,
                client.get(f"/billing/invoices/{invoice['id']}/receipted.pdf").data):
        text = _text(pdf)
        assert f"Facture acquittée n° {invoice['number']}" in text
        assert re.search(r"Acquittée le \d{1,2} \w+ \d{4}", text)
        assert "espèces" in text and "carte bancaire" in text and "1,50 €" in text and "2,50 €" in text
        assert "la somme de 4,00 € a été reçue du patient" in text
        assert "Facture à présenter à la mutuelle Mutuelle TP1" in text
    assert 'id="receipted-link"' in client.get(f"/billing/invoices/{invoice['id']}").get_data(as_text=True)


def _fec_rows(client, people):
    _sign_in(client, people["manager"]["id"])
    day = S.paris_today().isoformat()
    body = client.get(f"/billing/exports/fec.txt?start={day}&end={day}").get_data(as_text=True)
    return [line.split("\t") for line in body.strip().split("\r\n")[1:]]


def test_fec_books_each_receivable_on_whoever_owes_it(client, people):
    """Reproduced: without tiers payant the FEC booked the insurer share on the insurer's account (411100)."""
    plain = _insured_invoice(client, people, coverage_bp=6_000, third_party=False, patient_id="NOTP")
    tp = _insured_invoice(client, people, coverage_bp=5_000, third_party=True, patient_id="TP50")
    claim = _claim_of(client, people, tp["id"])
    client.post(f"/api/v1/claims/{claim['id']}/settle", headers=people["manager"]["headers"],
                json={"paid": False, "reason": "refus"})
    rows = _fec_rows(client, people)
    sale = [r for r in rows if r[0] == "VE" and r[8] == plain["number"]]
    assert [(r[4], r[11], r[12]) for r in sale] == [("411000", "4,00", "0,00"), ("706000", "0,00", "4,00")]
    tp_sale = {r[4]: (r[11], r[12]) for r in rows if r[0] == "VE" and r[8] == tp["number"]}
    assert tp_sale == {"411000": ("2,00", "0,00"), "411100": ("2,00", "0,00"), "706000": ("0,00", "4,00")}
    moved = {r[4]: (r[11], r[12]) for r in rows if r[0] == "OD" and r[8] == tp["number"]}
    assert moved == {"411000": ("2,00", "0,00"), "411100": ("0,00", "2,00")}
    # A credit note of 3,00 on a third tiers-payant invoice: 2,00 off the patient, 1,00 off the insurer.
    third = _insured_invoice(client, people, coverage_bp=5_000, third_party=True, patient_id="TP3")
    note = client.post(f"/api/v1/invoices/{third['id']}/credit-notes", headers=people["front_desk"]["headers"],
                       json={"reason": "geste", "amount_cents": 300}).get_json()
    assert (note["patient_cents"], note["insurer_cents"]) == (-200, -100)
    rows = _fec_rows(client, people)
    credit = {r[4]: (r[11], r[12]) for r in rows if r[8] == note["number"]}
    assert credit == {"706000": ("3,00", "0,00"), "411000": ("0,00", "2,00"), "411100": ("0,00", "1,00")}
    entries: dict[str, int] = {}
    for r in rows:  # every entry balances
        entries[r[2]] = entries.get(r[2], 0) + int(r[11].replace(",", "")) - int(r[12].replace(",", ""))
    assert set(entries.values()) == {0}


def test_a_study_moves_only_between_groups_of_the_same_patient(app, client, people):
    """Reproduced: another patient's exam was moved into a group and billed on an immutable invoice."""
    today = S.paris_today()
    with app.extensions["archivage"].new_session(write=True) as s:
        mine = S.create_exam_group(s, patient_id="A1", visit_date=today, exam_group="echographie", created_by="t")
        theirs = S.create_exam_group(s, patient_id="B2", visit_date=today, exam_group="radiologie", created_by="t")
        same = S.create_exam_group(s, patient_id="B2", visit_date=today, exam_group="scanner", created_by="t")
        s.add(ExamGroupStudy(group_id=theirs.id, study_uid="1.2.3.4", modalities="CR"))
        s.commit()
        mine_id, theirs_id, same_id = mine.id, theirs.id, same.id
    _sign_in(client, people["front_desk"]["id"])
    response = client.post(f"/billing/groups/{theirs_id}/move", data={"study_uid": "1.2.3.4",
                                                                      "target_group_id": mine_id},
                           follow_redirects=True)
    assert "même patient" in response.get_data(as_text=True)
    with app.extensions["archivage"].new_session() as s:
        assert s.query(ExamGroupStudy).filter_by(study_uid="1.2.3.4").one().group_id == theirs_id
    client.post(f"/billing/groups/{theirs_id}/move", data={"study_uid": "1.2.3.4", "target_group_id": same_id})
    with app.extensions["archivage"].new_session() as s:
        assert s.query(ExamGroupStudy).filter_by(study_uid="1.2.3.4").one().group_id == same_id


def test_partial_credit_notes_and_refund_from_the_invoice_page(app, client, people):
    """Partial credit notes up to what remains creditable (5,00 on a 4,00 invoice is refused),
    listed on the invoice with their PDF; the refund is made from the page."""
    desk = people["front_desk"]["headers"]
    invoice = _insured_invoice(client, people, coverage_bp=0, third_party=False, patient_id="CN1")
    client.post(f"/api/v1/invoices/{invoice['id']}/payments", headers=desk, json={"amount_cents": FEE,
                                                                                   "method": "cash"})
    _sign_in(client, people["front_desk"]["id"])
    url = f"/billing/invoices/{invoice['id']}"
    too_much = client.post(f"{url}/credit-note", data={"reason": "geste", "amount": "5,00"}, follow_redirects=True)
    assert "dépasse ce qui reste à annuler" in too_much.get_data(as_text=True)
    client.post(f"{url}/credit-note", data={"reason": "geste commercial", "amount": "1,50"})
    page = client.get(url).get_data(as_text=True)
    first = re.search(r"AV-\d{4}-000001", page).group(0)
    assert re.search(r'id="refund-due">1,50', page) and 'id="refund-form"' in page
    api = client.get(f"/api/v1/invoices/{invoice['id']}", headers=desk).get_json()
    assert (api["credited_cents"], api["balance_cents"], api["refund_due_cents"], api["status"]) == \
        (150, 0, 150, "paid")
    over = client.post(f"/api/v1/invoices/{invoice['id']}/credit-notes", headers=desk,
                       json={"reason": "x", "amount_cents": 251})
    assert over.status_code == 409 and over.get_json()["error"]["code"] == "over_credit"
    note_id = int(re.search(r"/credit-notes/(\d+)/credit-note.pdf", page).group(1))
    refused = client.post(f"{url}/refunds", data={"credit_note_id": note_id, "amount": "1,51", "method": "cash"},
                          follow_redirects=True)
    assert "dépasse ce que le patient a payé en trop" in refused.get_data(as_text=True)
    client.post(f"{url}/refunds", data={"credit_note_id": note_id, "amount": "1,50", "method": "cash"})
    second = client.post(f"/api/v1/invoices/{invoice['id']}/credit-notes", headers=desk,
                         json={"reason": "annulation du reste"}).get_json()
    assert second["total_cents"] == -250 and second["number"].endswith("-000002")
    page = client.get(url).get_data(as_text=True)
    assert first in page and second["number"] in page and "annulée par avoir" in page
    assert "Émettre un avoir" not in page  # nothing left to credit
    text = _text(client.get(f"/billing/credit-notes/{note_id}/credit-note.pdf").data)
    assert f"Avoir n° {first}" in text and invoice["number"] in text and "-1,50 €" in text
    again = client.get(f"/api/v1/credit-notes/{note_id}/credit-note.pdf", headers=desk).data
    assert again == client.get(f"/billing/credit-notes/{note_id}/credit-note.pdf").data  # stored as issued
    final = client.get(f"/api/v1/invoices/{invoice['id']}", headers=desk).get_json()
    # 2,50 kept after the first refund, everything now credited: 2,50 to give back.
    assert (final["balance_cents"], final["refund_due_cents"], final["status"]) == (0, 250, "credited")


def test_day_closing_counts_the_drawer_and_prints_a_z_report(app, client, people):
    """The desk counts 2,00 € too little cash (bad count): the difference is recorded and printed;
    an insurer's transfer arriving after the closing is booked on the next open day."""
    desk = people["front_desk"]["headers"]
    cash = _insured_invoice(client, people, coverage_bp=0, third_party=False, patient_id="Z1")
    client.post(f"/api/v1/invoices/{cash['id']}/payments", headers=desk, json={"amount_cents": FEE, "method": "cash"})
    tp = _insured_invoice(client, people, coverage_bp=10_000, third_party=True, patient_id="Z2")
    _sign_in(client, people["front_desk"]["id"])
    missing = client.post("/billing/closing", data={"day": S.paris_today().isoformat()}, follow_redirects=True)
    assert "montant invalide" in missing.get_data(as_text=True).lower()  # the drawer must be counted
    response = client.post("/billing/closing", data={"day": S.paris_today().isoformat(), "counted_cash": "2,00",
                                                     "counted_cheque": "0"}, follow_redirects=True)
    assert "Écart de caisse" in response.get_data(as_text=True)
    with app.extensions["archivage"].new_session() as s:
        closing = s.query(Closing).one()
        assert (closing.counted_cash_cents, closing.cash_difference_cents, closing.cheque_difference_cents) == \
            (200, -200, 0)
        closing_id = closing.id
        # The closing signed the audit head it belongs to (a checkpoint outside the database too).
        from archive_core.audit_models import AuditCheckpoint, AuditEvent

        signed = s.query(AuditCheckpoint).filter_by(reason="closing").one()
        last_closing_event = s.query(AuditEvent).filter_by(action="billing.closing").one()
        assert signed.last_event_id >= last_closing_event.id
    assert app.extensions["archivage"].audit_verify().ok
    text = _text(client.get(f"/billing/closings/{closing_id}/report.pdf").data)
    assert "Rapport de clôture (Z)" in text and cash["number"] in text
    assert re.search(r"Espèces 4,00 € 2,00 € -2,00 €", text), text
    claim = _claim_of(client, people, tp["id"])
    settled = client.post(f"/api/v1/claims/{claim['id']}/settle", headers=people["manager"]["headers"],
                          json={"paid": True})
    assert settled.status_code == 200, settled.get_json()
    with app.extensions["archivage"].new_session() as s:
        transfer = s.query(Payment).filter_by(payer="insurer").one()
        assert transfer.paris_day > S.paris_today()
        assert S.verify_journal(s).ok  # the closed day still matches its journal
    api_text = _text(client.get(f"/api/v1/closings/{closing_id}/report.pdf", headers=desk).data)
    assert tp["number"] not in api_text


# -- the balances after any sequence of operations ------------------------------------------------


@pytest.fixture(scope="module")
def hypothesis_engine(tmp_path_factory):
    from archive_core.db import make_engine
    from tests.helpers import migrate

    url = f"sqlite:///{tmp_path_factory.mktemp('hyp') / 'b.sqlite3'}"
    migrate(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


OPERATIONS = st.lists(st.tuples(st.sampled_from(["pay", "credit", "refund", "refund_insurer", "settle_paid",
                                                 "settle_rejected"]),
                                st.integers(1, 600)), max_size=8)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fee=st.integers(1, 1000), coverage=st.integers(0, 10_000), flat=st.integers(0, 300),
       third_party=st.booleans(), operations=OPERATIONS)
def test_balances_add_up_after_any_sequence(hypothesis_engine, fee, coverage, flat, third_party, operations):
    """Random payments (some over what is owed), claim outcomes, partial credit notes and refunds:
    patient_balance + insurer_balance == balance, none negative; money is conserved."""
    from archive_core.db import session_factory

    session = session_factory(hypothesis_engine)()
    session.connection(execution_options={"sqlite_immediate": True})
    try:
        s = session
        day = S.paris_today()
        S.set_tariff(s, exam_group="hyp", label="Hyp", fee_cents=fee, effective_from=day,
                     new_group=True)
        insurer = S.create_insurer(s, name="M", amc_number="HYP", coverage_bp=coverage, flat_cents=flat,
                                   third_party_payment=third_party)
        S.add_membership(s, patient_id="H", insurer_id=insurer.id, member_number="1", valid_from=day)
        group = S.create_exam_group(s, patient_id="H", visit_date=day, exam_group="hyp", created_by="t")
        invoice = S.issue_invoice(s, group.id, issued_by="t")
        claim = s.query(S.Claim).filter_by(invoice_id=invoice.id).one_or_none()
        for op, amount in operations:
            try:
                if op == "pay":
                    S.record_payment(s, invoice.id, amount_cents=amount, method="cash", received_by="t")
                elif op == "credit":
                    S.issue_credit_note(s, invoice.id, reason="r", issued_by="t", amount_cents=amount)
                elif op.startswith("refund"):
                    notes = S.credit_notes_of(s, invoice.id)
                    if notes:
                        S.refund(s, notes[-1].id, amount_cents=amount, method="cash", refunded_by="t",
                                 payer="insurer" if op == "refund_insurer" else "patient")
                elif claim is not None:
                    S.settle_claim(s, claim.id, paid=op == "settle_paid", by="t")
            except S.BillingError:
                pass  # refused: nothing written, and the invariants below still hold
            state = S.invoice_state(s, invoice)
            assert state.patient_balance_cents + state.insurer_balance_cents == state.balance_cents
            assert min(state.patient_balance_cents, state.insurer_balance_cents, state.refund_due_cents,
                       state.credited_cents) >= 0
            assert state.credited_cents <= invoice.total_cents
            # What is owed, less what was paid, is what remains due less what is to be given back.
            assert invoice.total_cents - state.credited_cents - state.paid_cents == \
                state.balance_cents - state.refund_due_cents
            if not third_party:
                assert state.insurer_balance_cents == 0
            if state.status == "credited":
                assert state.balance_cents == 0
    finally:
        session.rollback()
        session.close()


def test_credit_note_numbers_are_their_own_continuous_series(database_url):
    """Two partial credit notes and a refused third (over what remains) on SQLite and PostgreSQL:
    AV-YYYY-000001, AV-YYYY-000002, no gap after the refusal, the invoice row unchanged."""
    from archive_core.db import make_engine, session_factory
    from tests.helpers import migrate

    migrate(database_url)
    engine = make_engine(database_url)
    try:
        factory = session_factory(engine)
        with factory() as s:
            group = S.create_exam_group(s, patient_id="N1", visit_date=S.paris_today(), exam_group="echographie",
                                        created_by="t")
            invoice = S.issue_invoice(s, group.id, issued_by="t")
            s.commit()
            invoice_id = invoice.id
        numbers = []
        for amount in (100, 400, 300):
            with factory() as s:
                try:
                    numbers.append(S.issue_credit_note(s, invoice_id, reason="r", issued_by="t",
                                                       amount_cents=amount).number)
                    s.commit()
                except S.Conflict:
                    s.rollback()
        year = S.paris_today().year
        assert numbers == [f"AV-{year}-000001", f"AV-{year}-000002"]
        with factory() as s:
            state = S.invoice_state(s, S.get_invoice(s, invoice_id))
            assert (state.credited_cents, state.status, S.get_invoice(s, invoice_id).total_cents) == \
                (400, "credited", FEE)
    finally:
        engine.dispose()


# -- one operation each, audited, committed only by the request ----------------------------------


def _counts(app):
    from sqlalchemy import func, select, text

    from backoffice.billing.models import Claim, CreditNote, Invoice, NumberCounter

    with app.extensions["archivage"].new_session() as s:
        return {
            "invoices": s.scalar(select(func.count(Invoice.id))),
            "credit_notes": s.scalar(select(func.count(CreditNote.id))),
            "payments": s.scalar(select(func.count(Payment.id))),
            "closings": s.scalar(select(func.count(Closing.id))),
            "claims": sorted(s.scalars(select(Claim.status))),
            "counters": sorted(s.execute(select(NumberCounter.series, NumberCounter.last_value)).all()),
            "audit": s.scalar(text("SELECT count(*) FROM audit_event")),
        }


ACTIONS = {
    "issue": ("billing.invoice.issued", lambda c, h, ids: c.post("/api/v1/invoices", headers=h,
                                                                 json={"exam_group_id": ids["group"]})),
    "payment": ("billing.payment", lambda c, h, ids: c.post(f"/api/v1/invoices/{ids['invoice']}/payments",
                                                            headers=h, json={"amount_cents": 100, "method": "cash"})),
    "credit_note": ("billing.credit_note.issued", lambda c, h, ids: c.post(
        f"/api/v1/invoices/{ids['invoice']}/credit-notes", headers=h, json={"reason": "r", "amount_cents": 100})),
    "claim": ("billing.claim.settled", lambda c, h, ids: c.post(f"/api/v1/claims/{ids['claim']}/settle",
                                                                headers=h, json={"paid": True})),
    "closing": ("billing.closing", lambda c, h, ids: c.post("/api/v1/closings", headers=h, json={
        "kind": "day", "period": S.paris_today().isoformat(), "counted_cash_cents": 0, "counted_cheque_cents": 0})),
}


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_an_operation_that_fails_at_its_audit_step_leaves_nothing(app, client, people, monkeypatch, action):
    """Injected failure: the audit trail cannot be written (disk full) in the middle of an issue,
    payment, credit note, claim settlement or closing. Nothing of it stays: no number taken, no
    journal entry, the claim still open; the same request then succeeds and is audited."""
    manager = people["manager"]["headers"]
    invoice = _insured_invoice(client, people, coverage_bp=5_000, third_party=True, patient_id="F1")
    group = _insured_invoice(client, people, coverage_bp=0, third_party=False, patient_id="F2", issue=False)
    ids = {"invoice": invoice["id"], "group": group["id"], "claim": _claim_of(client, people, invoice["id"])["id"]}
    event, call = ACTIONS[action]
    before = _counts(app)
    facade = app.extensions["archivage"]

    def events():
        from sqlalchemy import text

        with facade.new_session() as s:
            return s.execute(text("SELECT count(*) FROM audit_event WHERE action = :a"), {"a": event}).scalar()

    events_before = events()
    real_audit = facade.audit

    def failing_audit(session, name, **kw):
        if name == event:
            raise OSError(28, "No space left on device")
        return real_audit(session, name, **kw)

    def verified() -> None:
        # What a manager runs afterwards: the billing journal with its anchors, and the audit trail.
        result = app.test_cli_runner().invoke(args=["billing", "verify"])
        assert result.exit_code == 0, result.output
        assert facade.audit_verify().ok

    monkeypatch.setattr(facade, "audit", failing_audit)
    with pytest.raises(OSError):
        call(client, manager, ids)
    assert _counts(app) == before
    monkeypatch.setattr(facade, "audit", real_audit)
    verified()
    response = call(client, manager, ids)
    assert response.status_code in (200, 201), response.get_json()
    after = _counts(app)
    assert after != before and after["audit"] > before["audit"]
    assert events() == events_before + 1
    with facade.new_session() as s:
        assert S.verify_journal(s).ok
    verified()


def test_page_and_api_share_one_operation_with_its_audit_event(app, client, people):
    """Before, the page's credit note and every refund wrote no audit event, and issuing was
    written twice. The page and the API now leave the same trail."""
    from sqlalchemy import text

    desk = people["front_desk"]["headers"]
    _sign_in(client, people["front_desk"]["id"])
    by_api = _insured_invoice(client, people, coverage_bp=0, third_party=False, patient_id="AU1")
    group = _insured_invoice(client, people, coverage_bp=0, third_party=False, patient_id="AU2", issue=False)
    url = client.post(f"/billing/groups/{group['id']}/invoice", data={}).headers["Location"]
    by_page = int(url.rstrip("/").split("/")[-1])
    client.post(f"/api/v1/invoices/{by_api['id']}/payments", headers=desk, json={"amount_cents": 400,
                                                                                  "method": "cash"})
    client.post(f"/billing/invoices/{by_page}/payments", data={"amount": "4,00", "method": "cash"})
    note = client.post(f"/api/v1/invoices/{by_api['id']}/credit-notes", headers=desk,
                       json={"reason": "annulation"}).get_json()
    client.post(f"/api/v1/credit-notes/{note['id']}/refunds", headers=desk, json={"amount_cents": 400,
                                                                                  "method": "cash"})
    client.post(f"/billing/invoices/{by_page}/credit-note", data={"reason": "annulation"})
    page = client.get(f"/billing/invoices/{by_page}").get_data(as_text=True)
    page_note = int(re.search(r'name="credit_note_id" value="(\d+)"', page).group(1))
    client.post(f"/billing/invoices/{by_page}/refunds", data={"credit_note_id": page_note, "amount": "4,00",
                                                               "method": "cash"})
    with app.extensions["archivage"].new_session() as s:
        rows = s.execute(text("SELECT action, patient_id FROM audit_event WHERE action LIKE 'billing.%' "
                              "AND action NOT LIKE '%viewed' AND action NOT LIKE 'billing.membership%' "
                              "AND action NOT LIKE 'billing.exam_group%' ORDER BY id")).all()
    trail = {patient: [a for a, p in rows if p == patient] for patient in ("AU1", "AU2")}
    assert trail["AU1"] == trail["AU2"] == ["billing.invoice.issued", "billing.payment",
                                            "billing.credit_note.issued", "billing.refund"]


def test_the_migration_keeps_earlier_credit_notes_and_their_immutability(database_url):
    """A database with a full credit note on a tiers-payant invoice (made before partial credit
    notes existed) upgrades: its split is filled in (the claim's part on the insurer), a second
    credit note on the same invoice is allowed by the schema, and UPDATE is still refused."""
    from sqlalchemy import text

    from archive_core.db import make_engine
    from backoffice.migrate import upgrade

    upgrade(database_url, "0400_billing")
    engine = make_engine(database_url)
    try:
        with engine.begin() as c:
            c.execute(text("INSERT INTO billing_exam_group (id, patient_id, visit_date, exam_group, consent, "
                           "created_by, created_at) VALUES (1, 'M1', '2026-03-10', 'echographie', 'accepted', 't', "
                           "'2026-03-10 09:00:00')"))
            c.execute(text("INSERT INTO billing_insurer (id, name, amc_number, coverage_bp, flat_cents, "
                           "third_party_payment, created_at) VALUES (1, 'M', 'A', 5000, 0, true, "
                           "'2026-03-10 09:00:00')"))
            c.execute(text("INSERT INTO billing_invoice (id, number, series, sequence, group_id, issued_at, issued_by, "
                           "patient_id, visit_date, exam_group, exam_group_label, total_cents, insurer_cents, "
                           "patient_cents, insurer_id, third_party_payment) VALUES (1, '2026-000001', '2026', 1, 1, "
                           "'2026-03-10 09:00:00', 't', 'M1', '2026-03-10', 'echographie', 'Écho', 400, 150, 250, "
                           "1, true)"))
            c.execute(text("INSERT INTO billing_claim (id, invoice_id, insurer_id, amount_cents, status) "
                           "VALUES (1, 1, 1, 150, 'cancelled')"))
            c.execute(text("INSERT INTO billing_credit_note (id, number, series, sequence, invoice_id, reason, "
                           "total_cents, issued_at, issued_by) VALUES (1, 'AV-2026-000001', 'AV-2026', 1, 1, 'r', "
                           "-400, '2026-03-11 09:00:00', 't')"))
            # A refund tied to the credit note: the table rebuilt on SQLite keeps what refers to it.
            c.execute(text("INSERT INTO billing_payment (id, invoice_id, amount_cents, method, payer, credit_note_id, "
                           "received_at, received_by, paris_day, prev_hash, hash) VALUES (1, 1, 250, 'cash', "
                           "'patient', NULL, '2026-03-10 09:30:00', 't', '2026-03-10', 'x', 'y'), (2, 1, -250, "
                           "'cash', 'patient', 1, '2026-03-11 09:30:00', 't', '2026-03-11', 'y', 'z')"))
        upgrade(database_url)
        with engine.begin() as c:
            assert c.execute(text("SELECT patient_cents, insurer_cents FROM billing_credit_note")).one() == (-250, -150)
            assert c.execute(text("SELECT count(*) FROM billing_payment WHERE credit_note_id = 1")).scalar() == 1
            c.execute(text("INSERT INTO billing_credit_note (id, number, series, sequence, invoice_id, reason, "
                           "total_cents, patient_cents, insurer_cents, issued_at, issued_by) VALUES (2, "
                           "'AV-2026-000002', 'AV-2026', 2, 1, 'r', -1, -1, 0, '2026-03-11 09:00:00', 't')"))
        with pytest.raises(Exception, match="append-only"):
            with engine.begin() as c:
                c.execute(text("UPDATE billing_credit_note SET reason = 'changed' WHERE id = 1"))
        with pytest.raises(Exception, match="append-only"):
            with engine.begin() as c:
                c.execute(text("DELETE FROM billing_closing"))
                c.execute(text("INSERT INTO billing_closing (kind, period, totals_json, total_cents, payment_count, "
                               "last_payment_hash, signed_by, signed_at) VALUES ('day', '2026-03-10', '{}', 0, 0, "
                               "'0', 't', '2026-03-10 19:00:00')"))
                c.execute(text("UPDATE billing_closing SET counted_cash_cents = 5"))
    finally:
        engine.dispose()
