"""In Debian's Chromium, the radiologist's whole day: the day's worklist, priors, a report typed and signed,
the paper reproduction, a share link opened by the referring doctor on two devices; and 300-character names
on every main page. Screenshots go to tests/browser/artifacts/ (ignored by git) to be looked at."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.browser.conftest import add_user, sign_in
from tests.helpers import require_tool
from tests.radiology_support import ct_slice, make_history, store

pytestmark = pytest.mark.browser

ARTIFACTS = Path(os.environ.get("BROWSER_ARTIFACTS", Path(__file__).parent / "artifacts"))
DAY = "2026-03-02"  # the worklist's day is chosen, never today's date
FINDINGS = "Nodule apical droit de 6 mm, stable par rapport à 2023."


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def no_horizontal_overflow(page) -> bool:
    return page.evaluate("() => document.documentElement.scrollWidth <= document.documentElement.clientWidth")


@pytest.fixture
def day(app, live_server):
    facade = app.extensions["archivage"]
    history = make_history(facade.archive, slices=3)
    today_uid = generate_uid()
    series = generate_uid()
    store(facade.archive, [ct_slice(today_uid, series, n, study_date=DAY.replace("-", ""), BodyPartExamined="CHEST",
                                    StudyDescription="TDM THORAX CONTROLE", SeriesNumber=1, AccessionNumber="A2026",
                                    patient_id=history.patient_id, patient_name="Martin^Élise", charset="ISO_IR 192")
                           for n in range(1, 4)])
    add_user(app, "dr_rad", "radiologist")
    from backoffice.auth.services import set_identity

    with facade.new_session(write=True) as s:
        set_identity(s, "dr_rad", full_name="Claire Dubois", rpps="10001234567")
        s.commit()
    return live_server, history, today_uid


def test_the_radiologists_day(day, chromium, tmp_path):
    base, history, study_uid = day
    context = chromium.new_context(locale="fr-FR", viewport={"width": 1366, "height": 768})
    context.set_default_timeout(15000)
    page = context.new_page()
    refused = []
    page.on("console", lambda message: "Content Security Policy" in message.text and refused.append(message.text))
    sign_in(page, base, "dr_rad")

    # The worklist of the day: that day's study, not the older ones.
    page.goto(f"{base}/radiology/?date_from={DAY}&date_to={DAY}")
    rows = page.locator(f"a[href='/radiology/studies/{study_uid}']")
    assert rows.count() == 1 and page.locator(f"a[href='/radiology/studies/{history.current}']").count() == 0
    shot(page, "radiologist-01-worklist")
    rows.click()

    # Priors of the same patient, relevant ones marked.
    assert page.locator("table.priors tr").count() == 4
    assert page.locator("table.priors tr.relevant").count() >= 2
    shot(page, "radiologist-02-study-priors")

    # The report, saved as typed (no button pressed), then signed.
    page.fill("textarea[name=findings]", FINDINGS)
    page.fill("textarea[name=conclusion]", "Contrôle dans 3 mois.")
    page.wait_for_function("() => /Brouillon enregistré à/.test(document.querySelector('.autosave-status').textContent)")
    page.reload()
    assert page.input_value("textarea[name=findings]") == FINDINGS  # on the server, not only in the page
    page.click("#sign")
    signed = page.locator(".signed-report").inner_text()
    assert FINDINGS in signed and "Claire Dubois" in signed and "10001234567" in signed
    shot(page, "radiologist-03-signed-report")

    # The paper reproduction (PDF): the signed report with the patient's name.
    pdf = page.request.get(f"{base}/radiology/studies/{study_uid}/reproduction.pdf?per_page=4")
    assert pdf.ok and pdf.headers["content-type"] == "application/pdf"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "radiologist-04-reproduction.pdf").write_bytes(pdf.body())
    text = subprocess.run([require_tool("pdftotext"), "-", "-"], input=pdf.body(), capture_output=True, check=True,
                          timeout=60).stdout.decode()
    assert "Nodule apical droit" in text and "MARTIN" in text.upper()

    # The viewer (being replaced in parallel): it loads.
    response = page.goto(f"{base}/radiology/studies/{study_uid}/viewer")
    assert response.ok and "MARTIN" in page.content()
    page.goto(f"{base}/radiology/studies/{study_uid}")

    # A share link for the referring doctor.
    page.fill("input[name=recipient]", "Dr Lefèvre")
    page.click("form[action$='/share'] button[type=submit]")
    url = page.locator(".new-share code").inner_text()
    code = page.locator(".share-code").inner_text()
    assert re.fullmatch(r"\d{6}", code)
    for device in ("doctor-desktop", "doctor-phone"):  # the same code on the doctor's second device
        other = chromium.new_context(locale="fr-FR", viewport={"width": 1366, "height": 768}
                                     if device.endswith("desktop") else {"width": 390, "height": 844})
        other.set_default_timeout(15000)
        doctor = other.new_page()
        doctor.goto(url)
        doctor.fill("input[name=code]", code)
        doctor.click("button[type=submit]")
        assert "MARTIN" in doctor.locator("h1.shared-patient").inner_text().upper()
        assert FINDINGS in doctor.locator(".signed-report").inner_text()
        doctor.wait_for_function("() => Array.from(document.querySelectorAll('.shared-images img'))"
                                 ".every(i => i.complete && i.naturalWidth > 0)")
        assert no_horizontal_overflow(doctor)
        shot(doctor, f"radiologist-05-share-{device}")
        other.close()
    assert refused == []
    context.close()


LONG = "Lefèvre-Dupont" * 21 + "X" * 6  # 300 characters, no space to break at


@pytest.mark.filterwarnings("ignore:The PN component length:UserWarning")  # too long on purpose
@pytest.mark.filterwarnings("ignore:The value length:UserWarning")
def test_a_300_character_name_never_widens_the_main_pages(app, live_server, chromium):
    """Bad input: a 300-character family name without a space, as a modality may send it."""
    assert len(LONG) == 300
    facade = app.extensions["archivage"]
    history = make_history(facade.archive, slices=1, patient_id="LONG-1")
    uid, series = generate_uid(), generate_uid()
    store(facade.archive, [ct_slice(uid, series, 1, study_date="20260302", patient_id="LONG-1",
                                    patient_name=f"{LONG}^Élise", StudyDescription="TDM " + "THORAX" * 40)])
    from backoffice.billing import services as S

    with facade.new_session(write=True) as s:
        S.create_exam_group(s, patient_id="LONG-1", visit_date=S.paris_today(), exam_group="radiologie",
                            created_by="t", patient_name=f"{LONG}^Élise")
        s.commit()
    add_user(app, "long_rad", "radiologist")
    add_user(app, "long_desk", "front_desk")
    add_user(app, "long_mgr", "manager")
    pages = {
        "long_rad": ["/radiology/?patient=LONG-1", f"/radiology/studies/{uid}", f"/radiology/studies/{history.current}",
                     "/patients/?q=LONG-1", "/patients/LONG-1"],
        "long_desk": ["/billing/", "/patients/LONG-1"],
        "long_mgr": ["/retention/patient?patient_id=LONG-1"],
    }
    overflowing = []
    for login, paths in pages.items():
        context = chromium.new_context(locale="fr-FR", viewport={"width": 1366, "height": 768})
        context.set_default_timeout(15000)
        page = context.new_page()
        sign_in(page, live_server, login)
        for path in paths:
            response = page.goto(live_server + path)
            assert response.ok, path
            if not path.startswith("/retention/"):  # the retention page's names are being added in parallel
                assert LONG[:40].upper() in page.content().upper(), path
            if not no_horizontal_overflow(page):
                overflowing.append(path)
            shot(page, "long-name-" + re.sub(r"\W+", "-", path).strip("-")[:60])
        context.close()
    assert overflowing == []
