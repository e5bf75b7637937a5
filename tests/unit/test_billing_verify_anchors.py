"""`billing verify` notices edited invoices and credit notes, a deleted last payment and a rewritten
journal, by holding the billing tables against what the (signed) audit trail recorded of them.

Each test plays an attacker with the database owner's rights: the append-only triggers are dropped,
then rows are edited or deleted directly, as issue 10 section 4 measured it.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text

from backoffice.billing import services as S


@pytest.fixture
def billing_app(tmp_path, database_url):
    """The web app on SQLite and on PostgreSQL, with a manager who works the desk."""
    from backoffice import create_app
    from backoffice.auth.services import create_user
    from tests.helpers import migrate

    instance = tmp_path / "instance"
    instance.mkdir()
    migrate(database_url)
    app = create_app({"TESTING": True, "INSTANCE_PATH": str(instance), "DATABASE_URL": database_url,
                      "STORAGE_MIN_FREE_BYTES": 0, "WTF_CSRF_ENABLED": False})
    with app.extensions["archivage"].new_session(write=True) as s:
        user_id = create_user(s, "gerante", role="manager", password="correct horse battery").id
        s.commit()
    client = app.test_client()
    with client.session_transaction() as session:
        session["_user_id"] = str(user_id)
        session["_fresh"] = True
    yield app, client
    app.extensions["archivage"].archive.close()


def _desk_day(app, client) -> dict:
    """Two patients checked in and invoiced at the desk, a payment, a partial credit note, and a last
    payment: each written through the pages, so each writes its audit event."""
    invoices = []
    for patient, name in (("PV1", "MARTIN Paul"), ("PV2", "DURAND Léa")):  # two people, not one typed twice
        response = client.post("/billing/checkin", data={"patient_id": patient, "patient_name": name,
                                                         "exam_group": "radiologie",
                                                         "visit_date": S.paris_today().isoformat()})
        group_id = int(response.headers["Location"].rstrip("/").split("/")[-1])
        client.post(f"/billing/groups/{group_id}/consent", data={"accepted": "1"})
        response = client.post(f"/billing/groups/{group_id}/invoice", data={})
        invoices.append(int(response.headers["Location"].split("/")[-1]))
    assert client.post(f"/billing/invoices/{invoices[0]}/payments",
                       data={"amount": "1,00", "method": "cash"}).status_code == 302
    client.post(f"/billing/invoices/{invoices[0]}/credit-note", data={"reason": "erreur", "amount": "1,00"})
    client.post(f"/billing/invoices/{invoices[1]}/payments", data={"amount": "2,00", "method": "card"})
    with app.extensions["archivage"].new_session() as s:
        assert s.scalar(text("SELECT count(*) FROM billing_payment")) == 2
        assert s.scalar(text("SELECT count(*) FROM billing_credit_note")) == 1
    return {"invoices": invoices}


def _drop_triggers(s) -> None:
    if s.get_bind().dialect.name == "postgresql":
        for table in ("billing_invoice", "billing_payment", "billing_credit_note", "billing_invoice_line"):
            s.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
        return
    names = s.scalars(text("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name LIKE 'billing_%'"))
    for name in list(names):
        s.execute(text(f'DROP TRIGGER "{name}"'))


def _verify(app):
    return app.test_cli_runner().invoke(args=["billing", "verify"])


def test_an_untouched_journal_verifies(billing_app):
    app, client = billing_app
    _desk_day(app, client)
    result = _verify(app)
    assert result.exit_code == 0, result.output
    assert "intact: 2 entries" in result.output


def _edit_invoice_total(s):
    # The measured case: an invoice's total from 500 to 50,000 cents (shares kept adding up).
    s.execute(text("UPDATE billing_invoice SET total_cents = 50000, patient_cents = 50000 - insurer_cents "
                   "WHERE id = (SELECT min(id) FROM billing_invoice)"))


def _edit_credit_note(s):
    s.execute(text("UPDATE billing_credit_note SET total_cents = -300, patient_cents = -300, insurer_cents = 0"))


def _delete_last_payment(s):
    s.execute(text("DELETE FROM billing_payment WHERE id = (SELECT max(id) FROM billing_payment)"))


def _rewrite_journal(s):
    # Change the first payment's amount and recompute every hash after it: the chain is consistent again.
    from backoffice.billing.models import Payment

    s.execute(text("UPDATE billing_payment SET amount_cents = 50 WHERE id = (SELECT min(id) FROM billing_payment)"))
    prev = S.GENESIS
    for payment in s.query(Payment).order_by(Payment.id):
        s.refresh(payment)
        payment.prev_hash = prev
        payment.hash = S._payment_digest(prev, payment)
        prev = payment.hash
    s.flush()


@pytest.mark.parametrize("tamper, expected", [
    (_edit_invoice_total, "was changed after it was issued"),
    (_edit_credit_note, "credit note AV-"),
    (_delete_last_payment, "is missing: the journal was truncated"),
    (_rewrite_journal, "payment journal rewritten"),
], ids=["invoice-total-500-to-50000", "credit-note-edited", "last-payment-deleted", "journal-rewritten"])
def test_each_tampering_makes_billing_verify_fail(billing_app, tamper, expected):
    app, client = billing_app
    _desk_day(app, client)
    assert _verify(app).exit_code == 0
    with app.extensions["archivage"].new_session(write=True) as s:
        _drop_triggers(s)
        tamper(s)
        s.commit()
    result = _verify(app)
    assert result.exit_code == 1, result.output
    assert expected in result.output
    if tamper is _rewrite_journal:  # the recomputed chain is self-consistent: only the anchors notice
        assert "broken at entry" not in result.output


def test_deleting_the_last_payment_with_its_audit_events_is_caught_by_the_signed_checkpoint(billing_app):
    """The attacker deletes the last payment AND the audit events that recorded it (and every later
    one), so no billing anchor mentions it any more: the signed checkpoint (key outside the
    database) still vouches for the deleted events, and `billing verify` says so."""
    app, client = billing_app
    _desk_day(app, client)
    facade = app.extensions["archivage"]
    assert facade.audit_checkpoint(reason="periodic") is not None  # what the scheduler does
    assert _verify(app).exit_code == 0
    with facade.new_session(write=True) as s:
        _drop_triggers(s)
        if s.get_bind().dialect.name == "postgresql":
            s.execute(text("ALTER TABLE audit_event DISABLE TRIGGER USER"))
        else:
            for name in list(s.scalars(text("SELECT name FROM sqlite_master WHERE type = 'trigger' "
                                            "AND tbl_name = 'audit_event'"))):
                s.execute(text(f'DROP TRIGGER "{name}"'))
        last = s.scalar(text("SELECT max(id) FROM billing_payment"))
        first_event = min(event_id for event_id, detail in facade.audit_details(s, "billing.payment")
                          if detail.get("payment_id") == last)
        s.execute(text("DELETE FROM audit_event WHERE id >= :id"), {"id": first_event})
        s.execute(text("DELETE FROM billing_payment WHERE id = :id"), {"id": last})
        s.commit()
    result = _verify(app)
    assert result.exit_code == 1, result.output
    assert "audit trail that records the billing journal's heads is broken" in result.output
