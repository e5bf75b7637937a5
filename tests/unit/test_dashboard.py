"""The manager's dashboard: each chart's values equal the sums of the data behind it, at a set date.

Today is the app's clock (28/11/2026, Paris). The billing services and the archive stamp rows with the
machine's clock, so the test moves each row to the instant its table gives (never today's date).
"""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy import select, update

from tests.retention_support import add_study, sign_in

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def app(db_app):
    """Every figure on SQLite and on PostgreSQL (the SQL buckets and the Paris months differ by dialect):
    the shared app of tests/unit/conftest.py."""
    return db_app
TODAY = date(2026, 11, 28)
UTC = timezone.utc

# patient, exam group, consent, invoice issued at (UTC), paid on (Paris day), credit note at (UTC)
GROUPS = [
    ("P1", "radiologie", "accepted", datetime(2026, 11, 3, 10, tzinfo=UTC), date(2026, 11, 3), None),
    ("P2", "echographie", "accepted", datetime(2026, 10, 31, 23, 30, tzinfo=UTC), None, None),  # 1 Nov in Paris
    ("P3", "radiologie", "accepted", datetime(2026, 10, 15, 9, tzinfo=UTC), date(2026, 11, 2), None),
    ("P4", "scanner", "accepted", datetime(2026, 6, 1, 9, tzinfo=UTC), date(2026, 6, 1),
     datetime(2026, 7, 2, 9, tzinfo=UTC)),  # paid, then cancelled by a credit note in July
    ("P5", "radiologie", "refused", None, None, None),
    ("P6", "echographie", "pending", None, None, None),
    ("P7", "radiologie", "accepted", datetime(2025, 10, 20, 9, tzinfo=UTC), date(2025, 10, 20), None),  # 13 months ago
    ("P8", "echographie", "refused", None, None, None),
    ("P9", "echographie", "accepted", datetime(2026, 11, 27, 9, tzinfo=UTC), None, None),
]
VISITS = {"P7": date(2025, 10, 20)}  # the others: the Paris day of their invoice, or 01/11/2026


def month_key(moment) -> str:
    from zoneinfo import ZoneInfo

    if isinstance(moment, datetime):
        moment = moment.astimezone(ZoneInfo("Europe/Paris")).date()
    return moment.strftime("%Y-%m")


@pytest.fixture
def practice(app, facade, monkeypatch):
    from backoffice.billing import base as billing_base, services as S
    from backoffice.billing.models import CreditNote, ExamGroup, Invoice, Payment

    app.config["CLOCK"] = lambda: NOW
    # Issued records never change (append-only tables): each is written at its instant by the services' clock.
    clock = {"now": NOW}
    monkeypatch.setattr(billing_base, "utcnow", lambda: clock["now"])
    with facade.new_session(write=True) as s:
        mutuelle = S.create_insurer(s, name="Mutuelle du Parc", amc_number="123456789", coverage_bp=5000,
                                    third_party_payment=True)
        S.add_membership(s, patient_id="P9", insurer_id=mutuelle.id, member_number="M9", valid_from=date(2020, 1, 1))
        S.add_membership(s, patient_id="P2", insurer_id=mutuelle.id, member_number="M2", valid_from=date(2020, 1, 1))
        events = []
        for patient, group_name, consent, issued_at, paid_on, credited_at in GROUPS:
            visit = VISITS.get(patient) or (issued_at.date() if issued_at else date(2026, 11, 1))
            group = S.create_exam_group(s, patient_id=patient, visit_date=visit, exam_group=group_name,
                                        created_by="accueil", patient_name=f"{patient}^Test")
            if consent != "pending":
                S.record_consent(s, group.id, accepted=consent == "accepted", recorded_by="accueil")
            if issued_at is not None:
                events.append((issued_at, "issue", group.id, patient))
            if paid_on is not None:
                events.append((datetime(paid_on.year, paid_on.month, paid_on.day, 11, tzinfo=UTC), "pay", group.id,
                               patient))
            if credited_at is not None:
                events.append((credited_at, "credit", group.id, patient))
        invoice_of = {}
        for at, kind, group_id, _patient in sorted(events):  # in time order, as the desk did them
            clock["now"] = at
            if kind == "issue":
                invoice_of[group_id] = S.issue_invoice(s, group_id, issued_by="accueil")
            elif kind == "pay":
                invoice = invoice_of[group_id]
                S.record_payment(s, invoice.id, amount_cents=invoice.patient_cents, method="card",
                                 received_by="accueil")
            else:
                S.issue_credit_note(s, invoice_of[group_id].id, reason="erreur de groupe", issued_by="accueil")
        s.commit()
        invoices = {i.patient_id: i for i in s.scalars(select(Invoice))}
        notes = list(s.scalars(select(CreditNote)))
        payments = list(s.scalars(select(Payment)))
        groups = list(s.scalars(select(ExamGroup)))
        s.expunge_all()
    clock["now"] = NOW
    return {"invoices": invoices, "notes": notes, "payments": payments, "groups": groups}


