"""In Debian's Chromium: a radiologist opens a study, sees its priors, compares side by side, prints."""

from __future__ import annotations

import threading

import pytest

from tests.helpers import IN_CI, free_port
from tests.radiology_support import make_history

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.fixture
def live(app):
    import os

    from werkzeug.serving import make_server

    from backoffice.auth.services import create_user

    if not os.path.exists(CHROMIUM):
        if IN_CI:
            pytest.fail("chromium is required in CI")
        pytest.skip("chromium not installed")
    facade = app.extensions["archivage"]
    history = make_history(facade.archive, slices=5)
    with facade.new_session(write=True) as s:
        create_user(s, "dr_rad", role="radiologist", password="correct horse battery")
        s.commit()
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", history
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        # French browsers, as at the practice (the pages follow Accept-Language).
        context = browser.new_context(locale="fr-FR")
        context.set_default_timeout(15000)
        yield context.new_page()
        context.close()
        browser.close()


def _images_loaded(page, count):
    page.wait_for_function(
        "Array.from(document.querySelectorAll('img.frame'))"
        f".filter(i => i.complete && i.naturalWidth > 0).length >= {count}")


def test_radiologist_reads_compares_and_prints(live, page):
    base, history = live
    page.goto(base + "/login")
    page.fill("input[name=login]", "dr_rad")
    page.fill("input[name=password]", "correct horse battery")
    page.click("button[type=submit]")
    page.goto(base + "/radiology/?patient=martin")
    page.click(f"a[href='/radiology/studies/{history.current}']")

    # the priors, relevant ones marked
    priors = page.locator("table.priors tr")
    assert priors.count() == 3
    assert page.locator("table.priors tr.relevant").count() == 2

    # side by side with the CT prior
    page.click(f"a.compare[href*='compare={history.prior_ct_chest}']")
    assert page.locator("section.pane").count() == 2
    _images_loaded(page, 2)
    current = page.locator("section.pane[data-pane=current]")
    assert current.locator(".pos").inner_text() == "1 / 5"
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    assert current.locator(".pos").inner_text() == "3 / 5"
    _images_loaded(page, 2)
    first_src = current.locator("img.frame").get_attribute("src")
    page.keyboard.press("1")  # first preset
    page.wait_for_function("document.querySelector('section.pane.active img.frame').src.includes('wc=')")
    assert current.locator("img.frame").get_attribute("src") != first_src
    # the prior pane scrolls on its own
    page.keyboard.press("ArrowRight")
    assert page.locator("section.pane[data-pane=prior]").get_attribute("class").endswith("active")
    page.keyboard.press("ArrowLeft")
    current.locator("button.key").click()
    page.wait_for_function("document.querySelector('.key-status').textContent.includes('choisie')")

    # print: the reproduction carries the chosen image
    page.goto(base + f"/radiology/studies/{history.current}")
    assert "Images choisies : 1" in page.content()
    response = page.request.get(base + f"/radiology/studies/{history.current}/reproduction.pdf?per_page=1")
    assert response.ok and response.headers["content-type"] == "application/pdf"
    assert response.body().startswith(b"%PDF")
