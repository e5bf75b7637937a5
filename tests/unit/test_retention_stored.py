"""The stored retention answers the manager's lists read are the rule's answers, on SQLite and PostgreSQL.

The lists no longer decide every patient on each load: ``retention_answer`` keeps what
``archive_core.retention.decide`` answers without "today", and database triggers queue a patient for a
new decision whenever a study, the patient, a hold or a death is written. These tests write the facts
the way the practice does (studies imported through the archive, holds and deaths through the
retention services, pages through the web app) and compare what is stored with ``decide``. Today is
always set by the app's clock (or passed), never the machine's date.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone

import pytest
from sqlalchemy import select

from archive_core.retention import decide
from tests.retention_support import add_patients_in_bulk, add_study, sign_in
from tests.unit.test_retention_rule import CASES

# Days on which every case is checked: the stored columns must not depend on the day they were computed.
DAYS = (date(1990, 1, 1), date(2026, 11, 28), date(2040, 6, 15))


def _noon(d: date) -> datetime:
    return datetime.combine(d, time(12), tzinfo=timezone.utc)  # the same date in Paris


@pytest.fixture
def db_app(db_app):
    """The shared app (tests/unit/conftest.py), its forms posted without a CSRF token."""
    db_app.config["WTF_CSRF_ENABLED"] = False
    return db_app


def _stored(facade, patient_id: str):
    from backoffice.retention import answers
    from backoffice.retention.models import RetentionAnswer

    answers.refresh_now(facade)
    with facade.new_session() as s:
        return s.scalar(select(RetentionAnswer).where(RetentionAnswer.patient_id == patient_id))


def _today_answer(facade, patient_id: str, today: date):
    from backoffice.retention import decisions

    with facade.new_session() as s:
        return decisions.patient_retention(s, facade, patient_id, today=today)


def _arrange(facade, tmp_path, patient_id: str, facts) -> None:
    """The case's facts written as the practice writes them: imported studies, a death, holds."""
    from backoffice.retention import records

    birth = facts.birth_date.strftime("%Y%m%d") if facts.birth_date else None
    for visit in facts.visit_dates:
        add_study(facade.archive, tmp_path, patient_id, visit.strftime("%Y%m%d"), birth_date=birth, images=1)
    if not facts.visit_dates:  # only an outside prior
        add_study(facade.archive, tmp_path, patient_id, "20100101", birth_date=birth, images=1, external=True)
    if facts.death_date is not None:
        with facade.new_session(write=True) as s:
            records.record_death(s, facade, patient_id, facts.death_date, actor="gerante",
                                 today=facts.death_date + timedelta(days=1), confirm_shortening=True)
            s.commit()
    for hold in facts.holds:
        with facade.new_session(write=True) as s:
            placed = records.place_hold(s, facade, patient_id, "réclamation", actor="gerante", today=hold.start,
                                        now=_noon(hold.start))
            s.commit()
        if hold.end is not None:
            with facade.new_session(write=True) as s:
                records.release_hold(s, facade, placed.id, actor="gerante", now=_noon(hold.end))
                s.commit()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_the_stored_answer_is_the_rule_for_every_case_of_its_table(db_app, tmp_path, case):
    """Every row of the rule's table (tests/unit/test_retention_rule.py), written through the archive and
    the retention services: the stored kept-until date, basis and review flag are decide()'s, for any
    today. Bad input tried: a stored date computed without the death, without a released hold, or with
    an outside prior counted as a visit, or one that changes with the day it was computed."""
    _name, facts, keep_until, basis, needs_review = case
    facade = db_app.extensions["archivage"]
    _arrange(facade, tmp_path, "CASE", facts)
    stored = _stored(facade, "CASE")
    assert (stored.keep_until, stored.basis, stored.needs_review) == (keep_until, basis, needs_review)
    for today in DAYS:
        rule = decide(facts, today)
        answer = _today_answer(facade, "CASE", today).decision
        assert (answer.keep_until, answer.basis, answer.needs_review, answer.last_visit) == (
            rule.keep_until, rule.basis, rule.needs_review, rule.last_visit)
        assert (stored.keep_until, stored.basis, stored.needs_review, stored.last_visit) == (
            rule.keep_until, rule.basis, rule.needs_review, rule.last_visit)


def _listed(client, kind: str, days: int = 365) -> list[str]:
    html = client.get(f"/retention/patients?list={kind}&days={days}").get_data(as_text=True)
    return re.findall(r'<tr data-patient-id="([^"]+)">', html)