@pytest.fixture
def manager(app, client, practice):
    sign_in(client, app, "gerante", "manager")
    return client


def chart_values(html: str, chart: str) -> dict[tuple[str, str], float]:
    svg = html.split(f'data-chart="{chart}"', 1)[1].split("</svg>", 1)[0]
    return {(series, category): float(value) for series, category, value in
            re.findall(r'data-series="([^"]*)" data-category="([^"]*)" data-value="([^"]*)"', svg)}


def test_money_per_month_is_the_sum_of_invoices_credit_notes_and_payments(manager, practice):
    """Bad input tried: an invoice of 23:30 UTC on 31 October (November in Paris), a credit note a month
    after its invoice, an invoice 13 months old (outside the chart)."""
    from babel.dates import format_date

    invoiced, collected = defaultdict(int), defaultdict(int)
    for invoice in practice["invoices"].values():
        invoiced[month_key(invoice.issued_at.replace(tzinfo=UTC))] += invoice.total_cents
    for note in practice["notes"]:
        invoiced[month_key(note.issued_at.replace(tzinfo=UTC))] += note.total_cents  # negative
    for payment in practice["payments"]:
        collected[month_key(payment.paris_day)] += payment.amount_cents
    values = chart_values(manager.get("/dashboard").get_data(as_text=True), "money")
    months = [date(2025, 12, 1) + timedelta(days=31 * i) for i in range(12)]
    months = [date(m.year, m.month, 1) for m in months]
    assert months[-1] == date(2026, 11, 1)
    for m in months:
        label = format_date(m, "MMM yy", locale="fr_FR")
        assert values[("invoiced", label)] == invoiced[m.strftime("%Y-%m")], label
        assert values[("collected", label)] == collected[m.strftime("%Y-%m")], label
    assert len(values) == 24  # twelve months, nothing from October 2025
    assert values[("invoiced", "nov. 26")] == 300 + 400 + 400  # P1, P2 (Paris 1 Nov), P9
    assert values[("invoiced", "juil. 26")] == -500 and values[("collected", "juin 26")] == 500


def test_consent_rate_per_exam_group(manager, practice):
    """Pending groups are not counted as refusals; a group of 13 months ago is not counted at all."""
    rows = defaultdict(lambda: defaultdict(int))
    for g in practice["groups"]:
        if g.visit_date >= date(2025, 12, 1):
            rows[g.exam_group][g.consent] += 1
    html = manager.get("/dashboard").get_data(as_text=True)
    values = chart_values(html, "consent")
    labels = {"radiologie": "Radiologie conventionnelle", "echographie": "Échographie", "scanner": "Scanner"}
    assert {category for _s, category in values} == {labels[g] for g in rows}  # names, not codes
    for group, c in rows.items():
        asked = c["accepted"] + c["refused"]
        assert values[("rate", labels[group])] == round(100 * c["accepted"] / asked)
    assert values[("rate", "Échographie")] == 67 and values[("rate", "Radiologie conventionnelle")] == 67
    assert '<td class="num rate">67 %</td>' in html


def test_outstanding_claims_are_the_unpaid_insurer_parts(manager, practice, facade):
    from backoffice.billing import services as S
    from backoffice.billing.models import Claim

    expected = sum(i.insurer_cents for i in practice["invoices"].values() if i.third_party_payment)
    assert expected == 200 + 200  # half of P2's and of P9's 4 €
    values = chart_values(manager.get("/dashboard").get_data(as_text=True), "claims")
    assert values == {("amount", "Mutuelle du Parc"): expected}
    with facade.new_session(write=True) as s:  # the insurer pays P9's claim: 2 € left
        claim = s.scalar(select(Claim).where(Claim.invoice_id == practice["invoices"]["P9"].id))
        S.send_claims(s, claim.insurer_id)
        S.settle_claim(s, claim.id, paid=True, by="gerante")
        s.commit()
    values = chart_values(manager.get("/dashboard").get_data(as_text=True), "claims")
    assert values == {("amount", "Mutuelle du Parc"): 200}


