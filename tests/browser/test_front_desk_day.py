"""The front desk's whole day in Debian's Chromium (issue 11, Tests): find a patient with and without
accents, check in, record the mutuelle at the desk, see the split, issue, take the payment, print the
receipt, refund after a credit note, and close the day. Screenshots of each step are kept in
``tests/browser/artifacts/front-desk-day/`` (ignored by git; ``BROWSER_ARTIFACTS`` moves them) to be looked at."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from backoffice.billing import services as S
from tests.browser.conftest import add_user, sign_in
from tests.helpers import make_ct, require_tool

pytestmark = pytest.mark.browser

ARTIFACTS = Path(os.environ.get("BROWSER_ARTIFACTS", Path(__file__).parent / "artifacts")) / "front-desk-day"


def _seed(app, tmp_path):
    """An earlier study of Mme Dupré in the archive (so search finds her), and the practice's mutuelle."""
    from archive_core.maintenance import import_path

    folder = tmp_path / "incoming"
    folder.mkdir()
    make_ct(patient_id="PAT-DUPRE", patient_name="DUPRÉ^Anne-Sophie", charset="ISO_IR 100",
            study_date="20250310", modality="US").save_as(folder / "1.dcm", enforce_file_format=True)
    make_ct(patient_id="PAT-MARTIN", patient_name="MARTIN^Lucas", study_date="20250311",
            AccessionNumber="ACC2").save_as(folder / "2.dcm", enforce_file_format=True)
    import_path(app.extensions["archivage"].archive, folder)
    with app.extensions["archivage"].new_session(write=True) as s:
        S.create_insurer(s, name="Mutuelle des Pins", amc_number="31415926", coverage_bp=5000)
        S.create_insurer(s, name="Harmonie Santé", amc_number="27182818", coverage_bp=3350,
                         third_party_payment=True)
        s.commit()


