"""The manager's retention lists, the sweep's preview and the destruction certificate, at a set date.

Today is fixed by the app's clock (28/11/2026 in Paris), never the machine's date.
"""

from __future__ import annotations

import re
import subprocess
from datetime import date, datetime, timezone

import pytest

from tests.helpers import require_tool
from tests.retention_support import add_study, sign_in

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=timezone.utc)
TODAY = date(2026, 11, 28)

# patient ID, name, last visit, born, external, held -> lists it belongs in
PATIENTS = [
    ("OLD", "Lefèvre^Anne", "20000105", "19700101", False, False),   # kept until 05/01/2020: overdue
    ("SOON", "Martin^Lucas", "20061210", "19700101", False, False),  # 10/12/2026: within 30 days
    ("QUARTER", "Dupré^Jean", "20070201", "19700101", False, False),  # 01/02/2027: within 90
    ("YEAR", "Bernard^Léa", "20070901", "19700101", False, False),    # 01/09/2027: within 365
    ("HELD", "Petit^Paul", "20000105", "19700101", False, True),      # overdue but on hold
    ("EXT", "Roux^Marc", "20100101", "19700101", True, False),        # outside priors only: to review
    ("NEW", "Moreau^Julie", "20250601", "19900101", False, False),    # 2045: in no due list
]
EXPECTED = {
    ("due", 30): ["SOON"],
    ("due", 90): ["SOON", "QUARTER"],
    ("due", 365): ["SOON", "QUARTER", "YEAR"],
    ("overdue", 0): ["OLD"],
    ("hold", 0): ["HELD"],
    ("review", 0): ["EXT"],
    ("all", 0): ["OLD", "HELD", "SOON", "QUARTER", "YEAR", "NEW", "EXT"],
}


@pytest.fixture
def practice(app, facade, tmp_path):
    from backoffice.retention import records

    app.config["CLOCK"] = lambda: NOW
    app.config["WTF_CSRF_ENABLED"] = False
    for pid, name, visit, born, external, held in PATIENTS:
        add_study(facade.archive, tmp_path, pid, visit, birth_date=born, external=external, patient_name=name)
        if held:
            with facade.new_session(write=True) as s:
                records.place_hold(s, facade, pid, "réclamation en cours", actor="gerante", today=TODAY, now=NOW)
                s.commit()
    return facade


@pytest.fixture
def manager(app, client, practice):
    sign_in(client, app, "gerante", "manager")
    return client


def listed(html: str) -> list[str]:
    return re.findall(r'<tr data-patient-id="([^"]+)">', html)


@pytest.mark.parametrize("kind, days", sorted(EXPECTED), ids=[f"{k}-{d}" for k, d in sorted(EXPECTED)])
def test_each_list_holds_exactly_its_records(manager, kind, days):
    """Bad input tried: a held record in the overdue list, a 2027 date in the 30-day list."""
    html = manager.get(f"/retention/patients?list={kind}&days={days or 365}").get_data(as_text=True)
    assert listed(html) == EXPECTED[(kind, days)]


def test_rows_show_name_birth_date_last_visit_keep_until_basis_and_tier(manager):
    html = manager.get("/retention/patients?list=due&days=30").get_data(as_text=True)
    row = html.split('<tr data-patient-id="SOON">', 1)[1].split("</tr>", 1)[0]
    cells = [re.sub(r"<[^>]+>", " ", c).split() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)]
    assert cells[0][:2] == ["MARTIN", "Lucas"] and "SOON" in cells[0]
    assert cells[1:4] == [["01/01/1970"], ["10/12/2006"], ["10/12/2026"]]
    assert " ".join(cells[4]) == "20 ans après le dernier passage"
    assert " ".join(cells[5]) == "archive intermédiaire"
    assert re.fullmatch(r"\d+(,\d)?\xa0(ko|Mo)", " ".join(cells[6]).replace(" ", "\xa0"))


def test_every_count_on_the_overview_links_to_a_list_of_that_many_records(manager):
    """Bad input tried: a count that says 2 and a list that shows 3 (or a count that is not a link)."""
    overview = manager.get("/retention/").get_data(as_text=True)
    links = re.findall(r'<a id="([\w-]+)" href="([^"]+)">[^<]*: <strong>(\d+)</strong></a>', overview)
    assert {anchor for anchor, _href, _n in links} == {"due-30", "due-90", "due-365", "overdue", "on-hold", "review",
                                                       "all"}
    for anchor, href, count in links:
        page = manager.get(href.replace("&amp;", "&")).get_data(as_text=True)
        assert len(listed(page)) == int(count) > 0, anchor


