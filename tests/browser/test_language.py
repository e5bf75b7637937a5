"""In a real browser: an English-speaking Chromium gets English, the header selector switches and sticks."""

from __future__ import annotations

import os
import threading

import pytest

from tests.helpers import IN_CI

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.fixture
def live_server(app):
    from werkzeug.serving import make_server

    from backoffice.auth.services import create_user

    with app.extensions["archivage"].new_session(write=True) as s:
        create_user(s, "accueil", role="front_desk", password="correct horse battery")
        s.commit()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def page():
    if not os.path.exists(CHROMIUM):
        if IN_CI:
            pytest.fail("chromium is required in CI")
        pytest.skip("chromium not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(locale="en-US")
        context.set_default_timeout(15000)
        yield context.new_page()
        browser.close()


def test_header_selector_switches_the_language_and_it_sticks(live_server, page):
    page.goto(live_server + "/login")
    assert page.locator("h1").inner_text() == "Sign in"  # Accept-Language: en-US
    page.select_option("form.language select", "fr")
    page.click("form.language input[type=submit]")
    page.wait_for_url(live_server + "/login")
    assert page.locator("h1").inner_text() == "Connexion"
    page.fill("input[name=login]", "accueil")
    page.fill("input[name=password]", "correct horse battery")
    page.click("main button[type=submit]")
    page.wait_for_url(live_server + "/")
    assert page.locator("h1").inner_text() == "Bonjour accueil"
    page.goto(live_server + "/billing/")
    assert "Examens du" in page.locator("h1").inner_text()
    page.select_option("form.language select", "en")
    page.click("form.language input[type=submit]")
    page.wait_for_url(live_server + "/billing/")
    assert "Exams of" in page.locator("h1").inner_text()
    assert page.locator("html").get_attribute("lang") == "en"
