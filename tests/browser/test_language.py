"""In a real browser: an English-speaking Chromium gets English, the header selector switches and sticks."""

from __future__ import annotations

import pytest

from tests.browser.conftest import add_user

pytestmark = pytest.mark.browser

@pytest.fixture
def page(app, chromium):
    add_user(app, "accueil", "front_desk")
    context = chromium.new_context(locale="en-US")
    context.set_default_timeout(15000)
    yield context.new_page()
    context.close()


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