def test_the_sweep_preview_lists_what_the_sweep_then_does(app, manager, practice):
    """Bad input tried: a preview computed differently from the run (the held record, the outside prior)."""
    preview = manager.get("/retention/sweep").get_data(as_text=True)
    proposed = listed(preview.split('id="to-propose"', 1)[1].split("</section>", 1)[0])
    moving = listed(preview.split('id="to-move"', 1)[1].split("</section>", 1)[0])
    assert proposed == ["OLD"]
    # Visits more than 5 years old; not the 2025 visit, nor the outside prior (no visit: stays active).
    assert sorted(moving) == ["HELD", "OLD", "QUARTER", "SOON", "YEAR"]
    assert "LEFÈVRE Anne" in preview

    response = manager.post("/retention/sweep")
    assert response.status_code == 302 and response.headers["Location"].endswith("/retention/batches/1")
    from backoffice.retention.models import PurgeBatch

    with practice.new_session() as s:
        batch = s.get(PurgeBatch, 1)
        assert [i.patient_id for i in batch.items] == proposed
        assert batch.proposed_by == "gerante"  # so another manager approves
        records = {r.patient_id: r for r in practice.patient_records(s)}
    assert sorted(pid for pid, r in records.items() if r.instances_archive and not r.instances_active) == sorted(moving)
    assert all(records[p].instances_active and not records[p].instances_archive for p in ("NEW", "EXT"))
    again = manager.get("/retention/sweep").get_data(as_text=True)  # done: nothing left to do
    assert "Aucun dossier échu à proposer." in again and "Aucun dossier à déplacer." in again


@pytest.mark.parametrize("size, french, english", [
    (0, "0\xa0o", "0\xa0B"),
    (999, "999\xa0o", "999\xa0B"),
    (1_500_000, "1,5\xa0Mo", "1.5\xa0MB"),
    (987_654_321, "988\xa0Mo", "988\xa0MB"),
    (1_500_000_000, "1,5\xa0Go", "1.5\xa0GB"),
    (2_340_000_000_000, "2,3\xa0To", "2.3\xa0TB"),
])
def test_sizes_are_decimal_units_with_a_french_comma(size, french, english):
    from backoffice.sizes import format_size

    assert format_size(size, "fr") == french and format_size(size, "en") == english


def test_the_certificate_carries_the_practice_a_signature_block_and_paris_times(app, practice):
    """pdftotext of the certificate. Bad input tried: times printed in UTC (09:00 instead of 10:00)."""
    pdftotext = require_tool("pdftotext")
    from backoffice.retention import batches, purge, sweep
    from backoffice.retention.certificate import certificates_dir, render_certificate
    from backoffice.retention.models import PurgeBatch

    app.config.update(PRACTICE_NAME="Cabinet de radiologie du Parc", PRACTICE_ADDRESS="3 rue des Lilas, 75011 Paris",
                      PRACTICE_SIRET="12345678900017", PRACTICE_FINESS="750000001", PRACTICE_RPPS="10001234567")
    with app.app_context():
        sweep.sweep(practice, today=TODAY)
        with practice.new_session(write=True) as s:
            batches.decide_batch(s, practice, 1, approve=True, reason="vérifié", actor="gerante", today=TODAY)
            batch = s.get(PurgeBatch, 1)
            batch.proposed_at = datetime(2026, 11, 28, 9, 0, tzinfo=timezone.utc)  # 10:00 in Paris (winter)
            batch.decided_at = datetime(2026, 11, 28, 23, 30, tzinfo=timezone.utc)  # 00:30 the 29th in Paris
            s.commit()
        purge.run_purge(practice, 1, certificates=certificates_dir(), render=render_certificate, actor="associe",
                        today=TODAY)
        with practice.new_session() as s:
            path = certificates_dir() / s.get(PurgeBatch, 1).certificate_name
    text = subprocess.run([pdftotext, "-layout", str(path), "-"], capture_output=True, text=True, check=True).stdout
    flat = " ".join(text.split())
    assert "Cabinet de radiologie du Parc" in flat and "SIRET : 12345678900017" in flat and "75011 Paris" in flat
    assert "Proposé par le balayage automatique le 28/11/2026 à 10:00" in flat
    assert "Décidé par gerante le 29/11/2026 à 00:30" in flat
    assert "UTC" not in flat and "heure de Paris" in flat
    assert flat.count("Signature :") == 2 and "Approuvé par gerante" in flat and "Exécuté par associe" in flat
    assert re.search(r"2 images détruites \(\d+(,\d)? ko\)", flat.replace("\xa0", " ").replace("\u202f", " "))
