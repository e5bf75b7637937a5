"""OHIF v3 itself (the pinned ``@ohif/app`` package, fetched by ``make ohif``), served under /ohif/ by a real
``flask web`` process with ``OHIF_DIR`` set, driven in Debian's Chromium: signed out it is not served; signed
in, its study list shows our study from QIDO-RS, the study opens and OHIF's viewport draws its pixels as the
archive renders them, and every DICOMweb request OHIF made is in the audit trail under the user's login.

One browser session for the whole path (OHIF on Chromium's software WebGL takes tens of seconds to start).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import time

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from tests.helpers import IN_CI, archive_server, associate_ct_modality, free_port, make_ct, require_tool
from tests.servers import web_process

pytestmark = pytest.mark.browser
ROWS = 64
PASSWORD = "correct horse battery"
DESCRIPTION = "TDM THORAX OHIF"


def _ohif_dist():
    """The unpacked package: a missing one fails in CI (``make test`` fetches it first), skips elsewhere."""
    from tools.fetch_ohif import DEST, is_complete

    if not is_complete(DEST):
        if IN_CI:
            pytest.fail(f"OHIF's built viewer is required in CI and {DEST} is not complete: run `make ohif`")
        pytest.skip("OHIF's built viewer not fetched (`make ohif`)")
    return DEST


def _series(study_uid: str, count: int) -> list:
    """Axial CT slices, each an asymmetric gradient (a flip or a transposition shows in the comparison)."""
    series_uid, frame_of_reference = generate_uid(), generate_uid()
    datasets = []
    for n in range(count):
        ds = make_ct(study_uid=study_uid, series_uid=series_uid, rows=ROWS, patient_id="PAT-OHIF",
                     patient_name="Lefevre^Anne", study_date="20240301", InstanceNumber=n + 1,
                     RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=476, WindowWidth=3000,
                     ImagePositionPatient=[-100, -100, n * 2.5], ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
                     PixelSpacing=[0.5, 0.5], SliceThickness=2.5, FrameOfReferenceUID=frame_of_reference,
                     StudyDescription=DESCRIPTION, SeriesDescription="Axial", BodyPartExamined="CHEST")
        i, j = np.mgrid[0:ROWS, 0:ROWS]
        ds.PixelData = (i * 40 + j * 15 + n * 10).astype(np.uint16).tobytes()
        datasets.append(ds)
    return datasets


@pytest.fixture
def ohif_web(tmp_path):
    """Four CT images stored by C-STORE into an archive, a radiologist, and ``flask web`` serving OHIF."""
    from archive_core.db import make_engine, session_factory
    from backoffice.auth.services import create_user

    dist = _ohif_dist()
    instance = tmp_path / "instance"
    instance.mkdir()
    study_uid = generate_uid()
    datasets = _series(study_uid, 4)
    with archive_server(instance) as (archive, running):
        assoc = associate_ct_modality(running.port)
        for ds in datasets:
            assert assoc.send_c_store(ds).Status == 0
        assoc.release()
        assert archive.ingestor.wait_indexed()
        database_url = archive.settings.database_url
    engine = make_engine(database_url)
    with session_factory(engine)() as s:
        create_user(s, "dr_ohif", role="radiologist", password=PASSWORD)
        s.commit()
    engine.dispose()
    env = {**os.environ, "ARCHIVAGE_INSTANCE_PATH": str(instance), "ARCHIVAGE_STORAGE_MIN_FREE_BYTES": "0",
           "ARCHIVAGE_OHIF_DIR": str(dist), "TCP_NODELAY": "1"}
    with web_process(env, tmp_path / "web.log", port=free_port()) as base:
        yield {"url": base, "study": study_uid, "datasets": datasets, "database_url": database_url,
               "log": tmp_path / "web.log"}


def _audit(database_url: str) -> list[tuple[str, str, str | None, dict]]:
    """(action, actor, study UID, detail) of every DICOMweb audit event, oldest first."""
    from sqlalchemy import select

    from archive_core.audit import AuditEvent
    from archive_core.db import make_engine, session_factory

    engine = make_engine(database_url)
    with session_factory(engine)() as s:
        events = s.execute(select(AuditEvent.action, AuditEvent.actor, AuditEvent.study_uid, AuditEvent.detail)
                           .where(AuditEvent.action.like("dicomweb.%")).order_by(AuditEvent.id)).all()
    engine.dispose()
    return [(e.action, e.actor, e.study_uid, json.loads(e.detail or "{}")) for e in events]


# Where OHIF's viewport shows its image: the canvas, the displayed image's rectangle on it (from
# Cornerstone3D's own coordinate transforms, which OHIF exposes as window.cornerstone), its VOI and image id.
VIEWPORT = """() => {
    const cs = window.cornerstone;
    const engine = cs && cs.getRenderingEngines && cs.getRenderingEngines()[0];
    const vp = engine && engine.getViewports().find((v) => v.getCurrentImageId && v.getCurrentImageId());
    if (!vp) return null;
    const imageId = vp.getCurrentImageId();
    const image = cs.cache.getImage(imageId);
    if (!image) return null;
    const corners = [[0, 0], [image.columns, image.rows]].map(
        (p) => vp.worldToCanvas(cs.utilities.imageToWorldCoords(imageId, p)));
    const canvas = vp.getCanvas();
    const voi = vp.getProperties().voiRange;
    return {imageId, url: canvas.toDataURL('image/png'), cssWidth: canvas.clientWidth, width: canvas.width,
            corners, lower: voi.lower, upper: voi.upper, cols: image.columns, rows: image.rows};
}"""


def _shown(shot) -> np.ndarray:
    """The displayed image's region of the canvas, resized to the image's size, in grey levels."""
    canvas = Image.open(io.BytesIO(base64.b64decode(shot["url"].split(",", 1)[1]))).convert("L")
    scale = shot["width"] / shot["cssWidth"]
    (x0, y0), (x1, y1) = shot["corners"]
    box = tuple(round(v * scale) for v in (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    return np.asarray(canvas.crop(box).resize((shot["cols"], shot["rows"]), Image.BILINEAR), dtype=float)


def test_ohif_lists_opens_and_draws_our_study_and_its_requests_are_audited(ohif_web):
    """Bad implementations this catches: OHIF served to a signed-out browser; a page whose scripts or chunks
    are fetched from the site's root (blank page); our app-config.js not used (the demo server's list); a
    study list without our patient; a viewport that stays black or shows the image flipped or at another
    window; DICOMweb requests from OHIF that bypass the audit trail."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout, sync_playwright

    from tests.browser.conftest import CHROMIUM_ARGS

    base, study = ohif_web["url"], ohif_web["study"]
    started = time.monotonic()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=require_tool("chromium"), args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(locale="en-US", viewport={"width": 1366, "height": 768})
        context.set_default_timeout(120_000)
        page = context.new_page()
        messages, refused = [], []
        page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
        page.on("console", lambda m: "Content Security Policy" in m.text and refused.append(m.text))
        page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
        outside = []  # requests OHIF sends outside /ohif/ and /dicom-web (its files fetched from the root)
        page.on("request", lambda r: r.url.startswith(base) and not re.match(
            rf"{re.escape(base)}/(ohif/|dicom-web/|login|static/)", r.url) and outside.append(r.url))
        try:
            # Signed out: the login page, never OHIF.
            page.goto(f"{base}/ohif/")
            assert "/login" in page.url and page.locator("input[name=password]").count() == 1
            assert page.locator("#root").count() == 0
            # Signing in leads back to OHIF's study list, filled by QIDO-RS with our study.
            page.fill("input[name=login]", "dr_ohif")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(re.compile(r".*/ohif/?(\?.*)?$"))
            row = page.locator("tr").filter(has_text="Lefevre, Anne")  # OHIF's rendering of our PN Lefevre^Anne
            row.wait_for()
            cells = row.locator("td").all_inner_texts()
            assert DESCRIPTION in cells and "CT" in cells and "01-Mar-2024" in cells, cells
            listed = time.monotonic() - started
            # Open it as a user does: select the row, then launch the Basic Viewer mode.
            row.click()
            page.get_by_role("button", name=re.compile("Basic Viewer")).click()
            page.wait_for_url(re.compile(r".*/ohif/viewer.*StudyInstanceUIDs=" + re.escape(study)))
            shot = None
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                shot = page.evaluate(VIEWPORT)
                if shot and _shown(shot).std() > 20:
                    break
                page.wait_for_timeout(500)
            else:
                raise AssertionError(f"OHIF drew nothing in 120 s: {shot and shot['imageId']}; "
                                     f"console: {messages[-20:]}")
            drawn = time.monotonic() - started
            shown = _shown(shot)
            sop = re.search(r"/instances/([0-9.]+)/frames/", shot["imageId"]).group(1)
            assert sop in {ds.SOPInstanceUID for ds in ohif_web["datasets"]}
            series = ohif_web["datasets"][0].SeriesInstanceUID
            center, width = (shot["upper"] + shot["lower"]) / 2, shot["upper"] - shot["lower"]
            rendered = page.request.get(f"{base}/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/1/"
                                        f"rendered?window={center},{width}", headers={"Accept": "image/png"})
            assert rendered.ok, rendered.status
            server = np.asarray(Image.open(io.BytesIO(rendered.body())).convert("L"), dtype=float)
            assert server.std() > 20  # the reference is a gradient, not a flat field
            inner = (slice(2, -2), slice(2, -2))
            assert np.corrcoef(shown[inner].ravel(), server[inner].ravel())[0, 1] > 0.95
            assert np.abs(shown - server)[inner].mean() < 12, np.abs(shown - server)[inner].mean()
            assert outside == [], outside[:5]
            assert refused == [], refused[:5]
        except PlaywrightTimeout as exc:
            raise AssertionError(f"{exc}; console: {messages[-20:]}; "
                                 f"web log: {ohif_web['log'].read_text()[-1500:]}") from None
        finally:
            context.close()
            browser.close()

    # Every DICOMweb request OHIF made (its study list, the series, their metadata, the frames) is one audit
    # event under the radiologist's login; the frame OHIF drew is among them.
    # (The test's own /rendered request above is left out: it is not OHIF's.)
    events = [e for e in _audit(ohif_web["database_url"]) if not e[3]["path"].endswith("/rendered")]
    assert events and {actor for _a, actor, _s, _d in events} == {"dr_ohif"}
    actions = {action for action, *_ in events}
    assert {"dicomweb.search", "dicomweb.metadata", "dicomweb.retrieve"} <= actions, actions
    paths = [detail["path"] for *_, detail in events]
    assert "/dicom-web/studies" in paths
    assert any(p.startswith(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/") for p in paths)
    assert {s for action, _a, s, _d in events if action != "dicomweb.search"} == {study}
    print(f"\nOHIF: study list after {listed:.1f} s, first image drawn after {drawn:.1f} s "
          f"(from the signed-out page, one browser session); {len(events)} DICOMweb requests audited")
