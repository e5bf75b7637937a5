"""The sweep's preview and its proposed batch read their candidates from the stored answers, on SQLite
and PostgreSQL, and still give what deciding every patient gives.

``sweep_plan`` (the page /retention/sweep) and ``propose_batch`` pick candidates from
``retention_answer`` (refreshed first) and decide only those again with ``decide``. These tests write
the facts as the practice does (imported studies, holds and deaths through the retention services),
set today with the app's clock (or pass it), and compare with the reference: every patient decided,
which is what the sweep did before (``retention_of`` without a selection).
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime, time, timezone

from sqlalchemy import select, update

from tests.retention_support import add_patients_in_bulk, add_study, sign_in
from tests.unit.test_retention_rule import CASES
from tests.unit.test_retention_stored import _arrange

# Days the clock is set to: before most dates, between them, after all of them.
DAYS = (date(2021, 1, 1), date(2026, 11, 28), date(2030, 4, 15), date(2034, 1, 1))


def _clock(d: date):
    return lambda: datetime.combine(d, time(9), tzinfo=timezone.utc)


def _reference(facade, today: date):
    """What deciding every patient gives: (to propose, to move, needs review), patient IDs in row order."""
    from backoffice.retention import batches, decisions

    with facade.new_session() as s:
        every = decisions.retention_of(s, facade, today=today)
        taken, _studies = batches.in_open_batch(s)
    propose = [p for p in every if p.decision.purgeable(today)
               and (p.record.patient_id, p.record.issuer_of_patient_id) not in taken]
    move = [p for p in every if p.decision.tier == "archive" and p.record.instances_active]
    return propose, move, sum(1 for p in every if p.decision.needs_review)


def _page(client):
    html = client.get("/retention/sweep").get_data(as_text=True)
    propose_part, move_part = html.split('id="to-move"')
    rows = r'<tr data-patient-id="([^"]+)">'
    review = int(re.search(r"Dossiers à vérifier, jamais proposés : (\d+)", html).group(1))
    return re.findall(rows, propose_part), re.findall(rows, move_part), review


def test_preview_and_batch_are_what_deciding_every_patient_gives(db_app, tmp_path):
    """Every row of the rule's table (deaths, released holds, no birth date, outside priors only, 29
    February), a patient under a hold still open and a recent patient, checked on four days set by the
    clock: the preview lists exactly the patients, in the order, that deciding every patient proposes
    and moves, with the same review count; the batch proposed on each day names the same patients with
    decide()'s date, basis and sentence, and its audit event counts them. Bad input tried: candidates
    that ignore the hold (HELD would be proposed), the clock (a stale "today"), the 'to review' flag,
    patients already in an open batch (proposed twice), or the tier (a recent patient moved)."""
    from archive_core.audit import AuditEvent
    from backoffice.retention import batches, records
    from backoffice.retention.models import PurgeBatch

    facade = db_app.extensions["archivage"]
    for n, (_name, facts, *_expected) in enumerate(CASES, start=1):
        _arrange(facade, tmp_path, f"CASE{n:02d}", facts)
    add_study(facade.archive, tmp_path, "HELD", "20000101", birth_date="19700101", images=1)
    add_study(facade.archive, tmp_path, "RECENT", "20260901", birth_date="19700101", images=1)
    with facade.new_session(write=True) as s:
        records.place_hold(s, facade, "HELD", "contentieux", actor="gerante", today=date(2020, 6, 1),
                           now=datetime(2020, 6, 1, 12, tzinfo=timezone.utc))
        s.commit()
    client = db_app.test_client()
    sign_in(client, db_app, "gerante", "manager")

    proposed_ever: set[str] = set()
    for today in DAYS:
        db_app.config["CLOCK"] = _clock(today)
        propose, move, review = _reference(facade, today)
        ids = lambda rows: [p.record.patient_id for p in rows]  # noqa: E731
        assert _page(client) == (ids(propose), ids(move), review), today
        assert "HELD" not in ids(propose), today
        assert ("RECENT" in ids(move)) is (today >= date(2031, 9, 1)), today  # five years after its visit
        with facade.new_session(write=True) as s:
            batch = batches.propose_batch(s, facade, today=today)
            s.commit()
            got = [(i.patient_id, i.basis, i.keep_until, i.explanation) for i in batch.items] if batch else []
            batch_id = batch.id if batch else None
        assert got == [(p.record.patient_id, p.decision.basis, p.decision.keep_until, p.decision.explanation)
                       for p in propose], today
        if batch_id is not None:
            with facade.new_session() as s:
                details = [json.loads(d) for d in s.scalars(
                    select(AuditEvent.detail).where(AuditEvent.action == "purge.proposed"))]
            assert {"batch_id": batch_id, "patients": len(propose)} in details
        proposed_ever |= set(ids(propose))
    assert proposed_ever  # the table has due records on these days: the comparison was not vacuous
    with facade.new_session() as s:
        assert s.scalar(select(PurgeBatch.id).where(PurgeBatch.status == "proposed")) is not None


def test_a_patient_whose_facts_changed_after_the_refresh_is_decided_on_current_facts(db_app, tmp_path):
    """OLD (last visit 2000, adult) is due on 28/11/2026 and the preview lists it. Then a study arrives
    for it, and DEAD's death is recorded (its date moves from 2032 to 2025): the batch proposed right
    after (no page loaded in between) leaves OLD out and names DEAD. And a stored
    answer that no longer matches the facts, with nothing queued (NEW, last visit 2026, whose stored date
    is made to say 2001): decide() on today's facts keeps it out of the preview and the batch. Bad input
    tried: a batch built from the answers of the last page load (DEAD missing), or from the stored
    dates alone (NEW proposed)."""
    from backoffice.retention import batches, records
    from backoffice.retention.models import RetentionAnswer

    facade = db_app.extensions["archivage"]
    today = date(2026, 11, 28)
    db_app.config["CLOCK"] = _clock(today)
    for pid in ("OLD", "OTHER"):
        add_study(facade.archive, tmp_path, pid, "20000105", birth_date="19700101", images=1)
    add_study(facade.archive, tmp_path, "NEW", "20260105", birth_date="19700101", images=1)
    add_study(facade.archive, tmp_path, "DEAD", "20120915", birth_date="19500101", images=1)
    client = db_app.test_client()
    sign_in(client, db_app, "gerante", "manager")
    assert _page(client)[0] == ["OLD", "OTHER"]

    with facade.new_session(write=True) as s:  # stale, with nothing queued to put it right
        s.execute(update(RetentionAnswer).where(RetentionAnswer.patient_id == "NEW")
                  .values(keep_until=date(2001, 1, 1), sort_until=date(2001, 1, 1)))
        s.commit()
    add_study(facade.archive, tmp_path, "OLD", "20261120", birth_date="19700101", images=1)
    with facade.new_session(write=True) as s:  # died 10/01/2015: kept until 10/01/2025, due now
        records.record_death(s, facade, "DEAD", date(2015, 1, 10), actor="gerante", today=today,
                             confirm_shortening=True)
        s.commit()
    with facade.new_session(write=True) as s:
        batch = batches.propose_batch(s, facade, today=today)
        s.commit()
        assert [i.patient_id for i in batch.items] == ["OTHER", "DEAD"]
    assert _page(client)[0] == []  # OTHER and DEAD are in the open batch; neither OLD nor NEW is due


def test_a_long_proposal_shows_its_first_records_and_counts_them_all(db_app):
    """130 records past their date, one of them under a hold: the preview counts the 129 the batch would
    name, shows the first 100 of them in the batch's order, says so and links to the overdue list; the
    batch then names all 129. Bad input tried: a count of the rows shown only, a held record counted
    or shown, a preview that draws every row."""
    from backoffice.retention import batches, records

    facade = db_app.extensions["archivage"]
    today = date(2026, 11, 28)
    db_app.config["CLOCK"] = _clock(today)
    add_patients_in_bulk(facade, 130, study_date="20000101")  # the triggers queue them
    with facade.new_session(write=True) as s:
        records.place_hold(s, facade, "P005", "contentieux", actor="gerante", today=today,
                           now=datetime(2026, 11, 27, 12, tzinfo=timezone.utc))
        s.commit()
    client = db_app.test_client()
    sign_in(client, db_app, "gerante", "manager")
    propose, _move, _review = _reference(facade, today)
    assert len(propose) == 129
    html = client.get("/retention/sweep").get_data(as_text=True)
    assert "Proposition de destruction — dossiers : 129" in html
    assert 'id="propose-shown"' in html and "/retention/patients?list=overdue" in html
    assert _page(client)[0] == [p.record.patient_id for p in propose[:100]]
    with facade.new_session(write=True) as s:
        batch = batches.propose_batch(s, facade, today=today)
        s.commit()
        assert [i.patient_id for i in batch.items] == [p.record.patient_id for p in propose]


def test_who_moves_follows_the_images_tier_and_a_late_image(db_app, tmp_path):  # noqa: F811
    """The move candidates come from the stored answers (``active_images``, migration 1320). OLD (last
    visit 2010) has its image in the active tier: the preview moves it. The sweep moves the image to
    the archive tier: the next preview moves nobody. A hold placed on OLD has its answer decided again
    (now without active images). Then one more image of its 2010 study arrives late (a new series in
    that study, through the import path): it lands in the active tier and the preview moves OLD again,
    as deciding every patient says; only image and series rows were written, so the image's trigger is
    what queued OLD. Bad input tried: a flag not set again by an image alone (the late image left in the
    active tier for good), a flag left as stored before the move (OLD moved twice)."""
    from pydicom.uid import generate_uid

    from archive_core.maintenance import import_path
    from backoffice.retention import records, sweep
    from tests.helpers import make_ct

    facade = db_app.extensions["archivage"]
    today = date(2026, 11, 28)
    db_app.config["CLOCK"] = _clock(today)
    study_uid = add_study(facade.archive, tmp_path, "OLD", "20100105", birth_date="19700101", images=1)
    add_study(facade.archive, tmp_path, "RECENT", "20260105", birth_date="19700101", images=1)
    client = db_app.test_client()
    sign_in(client, db_app, "gerante", "manager")
    assert _page(client)[1] == ["OLD"]

    assert sweep.sweep(facade, today=today).moved_instances == 1
    assert _page(client)[1] == [] == [p.record.patient_id for p in _reference(facade, today)[1]]
    with facade.new_session(write=True) as s:
        records.place_hold(s, facade, "OLD", "contentieux", actor="gerante", today=today,
                           now=datetime(2026, 11, 28, 8, tzinfo=timezone.utc))
        s.commit()
    assert _page(client)[1] == []

    folder = tmp_path / "late"
    folder.mkdir()
    make_ct(patient_id="OLD", study_uid=study_uid, series_uid=generate_uid(), study_date="20100105",
            patient_name="Dupont^Jean").save_as(folder / "late.dcm", enforce_file_format=True)
    assert import_path(facade.archive, folder).stored == 1
    assert [p.record.patient_id for p in _reference(facade, today)[1]] == ["OLD"]
    assert _page(client)[1] == ["OLD"]
