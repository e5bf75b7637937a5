"""A front-desk user in Debian's Chromium: sign in, record consent, issue, take a card payment, get the receipt."""

from __future__ import annotations

import subprocess
import threading

import pytest

from tests.helpers import free_port, require_tool

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.fixture
def live_server(app):
    from waitress.server import create_server

    from backoffice.auth.services import create_user

    with app.extensions["archivage"].new_session(write=True) as s:
        create_user(s, "accueil", role="front_desk", password="correct horse battery")
        s.commit()
    port = free_port()
    server = create_server(app, host="127.0.0.1", port=port, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.close()
    thread.join(timeout=10)


def test_front_desk_bills_and_prints_a_receipt(live_server, tmp_path):
    chromium = require_tool("chromium")
    pdftotext = require_tool("pdftotext")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            # French browsers, as at the practice (the pages follow Accept-Language).
            page = browser.new_page(accept_downloads=True, locale="fr-FR")
            page.set_default_timeout(20_000)
            page.goto(f"{live_server}/login")
            page.fill("input[name=login]", "accueil")
            page.fill("input[name=password]", "correct horse battery")
            page.click("button[type=submit]")
            page.goto(f"{live_server}/billing/checkin")
            page.fill("input[name=patient_id]", "PAT-BROWSER")
            page.fill("input[name=patient_name]", "Lefèvre^Anne")
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
        finally:
            browser.close()
    output = subprocess.run([pdftotext, str(path), "-"], capture_output=True, check=True).stdout.decode()
    text = " ".join(output.split())
    assert "Reçu de paiement" in text and "carte bancaire" in text and "LEFÈVRE Anne" in text
