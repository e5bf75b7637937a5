"""The manager's day in Debian's Chromium: the dashboard, a due list, the sweep's preview and run, and an
approval by a second manager. Screenshots are kept in tests/browser/artifacts/manager_day/ (git-ignored; BROWSER_ARTIFACTS moves them).

Today is the app's clock (28/11/2026, Paris); the billing rows are written at set instants.
"""

from __future__ import annotations

import os
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from tests.browser.conftest import add_user, sign_in
from tests.retention_support import add_study

pytestmark = pytest.mark.browser

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=timezone.utc)
ARTEFACTS = Path(os.environ.get("BROWSER_ARTIFACTS", Path(__file__).parent / "artifacts")) / "manager_day"


def shot(page, name: str) -> None:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=True)


@pytest.fixture
def practice(app, facade, tmp_path, monkeypatch):
    from backoffice.billing import base as billing_base, services as S

    app.config["CLOCK"] = lambda: NOW
    add_study(facade.archive, tmp_path, "OLD", "20000105", patient_name="Lefèvre^Anne")  # past its date
    add_study(facade.archive, tmp_path, "SOON", "20061210", patient_name="Dupré^Jean-François")  # 10/12/2026
    add_study(facade.archive, tmp_path, "NEW", "20261123", modality="MR", patient_name="Martin^Lucas")
    clock = {"now": NOW}
    monkeypatch.setattr(billing_base, "utcnow", lambda: clock["now"])
    with facade.new_session(write=True) as s:
        mutuelle = S.create_insurer(s, name="Mutuelle du Parc", amc_number="999", coverage_bp=5000,
                                    third_party_payment=True)
        S.add_membership(s, patient_id="B2", insurer_id=mutuelle.id, member_number="M", valid_from=date(2020, 1, 1))
        for n, (at, group, consent, pay) in enumerate([
            (datetime(2026, 9, 15, 9, tzinfo=timezone.utc), "radiologie", True, True),
            (datetime(2026, 10, 20, 9, tzinfo=timezone.utc), "echographie", True, False),
            (datetime(2026, 11, 3, 9, tzinfo=timezone.utc), "scanner", True, True),
            (datetime(2026, 11, 4, 9, tzinfo=timezone.utc), "radiologie", False, False),
        ], start=1):
            clock["now"] = at
            g = S.create_exam_group(s, patient_id=f"B{n}", visit_date=at.date(), exam_group=group,
                                    created_by="accueil", patient_name=f"Patient^{n}")
            S.record_consent(s, g.id, accepted=consent, recorded_by="accueil")
            if consent:
                invoice = S.issue_invoice(s, g.id, issued_by="accueil")
                if pay:
                    S.record_payment(s, invoice.id, amount_cents=invoice.patient_cents, method="card",
                                     received_by="accueil")
        s.commit()
    clock["now"] = NOW
    add_user(app, "gerante", "manager")
    add_user(app, "associe", "manager")


def test_the_managers_day(app, live_server, chromium, practice):
    from playwright.sync_api import expect

    page = chromium.new_context(locale="fr-FR", viewport={"width": 1366, "height": 768}).new_page()
    page.set_default_timeout(15000)
    refused = []
    page.on("console", lambda message: "Content Security Policy" in message.text and refused.append(message.text))
    sign_in(page, live_server, "gerante")

    page.click("text=Tableau de bord")
    expect(page.locator("h1")).to_have_text("Tableau de bord")
    for chart in ("money", "consent", "claims", "studies", "storage"):
        expect(page.locator(f'svg[data-chart="{chart}"]')).to_be_visible()
    money = page.locator('svg[data-chart="money"] rect[data-series="invoiced"][data-category="nov. 26"]')
    assert money.get_attribute("data-value") == "500"  # the scanner invoice of 3 November
    assert page.locator('svg[data-chart="claims"] rect[data-series]').get_attribute("data-value") == "200"
    shot(page, "01-dashboard")

    page.click("nav.retention-nav >> text=Conservation")
    page.click("#due-30")
    rows = page.locator("table.retention-patients tr[data-patient-id]")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("DUPRÉ Jean-François")
    expect(rows.first).to_contain_text("10/12/2026")
    shot(page, "02-due-in-30-days")

    page.click("nav.retention-nav >> text=Conservation")
    page.click("text=Lancer le balayage maintenant…")
    expect(page.locator("#to-propose tr[data-patient-id]")).to_have_count(1)
    expect(page.locator("#to-propose")).to_contain_text("LEFÈVRE Anne")
    shot(page, "03-sweep-preview")
    page.click("#run-sweep")
    expect(page.locator("#batch-status")).to_contain_text("à approuver")
    page.fill("textarea[name=reason]", "échéance dépassée, vérifié")
    page.click("text=Approuver la destruction")
    expect(page.locator("p.error")).to_contain_text("un autre responsable doit l'approuver")
    shot(page, "04-requester-cannot-approve")
    page.context.close()

    page = chromium.new_context(locale="fr-FR", viewport={"width": 1366, "height": 768}).new_page()
    page.set_default_timeout(15000)
    sign_in(page, live_server, "associe")
    page.goto(f"{live_server}/retention/batches/1")
    expect(page.locator("table.purge-items")).to_contain_text("LEFÈVRE Anne")
    page.fill("textarea[name=reason]", "dossier vérifié, aucune réclamation")
    page.click("text=Approuver la destruction")
    expect(page.locator("#batch-status")).to_contain_text("approuvé")
    shot(page, "05-approved-by-a-second-manager")

    page.goto(f"{live_server}/retention/audit")
    page.select_option("select[name=action]", label="destruction approuvée")
    page.click("text=Rechercher")
    expect(page.locator("table.audit tr[data-action]")).to_have_count(1)
    expect(page.locator("table.audit tr[data-action]")).to_contain_text("associe")
    shot(page, "06-audit-approval")
    assert refused == []
    page.context.close()
