"""Billing services against a migrated database (SQLite and PostgreSQL where it matters)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from archive_core.api import StudySummary
from archive_core.db import make_engine, session_factory
from backoffice.billing import services as S
from backoffice.billing.models import ExamGroupMapping
from tests.helpers import migrate, migration_drift

DAY = date(2026, 3, 10)


@pytest.fixture
def make_session(database_url):
    migrate(database_url)
    engine = make_engine(database_url)
    factory = session_factory(engine)

    def new():
        session = factory()
        if engine.dialect.name == "sqlite":
            session.connection(execution_options={"sqlite_immediate": True})
        return session

    yield new
    engine.dispose()


@pytest.fixture
def sqlite_session(tmp_path):
    url = f"sqlite:///{tmp_path / 'b.sqlite3'}"
    migrate(url)
    engine = make_engine(url)
    session = session_factory(engine)()
    session.connection(execution_options={"sqlite_immediate": True})
    yield session
    session.close()
    engine.dispose()


def _group(s, patient_id="P1", exam_group="echographie", day=DAY, **kw):
    return S.create_exam_group(s, patient_id=patient_id, visit_date=day, exam_group=exam_group,
                               created_by="desk", patient_name="Durand^Marie", **kw)


def _study(uid, *, patient_id="P1", day="20260310", modalities=("US",), accession=None, external=False,
           description=None):
    return StudySummary(study_uid=uid, study_date=day, accession_number=accession, modalities=modalities,
                        description=description, external=external, patient_id=patient_id,
                        patient_name="Durand^Marie", patient_birth_date="19800101", patient_sex="F",
                        received_at=datetime(2026, 3, 10, 9, tzinfo=timezone.utc))


def test_an_issued_invoice_and_its_lines_cannot_be_changed_in_the_database(make_session):
    s = make_session()
    invoice = S.issue_invoice(s, _group(s).id, issued_by="desk")
    S.record_payment(s, invoice.id, amount_cents=100, method="cash", received_by="desk")
    s.commit()
    for statement in ("UPDATE billing_invoice SET total_cents = 1",
                      "DELETE FROM billing_invoice_line",
                      "UPDATE billing_payment SET amount_cents = 5",
                      "DELETE FROM billing_invoice"):
        with pytest.raises(Exception, match="append-only"):
            s.execute(text(statement))
        s.rollback()
    assert s.get(type(invoice), invoice.id).total_cents == 400
    s.close()


def test_numbers_follow_each_other_and_credit_notes_have_their_own_negative_series(make_session):
    s = make_session()
    invoices = [S.issue_invoice(s, _group(s, patient_id=f"P{i}").id, issued_by="desk") for i in range(3)]
    year = S.paris_today().year
    assert [i.number for i in invoices] == [f"{year}-{n:06d}" for n in (1, 2, 3)]
    note = S.issue_credit_note(s, invoices[1].id, reason="erreur de patient", issued_by="desk")
    assert note.number == f"AV-{year}-000001" and note.total_cents == -400
    assert S.invoice_state(s, invoices[1]).status == "credited"
    s.commit()
    s.close()


@pytest.mark.parametrize(
    ("modalities", "description", "expected"),
    [
        (("CR",), None, "radiologie"),
        (("DX",), None, "radiologie"),
        (("RF",), None, "radiologie"),
        (("US",), None, "echographie"),
        (("MG",), "Mammographie bilatérale", "mammographie"),
        (("MG",), "Dépistage organisé", "depistage_sein"),
        (("CT",), None, "scanner"),
        (("MR",), None, "irm"),
        (("SR", "CT"), None, "scanner"),  # a structured report does not decide
        (("XX",), None, "autre"),
    ],
)
def test_seeded_mapping_puts_studies_in_their_exam_group(sqlite_session, modalities, description, expected):
    mappings = list(sqlite_session.scalars(__import__("sqlalchemy").select(ExamGroupMapping)))
    assert S.group_for_study(mappings, modalities, description) == expected


def test_arrived_studies_attach_by_accession_else_patient_and_day(sqlite_session):
    s = sqlite_session
    checked_in = _group(s, exam_group="scanner", accession_number="A42")
    S.attach_studies(s, [_study("1.2.1", modalities=("CT",), accession="A42"),
                         _study("1.2.2", modalities=("US",)),
                         _study("1.2.3", modalities=("US",)),
                         _study("1.2.4", modalities=("US",), external=True)])
    groups = S.list_exam_groups(s, visit_date=DAY)
    assert [(g.exam_group, [st.study_uid for st in g.studies]) for g in groups] == [
        ("scanner", ["1.2.1"]), ("echographie", ["1.2.2", "1.2.3"])]
    assert groups[0].id == checked_in.id
    assert S.attach_studies(s, [_study("1.2.2")]) == 0  # idempotent


def test_a_refused_group_cannot_be_invoiced_and_a_national_one_has_no_fee(sqlite_session):
    s = sqlite_session
    group = _group(s)
    S.record_consent(s, group.id, accepted=False, recorded_by="desk")
    with pytest.raises(S.Conflict, match="refused"):
        S.issue_invoice(s, group.id, issued_by="desk")
    free = _group(s, exam_group="depistage_sein")
    assert S.group_state(s, free).fee_cents == 0
    with pytest.raises(S.Conflict, match="nothing to bill"):
        S.issue_invoice(s, free.id, issued_by="desk")


def test_a_new_tariff_applies_from_its_date_only(sqlite_session):
    s = sqlite_session
    S.set_tariff(s, exam_group="echographie", label="Échographie", fee_cents=450, effective_from=date(2026, 4, 1))
    before = S.issue_invoice(s, _group(s, day=date(2026, 3, 31)).id, issued_by="desk")
    after = S.issue_invoice(s, _group(s, day=date(2026, 4, 1)).id, issued_by="desk")
    assert (before.total_cents, after.total_cents) == (400, 450)


def test_annual_cap_per_beneficiary_and_calendar_year(sqlite_session):
    s = sqlite_session
    insurer = S.create_insurer(s, name="Mutuelle A", amc_number="111", coverage_bp=10000, annual_cap_cents=600)
    S.add_membership(s, patient_id="P1", insurer_id=insurer.id, member_number="M1", valid_from=date(2025, 1, 1))
    shares = [S.issue_invoice(s, _group(s, day=d).id, issued_by="desk")
              for d in (date(2026, 1, 5), date(2026, 2, 5), date(2026, 3, 5), date(2027, 1, 5))]
    assert [(i.insurer_cents, i.patient_cents) for i in shares] == [(400, 0), (200, 200), (0, 400), (400, 0)]


def test_the_visit_date_decides_which_membership_applies(sqlite_session):
    s = sqlite_session
    old = S.create_insurer(s, name="Ancienne", amc_number="1", coverage_bp=5000)
    new = S.create_insurer(s, name="Nouvelle", amc_number="2", coverage_bp=10000)
    S.add_membership(s, patient_id="P1", insurer_id=old.id, member_number="a", valid_from=date(2025, 1, 1),
                     valid_to=date(2026, 2, 28))
    S.add_membership(s, patient_id="P1", insurer_id=new.id, member_number="b", valid_from=date(2026, 3, 1))
    feb = S.issue_invoice(s, _group(s, day=date(2026, 2, 28)).id, issued_by="desk")
    mar = S.issue_invoice(s, _group(s, day=date(2026, 3, 1)).id, issued_by="desk")
    assert (feb.insurer_name, feb.insurer_cents) == ("Ancienne", 200)
    assert (mar.insurer_name, mar.insurer_cents) == ("Nouvelle", 400)


def test_a_rejected_claim_moves_the_insurer_share_to_the_patient(sqlite_session):
    s = sqlite_session
    insurer = S.create_insurer(s, name="TP", amc_number="9", coverage_bp=5000, third_party_payment=True)
    S.add_membership(s, patient_id="P1", insurer_id=insurer.id, member_number="m", valid_from=date(2020, 1, 1))
    invoice = S.issue_invoice(s, _group(s).id, issued_by="desk")
    S.record_payment(s, invoice.id, amount_cents=200, method="card", received_by="desk")
    state = S.invoice_state(s, invoice)
    assert (state.patient_due_cents, state.insurer_due_cents, state.status) == (0, 200, "partially_paid")
    assert [(i.name, n, total) for i, n, total in S.outstanding_claims(s)] == [("TP", 1, 200)]
    (claim,) = S.send_claims(s, insurer.id)
    S.settle_claim(s, claim.id, paid=False, by="manager", reason="hors contrat")
    state = S.invoice_state(s, invoice)
    assert (state.patient_due_cents, state.insurer_due_cents) == (200, 0)
    assert S.outstanding_claims(s) == []


def test_a_paid_claim_settles_the_invoice(sqlite_session):
    s = sqlite_session
    insurer = S.create_insurer(s, name="TP", amc_number="9", coverage_bp=5000, third_party_payment=True)
    S.add_membership(s, patient_id="P1", insurer_id=insurer.id, member_number="m", valid_from=date(2020, 1, 1))
    invoice = S.issue_invoice(s, _group(s).id, issued_by="desk")
    S.record_payment(s, invoice.id, amount_cents=200, method="cash", received_by="desk")
    (claim,) = S.send_claims(s, insurer.id)
    S.settle_claim(s, claim.id, paid=True, by="manager")
    assert S.invoice_state(s, invoice).status == "paid"


@pytest.mark.parametrize(("amount", "method", "error"), [
    (401, "card", S.Conflict), (0, "card", S.Invalid), (-5, "cash", S.Invalid), (100, "bitcoin", S.Invalid),
    (1.5, "cash", S.Invalid), (True, "cash", S.Invalid),
])
def test_impossible_payments_are_refused(sqlite_session, amount, method, error):
    invoice = S.issue_invoice(sqlite_session, _group(sqlite_session).id, issued_by="desk")
    with pytest.raises(error):
        S.record_payment(sqlite_session, invoice.id, amount_cents=amount, method=method, received_by="desk")


def test_refund_after_credit_note(sqlite_session):
    s = sqlite_session
    invoice = S.issue_invoice(s, _group(s).id, issued_by="desk")
    S.record_payment(s, invoice.id, amount_cents=400, method="cash", received_by="desk")
    note = S.issue_credit_note(s, invoice.id, reason="annulation", issued_by="desk")
    after_credit = S.invoice_state(s, invoice)
    assert (after_credit.balance_cents, after_credit.refund_due_cents, after_credit.status) == (0, 400, "credited")
    with pytest.raises(S.Conflict):
        S.refund(s, note.id, amount_cents=401, method="cash", refunded_by="desk")
    S.refund(s, note.id, amount_cents=400, method="cash", refunded_by="desk")
    assert S.invoice_state(s, invoice).balance_cents == 0


def test_day_closing_totals_per_method_and_locks_the_day(sqlite_session):
    s = sqlite_session
    for method, amount in (("card", 400), ("cash", 300), ("card", 100)):
        invoice = S.issue_invoice(s, _group(s, patient_id=f"P{amount}{method}").id, issued_by="desk")
        S.record_payment(s, invoice.id, amount_cents=amount, method=method, received_by="desk")
    today = S.paris_today()
    closing = S.close_period(s, "day", today.isoformat(), signed_by="manager")
    assert (closing.totals_json, closing.total_cents, closing.payment_count) == ('{"card": 500, "cash": 300}', 800, 3)
    late = S.issue_invoice(s, _group(s, patient_id="LATE").id, issued_by="desk")
    with pytest.raises(S.Conflict, match="closed"):
        S.record_payment(s, late.id, amount_cents=100, method="cash", received_by="desk")
    with pytest.raises(S.Conflict):
        S.close_period(s, "day", today.isoformat(), signed_by="manager")
    with pytest.raises(S.Conflict, match="not over"):
        S.close_period(s, "month", today.strftime("%Y-%m"), signed_by="manager")
    assert S.verify_journal(s).ok


def test_verify_finds_a_tampered_journal_entry(sqlite_session):
    s = sqlite_session
    invoice = S.issue_invoice(s, _group(s).id, issued_by="desk")
    first = S.record_payment(s, invoice.id, amount_cents=100, method="cash", received_by="desk")
    S.record_payment(s, invoice.id, amount_cents=100, method="card", received_by="desk")
    assert S.verify_journal(s).ok and S.verify_journal(s).checked == 2
    s.execute(text("DROP TRIGGER billing_payment_no_update"))  # what an attacker with file access could do
    s.execute(text(f"UPDATE billing_payment SET amount_cents = 50 WHERE id = {first.id}"))
    s.expire_all()
    report = S.verify_journal(s)
    assert not report.ok and report.first_bad_id == first.id


def test_cheque_remittance_slip_gathers_unremitted_cheques(sqlite_session):
    s = sqlite_session
    for n in range(2):
        invoice = S.issue_invoice(s, _group(s, patient_id=f"C{n}").id, issued_by="desk")
        S.record_payment(s, invoice.id, amount_cents=400, method="cheque", received_by="desk")
    slip = S.create_remittance(s, created_by="desk")
    assert (slip.count, slip.total_cents) == (2, 800)
    with pytest.raises(S.Conflict):
        S.create_remittance(s, created_by="desk")


def test_migration_0400_matches_the_billing_models(tmp_path):
    assert migration_drift(tmp_path, "billing_") == []


def test_patient_balance_sums_what_the_patient_still_owes(sqlite_session):
    s = sqlite_session
    first = S.issue_invoice(s, _group(s, day=date(2026, 3, 1)).id, issued_by="desk")
    S.issue_invoice(s, _group(s, day=date(2026, 3, 2), exam_group="radiologie").id, issued_by="desk")
    S.record_payment(s, first.id, amount_cents=150, method="cash", received_by="desk")
    assert S.patient_balance_cents(s, "P1") == 400 - 150 + 300
    assert S.patient_balance_cents(s, "NOBODY") == 0


@pytest.fixture(scope="module")
def migrated_template(tmp_path_factory):
    path = tmp_path_factory.mktemp("billing-template") / "template.sqlite3"
    migrate(f"sqlite:///{path}")
    return path


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(coverage=st.integers(0, 10_000), flat=st.integers(0, 600), cap=st.one_of(st.none(), st.integers(0, 2_000)),
       groups=st.lists(st.sampled_from(["radiologie", "echographie", "scanner"]), min_size=1, max_size=6))
def test_issued_invoices_split_exactly_and_respect_the_annual_cap(migrated_template, tmp_path, coverage, flat, cap,
                                                                   groups):
    import shutil
    import uuid

    db_file = tmp_path / f"{uuid.uuid4().hex}.sqlite3"
    shutil.copy(migrated_template, db_file)
    engine = make_engine(f"sqlite:///{db_file}")
    s = session_factory(engine)()
    try:
        s.connection(execution_options={"sqlite_immediate": True})
        insurer = S.create_insurer(s, name="M", amc_number="1", coverage_bp=coverage, flat_cents=flat,
                                   annual_cap_cents=cap)
        S.add_membership(s, patient_id="P1", insurer_id=insurer.id, member_number="m", valid_from=date(2026, 1, 1))
        invoices = [S.issue_invoice(s, _group(s, exam_group=g, day=date(2026, 1, 1) + timedelta(days=n)).id,
                                    issued_by="desk") for n, g in enumerate(groups)]
        for invoice in invoices:
            assert invoice.insurer_cents + invoice.patient_cents == invoice.total_cents
            assert 0 <= invoice.insurer_cents <= invoice.total_cents
        if cap is not None:
            assert sum(i.insurer_cents for i in invoices) <= cap
    finally:
        s.close()
        engine.dispose()
