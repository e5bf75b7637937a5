"""A front-desk user in Debian's Chromium: sign in, record consent, issue, take a card payment, get the receipt."""

from __future__ import annotations

import subprocess

import pytest

from tests.browser.conftest import add_user, sign_in
from tests.helpers import require_tool

pytestmark = pytest.mark.browser


def test_front_desk_bills_and_prints_a_receipt(app, live_server, chromium, tmp_path):
    add_user(app, "accueil", "front_desk")
    pdftotext = require_tool("pdftotext")
    from playwright.sync_api import expect

    # French browsers, as at the practice (the pages follow Accept-Language).
    page = chromium.new_page(accept_downloads=True, locale="fr-FR")
    page.set_default_timeout(20_000)
    sign_in(page, live_server, "accueil")
    page.goto(f"{live_server}/billing/checkin")
    page.fill("input[name=patient_id]", "PAT-BROWSER")
    page.fill("input[name=patient_name]", "LEFÈVRE Anne")
    page.select_option("select[name=exam_group]", "echographie")
    page.click("#checkin-submit")
    expect(page.locator("#state")).to_have_text("à demander")
    page.click("#consent-accept")
    expect(page.locator("#state")).to_have_text("accepté")
    page.click("#issue-invoice")
    expect(page.locator("#invoice-number")).to_have_text(__import__("re").compile(r"\d{4}-000001"))
    expect(page.locator("#balance")).to_contain_text("4,00")
    page.select_option("#method", "card")
    page.click("#pay")
    expect(page.locator("#status")).to_have_text("payée")
    with page.expect_download() as download_info:
        page.click("#receipt-link")
    path = tmp_path / "recu.pdf"
    download_info.value.save_as(path)
    output = subprocess.run([pdftotext, str(path), "-"], capture_output=True, check=True).stdout.decode()
    text = " ".join(output.split())
    assert "Reçu de paiement" in text and "carte bancaire" in text and "LEFÈVRE Anne" in text
