"""The manager's money pages in Debian's Chromium: a mutuelle typed in percent, edited and retired; a
tariff's exam group chosen from the list; a future tariff corrected then withdrawn. Screenshots in
``tests/browser/artifacts/manager-money/`` (ignored by git; ``BROWSER_ARTIFACTS`` moves them)."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.browser.conftest import add_user, sign_in

pytestmark = pytest.mark.browser

ARTIFACTS = Path(os.environ.get("BROWSER_ARTIFACTS", Path(__file__).parent / "artifacts")) / "manager-money"


def test_the_manager_sets_rates_in_percent_and_corrects_a_future_tariff(app, live_server, chromium):
    from playwright.sync_api import expect

    # The practice's "today" (the app's clock), so "future" does not depend on the real date.
    app.config["CLOCK"] = lambda: datetime(2026, 6, 15, 10, 0, tzinfo=timezone.utc)
    add_user(app, "gerante", "manager")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    page = chromium.new_page(locale="fr-FR", viewport={"width": 1366, "height": 768})
    page.set_default_timeout(20_000)
    sign_in(page, live_server, "gerante")

    # A mutuelle typed "33,5 %" (once mistyped "150 %": refused in French, nothing recorded).
    page.goto(f"{live_server}/billing/insurers")
    form = page.locator("#new-insurer")
    form.locator("input[name=name]").fill("Harmonie Santé")
    form.locator("input[name=amc_number]").fill("27182818")
    form.locator("input[name=coverage]").fill("150 %")
    form.locator("button[type=submit]").click()
    expect(page.locator("p.error")).to_have_text("Taux impossible : une mutuelle prend en charge entre 0 et 100 %.")
    expect(page.locator("table.insurers")).to_contain_text("Aucune mutuelle enregistrée.")
    form.locator("input[name=name]").fill("Harmonie Santé")
    form.locator("input[name=amc_number]").fill("27182818")
    form.locator("input[name=coverage]").fill("33,5 %")
    form.locator("input[name=third_party]").check()
    form.locator("button[type=submit]").click()
    expect(page.locator("table.insurers td.coverage")).to_have_text("33,5\u00a0%")
    page.screenshot(path=ARTIFACTS / "01-mutuelles.png", full_page=True)

    # Edited to 50 %, then retired.
    page.click("a:has-text('Modifier ou retirer')")
    expect(page.locator("#edit-insurer input[name=coverage]")).to_have_value("33,5")
    page.fill("#edit-insurer input[name=coverage]", "50")
    page.screenshot(path=ARTIFACTS / "02-mutuelle-modifier.png", full_page=True)
    page.click("#edit-insurer button[type=submit]")
    expect(page.locator("p.info")).to_contain_text("les factures déjà émises gardent leur répartition")
    expect(page.locator("table.insurers td.coverage")).to_have_text("50\u00a0%")
    page.click("a:has-text('Modifier ou retirer')")
    page.click("#retire-insurer")
    expect(page.locator("table.insurers tr.retired")).to_contain_text("retirée le ")  # stamped when it happened

    # A tariff from 1 July: the group is chosen from a list; then corrected, then withdrawn.
    page.goto(f"{live_server}/billing/tariffs")
    new = page.locator("#new-tariff")
    new.locator("select[name=exam_group]").select_option(label="IRM")
    new.locator("input[name=fee]").fill("6,00")
    new.locator("input[name=effective_from]").fill("2026-07-01")
    new.locator("button[type=submit]").click()
    expect(page.locator("p.info")).to_have_text("Tarif enregistré.")
    row = page.locator("table.tariffs tr.future")
    expect(row).to_contain_text("6,00")
    expect(row).to_contain_text("à venir")
    row.locator("summary").click()
    row.locator("form.correct-tariff input[name=fee]").fill("5,80")
    page.screenshot(path=ARTIFACTS / "03-tarif-a-venir.png", full_page=True)
    row.locator("form.correct-tariff button[type=submit]").click()
    expect(page.locator("p.info")).to_have_text("Tarif à venir corrigé.")
    expect(page.locator("table.tariffs tr.future")).to_contain_text("5,80")
    # The tariff in effect has no correction form at all.
    expect(page.locator("table.tariffs tr:not(.future) details")).to_have_count(0)
    row = page.locator("table.tariffs tr.future")
    row.locator("summary").click()
    row.locator("form.withdraw-tariff button[type=submit]").click()
    expect(page.locator("p.info")).to_contain_text("Tarif à venir retiré")
    expect(page.locator("table.tariffs tr.future")).to_have_count(0)
    page.screenshot(path=ARTIFACTS / "04-tarifs.png", full_page=True)
    assert len(list(ARTIFACTS.glob("*.png"))) == 4