STUDIES = [  # patient, study date, modality, external, received at (UTC), images
    ("S1", "20261123", "CT", False, datetime(2026, 11, 23, 10, tzinfo=UTC), 2),  # Monday of this week
    ("S2", "20261122", "CT", False, datetime(2026, 11, 22, 10, tzinfo=UTC), 1),  # Sunday: last week
    ("S3", "20261122", "MR", False, datetime(2026, 11, 22, 11, tzinfo=UTC), 3),
    ("S4", "20261110", "US", False, datetime(2026, 10, 31, 23, 30, tzinfo=UTC), 1),  # received 1 Nov, Paris
    ("S5", "20261124", "CT", True, datetime(2026, 11, 24, 10, tzinfo=UTC), 1),  # an outside prior: not our work
    ("S6", "20260801", "CT", False, datetime(2026, 8, 1, 10, tzinfo=UTC), 2),  # before the 12 weeks
    ("S7", "20260907", "MR", False, datetime(2026, 9, 7, 10, tzinfo=UTC), 1),  # first day of the 12 weeks
]


@pytest.fixture
def studies(app, facade, tmp_path):
    from archive_core.index.models import Instance, Series, Study

    app.config["CLOCK"] = lambda: NOW
    sizes = {}
    for patient, day, modality, external, received, images in STUDIES:
        uid = add_study(facade.archive, tmp_path, patient, day, modality=modality, external=external, images=images)
        with facade.new_session(write=True) as s:
            series = select(Series.id).join(Study, Series.study_pk == Study.id).where(Study.study_uid == uid)
            s.execute(update(Instance).where(Instance.series_pk.in_(series)).values(received_at=received))
            sizes[patient] = sum(s.scalars(select(Instance.size_bytes).where(Instance.series_pk.in_(series))))
            s.commit()
    return sizes


def test_studies_per_modality_per_week(app, client, studies):
    """Bad input tried: a Sunday counted in the next week, an outside prior counted as the practice's work."""
    sign_in(client, app, "gerante", "manager")
    values = chart_values(client.get("/dashboard").get_data(as_text=True), "studies")
    nonzero = {k: v for k, v in values.items() if v}
    assert nonzero == {("CT", "23/11"): 1, ("CT", "16/11"): 1, ("MR", "16/11"): 1, ("US", "09/11"): 1,
                       ("MR", "07/09"): 1}
    assert {c for _s, c in values} >= {"07/09", "23/11"} and len({c for _s, c in values}) == 12


def test_storage_growth_and_the_day_the_disk_fills(app, client, studies, monkeypatch):
    """The curve is the total received before each month's end; the fill date extrapolates the last 90 days."""
    from babel.dates import format_date

    from backoffice.home import figures as dashboard

    received = {p: r for p, _d, _m, _e, r, _n in STUDIES}
    total = sum(studies.values())
    last_90 = sum(size for p, size in studies.items() if received[p] >= datetime(2026, 8, 30, 22, tzinfo=UTC))
    monkeypatch.setattr(dashboard, "disk_free_bytes", lambda folder: last_90 * 10)  # ten times 90 days
    sign_in(client, app, "gerante", "manager")
    html = client.get("/dashboard").get_data(as_text=True)
    values = chart_values(html, "storage")
    for month_end, label in ((datetime(2026, 8, 31, 22, tzinfo=UTC), "août 26"),
                             (datetime(2026, 10, 31, 23, tzinfo=UTC), "oct. 26"), (NOW, "nov. 26")):
        assert values[("total", label)] == sum(size for p, size in studies.items() if received[p] < month_end), label
    assert values[("total", "juil. 26")] == 0 and values[("total", "nov. 26")] == total
    fills = TODAY + timedelta(days=900)
    assert f"le disque sera plein vers le {fills.strftime('%d/%m/%Y')}" in html
    assert format_date(fills, "MMM yy", locale="fr_FR")  # a real date, not "never"


