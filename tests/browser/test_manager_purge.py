"""Two managers with real browsers: one approves the scheduler's batch, the other confirms by name and executes it."""

from __future__ import annotations

from datetime import date

import pytest

from tests.browser.conftest import add_user, sign_in
from tests.retention_support import add_study, instance_files

pytestmark = pytest.mark.browser

def test_manager_approves_and_executes_a_batch(app, live_server, chromium, tmp_path):
    from backoffice.scheduler import retention_sweep_job

    facade = app.extensions["archivage"]
    old = add_study(facade.archive, tmp_path, "OLD", "20000105")
    add_user(app, "gerante", "manager")
    add_user(app, "associe", "manager")
    with app.app_context():
        retention_sweep_job(today=date(2026, 11, 28))

    # French browsers, as at the practice (the pages follow Accept-Language).
    page = chromium.new_page(locale="fr-FR")
    page.set_default_timeout(15000)
    sign_in(page, live_server, "gerante")
    page.goto(f"{live_server}/retention/")
    page.click("text=n° 1")
    assert "à approuver" in page.inner_text("#batch-status")
    page.fill("textarea[name=reason]", "échéance légale dépassée, dossier vérifié")
    page.click("text=Approuver la destruction")
    assert "approuvé" in page.inner_text("#batch-status")
    assert len(instance_files(facade.archive, old)) == 2  # approved is not yet destroyed
    # The approver of the scheduler's batch may not execute it: a second person must.
    page.click("text=Exécuter la destruction…")
    assert "un autre responsable doit l'exécuter" in page.inner_text("body")
    page.close()

    page = chromium.new_page(locale="fr-FR")
    page.set_default_timeout(15000)
    sign_in(page, live_server, "associe")
    page.goto(f"{live_server}/retention/batches/1")
    page.click("text=Exécuter la destruction…")
    listed = page.inner_text("table.purge-items")
    assert "DUPONT Jean" in listed and "01/01/1970" in listed and "05/01/2000" in listed  # names, not IDs
    page.click("text=Détruire définitivement")  # without ticking the box: refused
    assert "cochez la confirmation" in page.inner_text("body")
    assert len(instance_files(facade.archive, old)) == 2
    page.click("text=Exécuter la destruction…")
    page.check("input[name=confirmed]")
    page.click("text=Détruire définitivement")
    assert "exécuté" in page.inner_text("#batch-status")
    assert instance_files(facade.archive, old) == []
    href = page.get_attribute("text=Certificat de destruction (PDF)", "href")
    pdf = page.request.get(f"{live_server}{href}")  # with the browser's session cookie
    assert pdf.ok and pdf.headers["content-type"] == "application/pdf" and pdf.body().startswith(b"%PDF")
    page.close()