def test_a_hold_placed_then_lifted_and_the_clock_moving_change_the_lists(db_app, tmp_path):
    """A record kept until 01/01/2030 (last visit 01/01/2010, adult). A hold placed on 28/11/2026 takes
    it into the hold list; lifted 100 days later it leaves it, and the stored date becomes 11/04/2030
    (100 held days added), as decide() says. Then the clock moves: 30 days before that date it is in the
    30-day list, the day after it is overdue. Bad input tried: a stored date not updated by the release
    (the record would be listed overdue on 02/01/2030), a hold list that ignores the hold."""
    from backoffice.retention import records

    facade = db_app.extensions["archivage"]
    clock = {"now": datetime(2026, 11, 28, 9, 0, tzinfo=timezone.utc)}
    db_app.config["CLOCK"] = lambda: clock["now"]
    add_study(facade.archive, tmp_path, "HELD", "20100101", birth_date="19700101", images=1)
    add_study(facade.archive, tmp_path, "OTHER", "20100101", birth_date="19700101", images=1)
    client = db_app.test_client()
    sign_in(client, db_app, "gerante", "manager")
    assert _stored(facade, "HELD").keep_until == date(2030, 1, 1)

    client.post("/retention/holds", data={"patient_id": "HELD", "reason": "réclamation d'un patient"})
    assert _listed(client, "hold") == ["HELD"]
    assert _stored(facade, "HELD").keep_until == date(2030, 1, 1)  # an open hold adds nothing yet

    clock["now"] = datetime(2027, 3, 8, 9, 0, tzinfo=timezone.utc)  # 100 days later
    with facade.new_session() as s:
        hold_id = records.active_holds(s)[0].id
    client.post(f"/retention/holds/{hold_id}/release")
    assert _listed(client, "hold") == []
    stored = _stored(facade, "HELD")
    rule = _today_answer(facade, "HELD", date(2027, 3, 8)).decision
    assert stored.keep_until == rule.keep_until == date(2030, 4, 11)

    clock["now"] = datetime(2030, 3, 20, 9, 0, tzinfo=timezone.utc)
    assert _listed(client, "due", 30) == ["HELD"]
    assert _listed(client, "overdue") == ["OTHER"]
    clock["now"] = datetime(2030, 4, 12, 9, 0, tzinfo=timezone.utc)
    assert _listed(client, "overdue") == ["OTHER", "HELD"]


def test_a_new_visit_and_a_tombstone_reach_the_lists(db_app, tmp_path):
    """Facts written by the archive, not by the retention pages: a study imported for an overdue patient
    takes it out of the overdue list; a patient tombstoned by a purge leaves every list. Bad input
    tried: answers computed once and never again (the patient would stay overdue / listed)."""
    facade = db_app.extensions["archivage"]
    db_app.config["CLOCK"] = lambda: datetime(2026, 11, 28, 9, 0, tzinfo=timezone.utc)
    add_study(facade.archive, tmp_path, "BACK", "20000105", birth_date="19700101", images=1)
    add_study(facade.archive, tmp_path, "GONE", "20000105", birth_date="19700101", images=1)
    client = db_app.test_client()
    sign_in(client, db_app, "gerante", "manager")
    assert _listed(client, "overdue") == ["BACK", "GONE"]

    add_study(facade.archive, tmp_path, "BACK", "20261120", birth_date="19700101", images=1)
    with facade.new_session(write=True) as s:
        facade.tombstone_patient(s, "GONE", "", at=datetime(2026, 11, 28, 10, 0, tzinfo=timezone.utc))
        s.commit()
    assert _listed(client, "overdue") == []
    assert _listed(client, "all") == ["BACK"]
    assert _stored(facade, "BACK").keep_until == date(2046, 11, 20)


def test_lists_are_paged(db_app, tmp_path):
    """More records than a page: the first page shows 100 and links to the next, which shows the rest.
    Bad input tried: a list that shows everything at once, or loses records between pages."""
    facade = db_app.extensions["archivage"]
    db_app.config["CLOCK"] = lambda: datetime(2026, 11, 28, 9, 0, tzinfo=timezone.utc)
    add_patients_in_bulk(facade, 130, study_date="20100101")
    client = db_app.test_client()
    sign_in(client, db_app, "gerante", "manager")
    html = client.get("/retention/patients?list=all").get_data(as_text=True)
    first = re.findall(r'<tr data-patient-id="([^"]+)">', html)
    assert first == [f"P{i:03d}" for i in range(100)]
    assert "page=2" in html
    second = _listed_page(client, 2)
    assert second == [f"P{i:03d}" for i in range(100, 130)]