def test_a_day_at_the_front_desk(app, live_server, chromium, tmp_path):
    pdftotext = require_tool("pdftotext")
    from playwright.sync_api import expect

    add_user(app, "accueil", "front_desk")
    _seed(app, tmp_path)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    context = chromium.new_context(accept_downloads=True, locale="fr-FR", viewport={"width": 1366, "height": 768})
    page = context.new_page()
    page.set_default_timeout(20_000)
    shots = iter(range(1, 100))

    def shot(name: str) -> None:
        page.screenshot(path=ARTIFACTS / f"{next(shots):02d}-{name}.png", full_page=True)

    sign_in(page, live_server, "accueil")

    # 1. Find the patient, typed as people type: without accents, in capitals, with the accent.
    for typed in ("dupre", "DUPRE anne", "Dupré"):
        page.goto(f"{live_server}/patients/?q={typed}")
        expect(page.locator("table.patients-found tbody tr").first).to_contain_text("PAT-DUPRE")
    shot("recherche-avec-accent")
    page.goto(f"{live_server}/patients/?q=lucas martin")
    expect(page.locator("table.patients-found")).to_contain_text("PAT-MARTIN")
    expect(page.locator("table.patients-found")).not_to_contain_text("PAT-DUPRE")

    # 2. Check-in: look the patient up, choose her, create today's échographie.
    page.goto(f"{live_server}/billing/checkin?q=dupre")
    page.click("table.patients-found a:has-text('Choisir')")
    expect(page.locator("input[name=patient_id]")).to_have_value("PAT-DUPRE")
    page.select_option("select[name=exam_group]", "echographie")
    shot("accueil-patient")
    page.click("#checkin-submit")
    expect(page.locator("#state")).to_have_text("à demander")
    group_url = page.url
    expect(page.locator("#preview-collect")).to_contain_text("4,00")  # no mutuelle yet: all for the patient
    shot("groupe-sans-mutuelle")

    # 3. The mutuelle at the desk, from the patient page (the desk, not the manager).
    page.click("a:has-text('Ajouter une mutuelle')")
    expect(page.locator("#add-membership")).to_be_visible()
    page.select_option("#membership-insurer", label="Mutuelle des Pins — 50 %")
    page.fill("#membership-number", "MP-778899")
    page.click("#membership-submit")
    expect(page.locator("p.info")).to_contain_text("Mutuelle « Mutuelle des Pins » enregistrée pour ce patient.")
    row = page.locator("table.memberships tr.current")
    expect(row).to_contain_text("Mutuelle des Pins")
    expect(row).to_contain_text("50 %")
    expect(row).to_contain_text("MP-778899")
    shot("dossier-patient-mutuelle")

    # 4. The split, before the invoice: 50 % of 4,00 € without tiers payant.
    page.goto(group_url)
    expect(page.locator("#preview-insurer")).to_contain_text("2,00")
    expect(page.locator("#preview-patient")).to_contain_text("2,00")
    expect(page.locator("#preview-collect")).to_contain_text("4,00")
    expect(page.locator("p.split-note")).to_contain_text("rembourser environ 2,00")
    page.click("#consent-accept")
    expect(page.locator("#state")).to_have_text("accepté")
    shot("repartition-avant-facture")

    # 5. Issue, pay by card, print the receipt.
    page.click("#issue-invoice")
    expect(page.locator("#invoice-number")).to_have_text(re.compile(r"\d{4}-000001"))
    expect(page.locator("#balance")).to_contain_text("4,00")
    expect(page.locator("#no-third-party")).to_contain_text("Mutuelle des Pins")
    page.select_option("#method", "card")
    page.click("#pay")
    expect(page.locator("#status")).to_have_text("payée")
    shot("facture-payee")
    with page.expect_download() as download_info:
        page.click("#receipt-link")
    receipt = tmp_path / "recu.pdf"
    download_info.value.save_as(receipt)
    text = " ".join(subprocess.run([pdftotext, str(receipt), "-"], capture_output=True,
                                   check=True).stdout.decode().split())
    assert "Reçu de paiement" in text and "carte bancaire" in text and "DUPRÉ Anne-Sophie" in text

    # 6. The wrong exam was billed: a credit note for all of it, then the patient is refunded by card.
    page.fill("#credit-form input[name=reason]", "Erreur de groupe d'examens")
    page.click("#credit-form button[type=submit]")
    expect(page.locator("#refund-due")).to_contain_text("4,00")
    page.select_option("#refund-form select[name=method]", "card")
    page.click("#refund")
    expect(page.locator("p.info")).to_contain_text("Remboursement de 4,00")
    expect(page.locator("#status")).to_have_text("annulée par avoir")
    expect(page.locator("#no-third-party")).to_have_count(0)  # nothing left to claim from the mutuelle
    expect(page.locator("#credit-notes")).to_contain_text("AV-")
    shot("avoir-et-remboursement")

    # 7. The day's closing: the drawer holds no cash and no cheque; card +4,00 and -4,00.
    page.goto(f"{live_server}/billing/closing")
    page.fill("#counted-cash", "0,00")
    page.fill("#counted-cheque", "0,00")
    shot("cloture-avant")
    page.click("#close-day button[type=submit]")
    expect(page.locator("p.info")).to_contain_text(re.compile(r"Journée du \d{1,2} \S+ \d{4} clôturée\."))
    expect(page.locator("#differences")).to_contain_text("écart 0,00")
    expect(page.locator("#z-report")).to_be_visible()
    shot("cloture-signee")

    # Nothing on the desk's pages was in English or a code.
    for url in (group_url, f"{live_server}/patients/PAT-DUPRE", f"{live_server}/billing/closing"):
        page.goto(url)
        body = page.locator("main").inner_text()
        for leaked in ("Forbidden", "coverage_bp", "basis points", "front_desk", "patient_id is required"):
            assert leaked not in body, (url, leaked)
    context.close()
    assert len(list(ARTIFACTS.glob("*.png"))) == 9
