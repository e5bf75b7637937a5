"""A manager signs in with a real browser, approves a proposed purge batch, executes it, gets the certificate."""

from __future__ import annotations

import threading
from datetime import date

import pytest

from tests.helpers import IN_CI
from tests.retention_support import add_study, instance_files

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.fixture
def live_server(app):
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def browser():
    import os

    if not os.path.exists(CHROMIUM):
        if IN_CI:
            pytest.fail("chromium is required in CI")
        pytest.skip("chromium not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def test_manager_approves_and_executes_a_batch(app, live_server, browser, tmp_path):
    from backoffice.auth.services import create_user
    from backoffice.scheduler import retention_sweep_job

    facade = app.extensions["archivage"]
    old = add_study(facade.archive, tmp_path, "OLD", "20000105")
    with facade.new_session(write=True) as s:
        create_user(s, "gerante", role="manager", password="correct horse battery")
        s.commit()
    with app.app_context():
        retention_sweep_job(today=date(2026, 11, 28))

    # French browsers, as at the practice (the pages follow Accept-Language).
    page = browser.new_page(locale="fr-FR")
    page.set_default_timeout(15000)
    page.goto(f"{live_server}/login")
    page.fill("input[name=login]", "gerante")
    page.fill("input[name=password]", "correct horse battery")
    page.click("button[type=submit]")
    page.goto(f"{live_server}/retention/")
    page.click("text=n° 1")
    assert "à approuver" in page.inner_text("#batch-status")
    page.fill("textarea[name=reason]", "échéance légale dépassée, dossier vérifié")
    page.click("text=Approuver la destruction")
    assert "approuvé" in page.inner_text("#batch-status")
    assert len(instance_files(facade.archive, old)) == 2  # approved is not yet destroyed
    page.click("text=Exécuter la destruction")
    assert "exécuté" in page.inner_text("#batch-status")
    assert instance_files(facade.archive, old) == []
    href = page.get_attribute("text=Certificat de destruction (PDF)", "href")
    pdf = page.request.get(f"{live_server}{href}")  # with the browser's session cookie
    assert pdf.ok and pdf.headers["content-type"] == "application/pdf" and pdf.body().startswith(b"%PDF")
    page.close()
