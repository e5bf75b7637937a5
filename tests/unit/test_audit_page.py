"""The audit page as a manager reads it: filters that match events, labels, Paris times, readable details, names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from backoffice.audit_events import EVENT_LABELS
from tests.retention_support import add_study, sign_in

ROOT = Path(__file__).resolve().parents[2]
# An event type written by the code: audit(...)/audit_now(...)/audit.record(...) with a literal first argument
# (a conditional "a" if ok else "b" counts both).
WRITTEN = re.compile(r"""(?:audit|audit_now|record)\(\s*(?:[\w().]+,\s*)?["']([a-z_]+(?:\.[a-z_]+)+)["']""")
# ... or the action of an event appended in a batch (audit.record_many: {"action": "dicom.find", ...}).
BATCHED = re.compile(r"""["']action["']\s*:\s*["']([a-z_]+(?:\.[a-z_]+)+)["']""")
CONDITIONAL = re.compile(r"""["']([a-z_]+\.[a-z_.]+)["'] if \w+ else ["']([a-z_]+\.[a-z_.]+)["']""")


def written_event_types() -> set[str]:
    found = {"login", "logout"}  # the two single-word events, written by the login views
    for folder in ("backoffice", "archive_core"):
        for path in (ROOT / folder).rglob("*.py"):
            source = path.read_text()
            found.update(WRITTEN.findall(source))
            found.update(BATCHED.findall(source))
            for pair in CONDITIONAL.findall(source):
                found.update(pair)
    return found


def test_every_event_type_the_code_writes_has_a_label():
    """Bad input tried: an event type written somewhere with no label (the filter would show a code)."""
    written = written_event_types()
    assert {"study.print", "study.media", "dicom.find", "share.bad_code", "billing.payment"} <= written
    assert sorted(written - set(EVENT_LABELS)) == []


@pytest.fixture
def manager(app, client):
    app.config["WTF_CSRF_ENABLED"] = False
    sign_in(client, app, "gerante", "manager")
    return client


@pytest.fixture
def printed(app, facade, tmp_path):
    """A study of DUPONT^Jean printed and exported, as the front desk does."""
    uid = add_study(facade.archive, tmp_path, "PAT-A", "20260301")
    facade.audit_now("study.print", actor="accueil", patient_id="PAT-A", study_uid=uid, detail={"via": "web"})
    facade.audit_now("study.media", actor="accueil", patient_id="PAT-A", study_uid=uid,
                     detail={"via": "web", "instances": 2, "bytes": 1_500_000})
    return uid


def _options(html: str) -> dict[str, str]:
    select = html.split('name="action"', 1)[1].split("</select>", 1)[0]
    return {code: label.strip() for code, label in re.findall(r'<option value="([^"]*)"[^>]*>([^<]*)</option>', select)
            if code}


def test_the_filter_offers_the_events_that_exist_and_each_returns_its_rows(manager, printed):
    """Reproduced: "examen imprimé" matched nothing because events are study.print; a filter for a kind
    never written (study.printed) must not be offered."""
    options = _options(manager.get("/retention/audit").get_data(as_text=True))
    assert options["study.print"] == "examen imprimé (reproduction papier)"
    assert options["study.media"] == "examen exporté (CD/USB)"
    assert "study.printed" not in options and "share.revoke" not in options  # nothing of the kind was written
    for code in ("study.print", "study.media"):
        html = manager.get(f"/retention/audit?action={code}").get_data(as_text=True)
        assert re.findall(r'data-action="([^"]+)"', html) == [code]


def test_details_are_labelled_sizes_in_mo_and_the_manager_sees_the_name(manager, printed):
    """Bad input tried: raw JSON ({"bytes": 1500000, ...}) and a bare patient ID on the manager's page."""
    html = manager.get("/retention/audit?action=study.media").get_data(as_text=True)
    row = html.split('data-action="study.media"', 1)[1].split("</tr>", 1)[0]
    assert "images : 2" in row and "taille : 1,5\xa0Mo" in row and "par : web" in row
    assert "{" not in row and "&#34;" not in row
    assert "DUPONT Jean" in row and "PAT-A" in row


def test_the_admin_sees_identifiers_not_names(app, client, printed):
    sign_in(client, app, "chef", "admin")
    html = client.get("/retention/audit?action=study.print").get_data(as_text=True)
    assert "PAT-A" in html and "DUPONT" not in html


@pytest.mark.parametrize("stored, french", [
    ("2026-07-01T12:00:00.000000+00:00", "01/07/2026 14:00:00"),  # summer time: UTC+2
    ("2026-12-01T23:30:05.000000+00:00", "02/12/2026 00:30:05"),  # winter, the next day in Paris
    ("2026-03-29T00:59:59.000000+00:00", "29/03/2026 01:59:59"),  # the last second before the change
    ("2026-03-29T01:00:00.000000+00:00", "29/03/2026 03:00:00"),
])
def test_event_times_are_paris_wall_clock(app, stored, french):
    from backoffice.audit_events import paris_time

    with app.test_request_context():
        assert paris_time(stored) == french


def test_the_page_shows_the_stored_instant_in_paris(manager, printed, facade):
    from sqlalchemy import select

    from archive_core.audit import AuditEvent
    from backoffice.audit_events import paris_time

    with facade.new_session() as s:
        at = s.scalar(select(AuditEvent.at).where(AuditEvent.action == "study.print"))
    html = manager.get("/retention/audit?action=study.print").get_data(as_text=True)
    with manager.application.test_request_context():
        assert f'<td class="when">{paris_time(at)}</td>' in html
    assert "heure de Paris" in html


@pytest.mark.parametrize("day, utc_bound", [
    ("2026-07-01", "2026-06-30T22:00:00.000000+00:00"),
    ("2026-12-01", "2026-11-30T23:00:00.000000+00:00"),
])
def test_date_filters_are_paris_days(day, utc_bound):
    """Bad input tried: a UTC day boundary, which drops the events of 00:00–02:00 in Paris."""
    from datetime import date, datetime

    from backoffice.retention.views.audit import _paris_day_start

    # The view gives the facade an instant (the core writes it as the trail's UTC text): the same instant.
    assert _paris_day_start(date.fromisoformat(day)) == datetime.fromisoformat(utc_bound)


def test_the_facade_filters_events_by_instant_whatever_the_time_zone(facade, printed):
    """The page's Paris bounds reach the trail through ArchiveFacade.audit_events. Bad input tried: the
    event's own instant given in Paris time (its text sorts after the stored UTC text), which a plain text
    comparison would put on the wrong side of the bound."""
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    with facade.new_session() as s:
        (event,) = facade.audit_events(s, action="study.print")
        at = datetime.fromisoformat(event.at).astimezone(ZoneInfo("Europe/Paris"))
        tick = timedelta(microseconds=1)

        def ids(**bounds) -> list[int]:
            return [e.id for e in facade.audit_events(s, patient_id="PAT-A", **bounds)]

        media = [e.id for e in facade.audit_events(s, action="study.media")]
        assert ids(since=at, before=at + tick) == [event.id]
        assert ids(since=at + tick, before=at + tick) == []
        assert ids(before=at) == []
        assert ids(since=at) == media + [event.id]  # newest first
        assert set(facade.audit_actions(s)) >= {"study.print", "study.media"}