@pytest.mark.parametrize("free, added, expected", [
    (900, 90, date(2026, 11, 28) + timedelta(days=900)),  # 1 byte a day
    (1000, 0, None),  # not growing: no date
    (None, 90, None),  # free space unknown
    (10, 900, date(2026, 11, 29)),  # 10 a day: tomorrow
    (10**15, 1, None),  # a century away (the bad input: a date past year 9999)
])
def test_fill_date(free, added, expected):
    from backoffice.home.figures import fill_date

    assert fill_date(TODAY, free, added) == expected


def test_only_managers_see_the_dashboard(app, client):
    sign_in(client, app, "accueil", "front_desk")
    assert client.get("/dashboard").status_code == 403


def test_figures_follow_new_data_at_once(app, manager, practice, facade, tmp_path, monkeypatch):
    """The page reuses figures while their data is unchanged: an invoice, a consent, a study or a purge made
    between two loads must show on the second (bad input tried: a figure cached past a change)."""
    from backoffice.billing import base as billing_base, services as S

    first = manager.get("/dashboard").get_data(as_text=True)
    assert chart_values(first, "money")[("invoiced", "nov. 26")] == 1100
    assert "Aucun examen sur la période." in first
    monkeypatch.setattr(billing_base, "utcnow", lambda: datetime(2026, 11, 27, 15, tzinfo=UTC))
    with facade.new_session(write=True) as s:
        group = S.create_exam_group(s, patient_id="P10", visit_date=date(2026, 11, 27), exam_group="scanner",
                                    created_by="accueil")
        S.record_consent(s, group.id, accepted=True, recorded_by="accueil")
        S.issue_invoice(s, group.id, issued_by="accueil")
        s.commit()
    add_study(facade.archive, tmp_path, "S10", "20261124", modality="CT")
    second = manager.get("/dashboard").get_data(as_text=True)
    assert chart_values(second, "money")[("invoiced", "nov. 26")] == 1100 + 500
    assert chart_values(second, "consent")[("rate", "Scanner")] == 100
    assert chart_values(second, "studies")[("CT", "23/11")] == 1


def test_consent_figure_follows_an_exam_group_changed_in_place(manager, practice, facade):
    """An exam group corrected in place (its group and its visit date rewritten, no new row anywhere) shows
    on the next load (bad input tried: a consent figure cached on the largest ids, which did not move)."""
    from backoffice.billing.models import ExamGroup

    first = chart_values(manager.get("/dashboard").get_data(as_text=True), "consent")
    assert first[("rate", "Scanner")] == 100 and first[("rate", "Radiologie conventionnelle")] == 67  # P4; P1 P3 P5
    with facade.new_session(write=True) as session:
        session.execute(update(ExamGroup).where(ExamGroup.patient_id == "P5")
                        .values(exam_group="scanner", visit_date=date(2026, 11, 20)))
        session.commit()
    second = chart_values(manager.get("/dashboard").get_data(as_text=True), "consent")
    assert second[("rate", "Scanner")] == 50  # P4's acceptance and P5's refusal
    assert second[("rate", "Radiologie conventionnelle")] == 100  # P1 and P3 left


# -- the consent figure from its kept counts (migration 1330) -------------------------------------------


def _counted_directly(session, today):
    """The figure as it was computed before migration 1330: every exam group of the twelve months counted."""
    from sqlalchemy import func

    from backoffice.billing.models import ExamGroup
    from backoffice.home.figures import GroupConsent, month_starts

    rows = session.execute(
        select(ExamGroup.exam_group, ExamGroup.consent, func.count())
        .where(ExamGroup.visit_date >= month_starts(today)[0], ExamGroup.visit_date <= today)
        .group_by(ExamGroup.exam_group, ExamGroup.consent)).all()
    counts: dict[str, dict[str, int]] = {}
    for group, consent, n in rows:
        counts.setdefault(group, {})[consent] = int(n)
    return [GroupConsent(g, c.get("accepted", 0), c.get("refused", 0), c.get("pending", 0))
            for g, c in sorted(counts.items())]


# Days the figure is asked on: the first and last day of a month, and mid-month (visits after it exist).
ASKED_ON = (TODAY, date(2026, 11, 1), date(2026, 11, 30), date(2026, 12, 15), date(2025, 11, 30))


def _assert_exact(session):
    from backoffice.home.figures import consent_per_group

    session.flush()
    for day in ASKED_ON:
        assert consent_per_group(session, day) == _counted_directly(session, day), day