def _listed_page(client, page: int) -> list[str]:
    html = client.get(f"/retention/patients?list=all&page={page}").get_data(as_text=True)
    return re.findall(r'<tr data-patient-id="([^"]+)">', html)


def test_the_migration_back_fills_existing_patients_with_the_rule(tmp_path, database_url):
    """A database from before the stored answers, holding every case of the rule's table (studies,
    births, deaths, holds placed and lifted): upgrading fills retention_answer with decide()'s answers.
    Bad input tried: patients the back-fill skips, a back-fill that ignores holds or deaths, outside
    priors counted as visits."""
    import sqlalchemy as sa

    from archive_core.db import make_engine
    from backoffice.migrate import upgrade

    upgrade(database_url, "0510_purge_checks")  # the retention tables, before 1300_retention_answer
    engine = make_engine(database_url)
    patient = sa.table("patient", sa.column("id"), sa.column("patient_id"), sa.column("issuer_of_patient_id"),
                       sa.column("patient_name"), sa.column("patient_birth_date"),
                       sa.column("created_at", sa.DateTime(timezone=True)))
    study = sa.table("study", sa.column("id"), sa.column("study_uid"), sa.column("patient_pk"), sa.column("study_date"),
                     sa.column("modalities_in_study"), sa.column("num_series"), sa.column("num_instances"),
                     sa.column("external"), sa.column("received_at", sa.DateTime(timezone=True)))
    hold = sa.table("legal_hold", sa.column("patient_id"), sa.column("issuer_of_patient_id"), sa.column("reason"),
                    sa.column("placed_by"), sa.column("placed_at", sa.DateTime(timezone=True)),
                    sa.column("released_by"), sa.column("released_at", sa.DateTime(timezone=True)))
    death = sa.table("retention_death", sa.column("patient_id"), sa.column("issuer_of_patient_id"),
                     sa.column("death_date", sa.Date()), sa.column("recorded_by"),
                     sa.column("recorded_at", sa.DateTime(timezone=True)))
    now = datetime(2026, 11, 28, tzinfo=timezone.utc)
    study_id = 0
    with engine.begin() as c:
        for pk, (_name, facts, *_expected) in enumerate(CASES, start=1):
            pid = f"CASE{pk:02d}"
            c.execute(patient.insert().values(id=pk, patient_id=pid, issuer_of_patient_id="",
                                              patient_name=f"Cas^{pk}", created_at=now,
                                              patient_birth_date=facts.birth_date.strftime("%Y%m%d")
                                              if facts.birth_date else None))
            visits = [(v, False) for v in facts.visit_dates] or [(date(2010, 1, 1), True)]
            for visit, external in visits:
                study_id += 1
                c.execute(study.insert().values(id=study_id, study_uid=f"1.2.3.{study_id}", patient_pk=pk,
                                                study_date=visit.strftime("%Y%m%d"), modalities_in_study="CT",
                                                num_series=1, num_instances=1, external=external, received_at=now))
            if facts.death_date:
                c.execute(death.insert().values(patient_id=pid, issuer_of_patient_id="", death_date=facts.death_date,
                                                recorded_by="gerante", recorded_at=now))
            for h in facts.holds:
                c.execute(hold.insert().values(patient_id=pid, issuer_of_patient_id="", reason="réclamation",
                                               placed_by="gerante", placed_at=_noon(h.start), released_by="gerante",
                                               released_at=_noon(h.end) if h.end else None))
        if engine.dialect.name == "postgresql":  # explicit ids did not advance the sequences
            for table in ("patient", "study"):
                c.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))"))
    engine.dispose()

    upgrade(database_url)
    engine = make_engine(database_url)
    with engine.connect() as c:
        stored = {row.patient_id: row for row in c.execute(sa.text(
            "SELECT patient_id, keep_until, basis, needs_review, last_visit FROM retention_answer"))}
    engine.dispose()
    assert len(stored) == len(CASES)
    for pk, (name, facts, keep_until, basis, needs_review) in enumerate(CASES, start=1):
        row = stored[f"CASE{pk:02d}"]
        as_date = lambda v: v if v is None or isinstance(v, date) else date.fromisoformat(v)  # noqa: E731
        rule = decide(facts, date(2026, 11, 28))
        assert (as_date(row.keep_until), row.basis, bool(row.needs_review), as_date(row.last_visit)) == (
            rule.keep_until, rule.basis, rule.needs_review, rule.last_visit), name
        assert (rule.keep_until, rule.basis, rule.needs_review) == (keep_until, basis, needs_review), name
