"""In Debian's Chromium: a radiologist opens a study, sees its priors, compares side by side, prints."""

from __future__ import annotations

import pytest

from tests.browser.conftest import add_user, sign_in
from tests.radiology_support import make_history

pytestmark = pytest.mark.browser


@pytest.fixture
def live(app, live_server):
    history = make_history(app.extensions["archivage"].archive, slices=5)
    add_user(app, "dr_rad", "radiologist")
    return live_server, history


@pytest.fixture
def page(chromium):
    # French browsers, as at the practice (the pages follow Accept-Language).
    context = chromium.new_context(locale="fr-FR")
    context.set_default_timeout(15000)
    yield context.new_page()
    context.close()


def _images_shown(page, count):
    # Functions, not expressions: the pages' CSP has no 'unsafe-eval', which a string expression needs.
    page.wait_for_function(
        "(count) => document.querySelectorAll('section.pane[data-state=ready][data-rendered]').length >= count",
        arg=count)


def test_radiologist_reads_compares_and_prints(live, page):
    base, history = live
    # Every inline script and style of these pages must run under the Content-Security-Policy.
    refused = []
    page.on("console", lambda message: "Content Security Policy" in message.text and refused.append(message.text))
    sign_in(page, base, "dr_rad")
    page.goto(base + "/radiology/?patient=martin")
    page.click(f"a[href='/radiology/studies/{history.current}']")

    # the priors, relevant ones marked
    priors = page.locator("table.priors tr")
    assert priors.count() == 3
    assert page.locator("table.priors tr.relevant").count() == 2

    # side by side with the CT prior
    page.click(f"a.compare[href*='compare={history.prior_ct_chest}']")
    assert page.locator("section.pane").count() == 2
    _images_shown(page, 2)
    current = page.locator("section.pane[data-pane=current]")
    assert current.locator(".pos").inner_text() == "1 / 5"
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    page.wait_for_function(
        "() => document.querySelector('section.pane[data-pane=current] .pos').textContent === '3 / 5'")
    page.keyboard.press("1")  # first preset: lung, -600/1500
    page.wait_for_function("() => document.querySelector('section.pane.active').dataset.ww === '1500'")
    assert current.get_attribute("data-wc") == "-600"
    page.keyboard.press("ArrowRight")
    assert "active" in page.locator("section.pane[data-pane=prior]").get_attribute("class").split()
    page.keyboard.press("ArrowLeft")
    page.click("[data-action=key]")  # the image shown, at the window shown, through the key-image API
    page.wait_for_function("() => document.querySelector('.key-status').textContent.includes('choisie')")

    # print: the reproduction carries the chosen image
    page.goto(base + f"/radiology/studies/{history.current}")
    assert "Images choisies : 1" in page.content()
    response = page.request.get(base + f"/radiology/studies/{history.current}/reproduction.pdf?per_page=1")
    assert response.ok and response.headers["content-type"] == "application/pdf"
    assert response.body().startswith(b"%PDF")
    assert refused == []