def test_consent_counts_are_backfilled_and_kept_exact_by_the_triggers(database_url):
    """The kept counts give the same figure as counting every exam group, on SQLite and PostgreSQL.

    Bad inputs tried: exam groups written before the migration (back-fill), visits dated after "today" in
    the current month and thirteen months back (outside the window), a consent answered, a group renamed,
    a visit moved across months and to a later day of the same month, a group deleted, a raw SQL update
    from outside the ORM (the triggers, not the app, keep the counts)."""
    from sqlalchemy import delete, text

    from archive_core.db import make_engine, session_factory
    from backoffice.billing import services as S
    from backoffice.billing.models import Consent, ExamGroup
    from backoffice.home.figures import consent_per_group
    from backoffice.migrate import upgrade

    upgrade(database_url, "1310_dashboard_indexes")  # before the counts existed
    engine = make_engine(database_url)
    before = [("B1", date(2026, 11, 2), "radiologie", "accepted"),
              ("B2", date(2026, 11, 2), "radiologie", "accepted"),
              ("B3", date(2026, 11, 29), "radiologie", "refused"),  # after TODAY, same month
              ("B4", date(2025, 11, 30), "echographie", "pending"), ("B5", date(2025, 10, 31), "scanner", "accepted"),
              ("B6", date(2026, 6, 10), "scanner", "refused")]
    with engine.begin() as conn:
        for patient, visit, group, consent in before:
            conn.execute(text("INSERT INTO billing_exam_group (patient_id, visit_date, exam_group, consent, "
                              "created_by, created_at) VALUES (:p, :v, :g, :c, 'desk', :at)"),
                         {"p": patient, "v": visit, "g": group, "c": consent, "at": NOW})
    engine.dispose()
    upgrade(database_url)
    engine = make_engine(database_url)
    session = session_factory(engine)()
    try:
        figure = consent_per_group(session, TODAY)
        assert [(g.exam_group, g.accepted, g.refused, g.pending) for g in figure] == [
            ("radiologie", 2, 0, 0), ("scanner", 0, 1, 0)]  # B3 is after today; B4, B5 before the twelve months
        _assert_exact(session)

        new_groups = [(date(2026, 11, 28), "radiologie"), (date(2026, 11, 28), "echographie"),
                      (date(2026, 11, 30), "echographie"), (date(2026, 1, 5), "scanner"),
                      (date(2026, 11, 2), "radiologie"), (date(2026, 11, 28), "radiologie")]
        made = [S.create_exam_group(session, patient_id=f"N{i}", visit_date=visit, exam_group=group,
                                    created_by="desk", patient_name="Durand^Marie")
                for i, (visit, group) in enumerate(new_groups)]
        _assert_exact(session)
        S.record_consent(session, made[0].id, accepted=False, recorded_by="desk")
        S.record_consent(session, made[1].id, accepted=True, recorded_by="desk")
        S.record_consent(session, made[4].id, accepted=True, recorded_by="desk")  # onto B1 and B2's count
        _assert_exact(session)
        radiologie = {g.exam_group: g for g in consent_per_group(session, TODAY)}["radiologie"]
        assert (radiologie.accepted, radiologie.refused, radiologie.pending) == (3, 1, 1)

        made[1].exam_group = "radiologie"  # a group corrected at the desk
        _assert_exact(session)
        made[2].visit_date = date(2026, 11, 3)  # a future visit moved before today
        made[3].visit_date = date(2025, 9, 1)  # out of the window
        _assert_exact(session)
        session.execute(update(ExamGroup).where(ExamGroup.patient_id == "B1").values(visit_date=date(2026, 11, 29)))
        _assert_exact(session)
        session.execute(delete(Consent).where(Consent.group_id == made[0].id))
        session.delete(made[0])
        session.execute(delete(ExamGroup).where(ExamGroup.patient_id == "B6"))
        _assert_exact(session)
        session.commit()
        # Nothing left in the window for scanner: the group is gone from the figure, not shown at zero.
        assert "scanner" not in {g.exam_group for g in consent_per_group(session, TODAY)}
        leftover = session.execute(text("SELECT COUNT(*) FROM billing_consent_count WHERE n <= 0")).scalar()
        assert leftover == 0
    finally:
        session.close()
        engine.dispose()
