"""The Cornerstone3D study viewer in Debian's Chromium, fed by /dicom-web.

Pixels: the canvas is read back and compared with the archive's own server-side render of the same frame.
"""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from tests.browser.conftest import add_user, sign_in
from tests.helpers import make_ct, require_tool
from tests.radiology_support import store

pytestmark = pytest.mark.browser
ROWS = 64


def ct_stack(study_uid, count, spacing, *, study_date, frame_of_reference, description, rows=ROWS):
    """Axial CT slices with geometry; a smooth gradient per slice (the slice number shifts it)."""
    series_uid = generate_uid()
    datasets = []
    for n in range(count):
        ds = make_ct(study_uid=study_uid, series_uid=series_uid, rows=rows, patient_id="PAT-VIEW",
                     patient_name="Lefevre^Anne", study_date=study_date, InstanceNumber=n + 1,
                     RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=476, WindowWidth=3000,
                     ImagePositionPatient=[-100, -100, round(n * spacing, 3)],
                     ImageOrientationPatient=[1, 0, 0, 0, 1, 0], PixelSpacing=[0.5, 0.5],
                     FrameOfReferenceUID=frame_of_reference, StudyDescription=description,
                     SeriesDescription="Axial", BodyPartExamined="CHEST")
        i, j = np.mgrid[0:rows, 0:rows]
        ds.PixelData = (i * 40 + j * 15 + n * 10).astype(np.uint16).tobytes()
        datasets.append(ds)
    return datasets


@pytest.fixture
def studies(app):
    current, prior = generate_uid(), generate_uid()
    # The prior: another frame of reference, thinner slices (12 × 1.25 mm against 5 × 2.5 mm).
    store(app.extensions["archivage"].archive,
          ct_stack(current, 5, 2.5, study_date="20240301", frame_of_reference=generate_uid(), description="TDM")
          + ct_stack(prior, 12, 1.25, study_date="20230110", frame_of_reference=generate_uid(), description="TDM"))
    add_user(app, "dr_view", "radiologist")
    return current, prior


@pytest.fixture
def page(chromium):
    context = chromium.new_context(locale="fr-FR", viewport={"width": 1366, "height": 768})
    context.set_default_timeout(20000)
    page = context.new_page()
    page.csp_refusals, page.messages = [], []
    page.on("console", lambda m: "Content Security Policy" in m.text and page.csp_refusals.append(m.text))
    page.on("console", lambda m: page.messages.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: page.messages.append(f"pageerror: {e}"))
    yield page
    context.close()


def _ready(page, count=1):
    """Wait until *count* panes show an image; on a timeout, say what the browser's console said."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            "(n) => document.querySelectorAll('section.pane[data-state=ready][data-rendered]').length >= n", arg=count)
    except PlaywrightTimeout:
        states = page.evaluate("() => [...document.querySelectorAll('section.pane')].map((p) => "
                               "`${p.dataset.pane}:${p.dataset.state}:${p.querySelector('.info').textContent}`)")
        raise AssertionError(f"panes {states}; console: {page.messages[-15:]}") from None


def _canvas(page, pane="current"):
    """The pane's canvas as an RGB image, and where the image lies on it."""
    shot = page.evaluate("""(role) => {
        const p = window.archivageViewer.allPanes().find((x) => x.role === role);
        const canvas = p.stage.querySelector('canvas');
        return {url: canvas.toDataURL('image/png'), rect: p.imageRect(), wc: p.el.dataset.wc, ww: p.el.dataset.ww,
                sop: p.el.dataset.sop, renderer: document.body.dataset.renderer};
    }""", pane)
    image = Image.open(io.BytesIO(base64.b64decode(shot["url"].split(",", 1)[1]))).convert("L")
    return image, shot


def _image_region(image, rect):
    box = (round(rect["x"]), round(rect["y"]), round(rect["x"] + rect["width"]), round(rect["y"] + rect["height"]))
    return np.asarray(image.crop(box).resize((rect["cols"], rect["rows"]), Image.BILINEAR), dtype=float)


@pytest.mark.parametrize("renderer", ["gpu", "cpu"])
def test_canvas_shows_the_server_render_and_mouse_windowing_changes_it(app, live_server, studies, page, renderer):
    """Bad implementations this catches: a blank or black canvas, an image drawn at the wrong window or
    flipped, a drag that changes nothing. Both renderers: WebGL (here Chromium's software WebGL) and
    Cornerstone's CPU fallback, which a browser without WebGL gets."""
    current, _prior = studies
    sign_in(page, live_server, "dr_view")
    page.goto(f"{live_server}/radiology/studies/{current}/viewer" + ("?render=cpu" if renderer == "cpu" else ""))
    _ready(page)
    image, shot = _canvas(page)
    assert shot["renderer"] == renderer
    with app.extensions["archivage"].new_session() as s:
        series = app.extensions["archivage"].study_detail(s, current).series[0].series_uid
    rendered = page.request.get(
        f"{live_server}/dicom-web/studies/{current}/series/{series}/instances/{shot['sop']}/frames/1/rendered"
        f"?window={shot['wc']},{shot['ww']}", headers={"Accept": "image/png"})
    assert rendered.ok, rendered.status
    server = np.asarray(Image.open(io.BytesIO(rendered.body())).convert("L").resize((ROWS, ROWS)), dtype=float)
    shown = _image_region(image, shot["rect"])
    assert server.std() > 20  # the reference is a gradient, not a flat field
    assert np.abs(shown - server)[2:-2, 2:-2].mean() < 6, (shot["renderer"], np.abs(shown - server).mean())

    # Window/level with the mouse: a drag on the image (the left button's default tool).
    box = page.locator("section.pane[data-pane=current] .stage").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    before_ww = shot["ww"]
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 120, y + 80, steps=8)
    page.mouse.up()
    page.wait_for_function("(ww) => document.querySelector('section.pane[data-pane=current]').dataset.ww !== ww",
                           arg=before_ww)
    after, _ = _canvas(page)
    assert np.abs(_image_region(after, shot["rect"]) - shown).mean() > 10
    assert page.csp_refusals == []


def test_the_first_image_shows_before_the_viewer_starts_and_gives_way_to_it(app, live_server, studies, page):
    """While the 4 MB viewer bundle loads and starts, each pane shows its first image as the archive
    renders it; once Cornerstone has drawn, that picture is gone (bad implementations: an empty black
    pane until the bundle runs; a picture left over the canvas, hiding windowing or scrolling)."""
    current, prior = studies
    sign_in(page, live_server, "dr_view")
    page.route("**/vendor/viewer/viewer.js", lambda route: route.abort())  # the bundle never comes
    page.goto(f"{live_server}/radiology/studies/{current}/viewer?compare={prior}")
    page.wait_for_function("() => [...document.querySelectorAll('img.preview')].every((i) => i.complete)")
    previews = page.evaluate("() => [...document.querySelectorAll('section.pane')].map((p) => {"
                             " const i = p.querySelector('img.preview');"
                             " return {pane: p.dataset.pane, width: i.naturalWidth, src: i.getAttribute('src'),"
                             " shown: i.getBoundingClientRect().height}; })")
    facade = app.extensions["archivage"]
    for preview, study in zip(previews, (current, prior)):
        with facade.new_session() as s:
            first = facade.study_detail(s, study).series[0].first_sop_uid
        assert preview["width"] == ROWS and preview["shown"] > 200 and first in preview["src"], preview
    shown = Image.open(io.BytesIO(page.request.get(live_server + previews[0]["src"]).body())).convert("L")
    assert np.asarray(shown, dtype=float).std() > 20  # the gradient, not a blank picture

    page.unroute("**/vendor/viewer/viewer.js")
    page.goto(f"{live_server}/radiology/studies/{current}/viewer?compare={prior}")
    _ready(page, 2)
    assert page.locator("img.preview").count() == 0
    assert page.csp_refusals == []


def test_linked_scrolling_moves_both_panes_by_position(live_server, studies, page):
    """The prior (other frame of reference, 1.25 mm slices) follows the current (2.5 mm) by position:
    two slices down is 5 mm, four prior slices; by index it would have been six. Bad implementations:
    panes that scroll alone, or a link by index where the geometry allows position."""
    current, prior = studies
    sign_in(page, live_server, "dr_view")
    page.goto(f"{live_server}/radiology/studies/{current}/viewer?compare={prior}")
    _ready(page, 2)
    panes = {role: page.locator(f"section.pane[data-pane={role}]") for role in ("current", "prior")}
    assert panes["current"].get_attribute("data-link") == "position"
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    page.wait_for_function("() => document.querySelector('section.pane[data-pane=prior]').dataset.index === '4'")
    assert panes["current"].get_attribute("data-index") == "2"
    assert panes["current"].locator(".pos").inner_text() == "3 / 5"
    # The wheel over the prior moves the current back: 2.5 mm per current slice (prior 4 → 2 is current 1).
    box = page.locator("section.pane[data-pane=prior] .stage").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -100)
    page.mouse.wheel(0, -100)
    page.wait_for_function("() => document.querySelector('section.pane[data-pane=prior]').dataset.index === '2'")
    page.wait_for_function("() => document.querySelector('section.pane[data-pane=current]').dataset.index === '1'")
    # Unlinked (L), the prior stays where it is.
    page.keyboard.press("l")
    page.keyboard.press("End")
    page.wait_for_function("() => document.querySelector('section.pane[data-pane=current]').dataset.index === '4'")
    assert panes["prior"].get_attribute("data-index") == "2"


def test_share_link_opens_the_same_viewer_read_only(app, live_server, studies, page):
    """A referring doctor's link: the study renders, there is nothing to mark or save, and the link's
    DICOMweb session reads no other study (bad implementation: the share viewer reading /dicom-web
    without the link's scope, or offering key-image marking)."""
    from backoffice.radiology import services

    current, prior = studies
    with app.extensions["archivage"].new_session(write=True) as s:
        link = services.create_share_link(s, current, created_by="dr_view", days=7)
        s.commit()
    page.goto(f"{live_server}/share/{link.token}")
    page.fill("input[name=code]", link.code)
    page.click("button[type=submit]")
    page.click("#open-shared-viewer")  # from the link's page (patient, report, key images)
    page.wait_for_url(re.compile(r".*/viewer$"))
    _ready(page)
    assert page.locator("[data-action=key]").count() == 0
    assert page.locator("a:has-text('Examen')").count() == 0
    assert page.locator("section.pane").filter(has=page.locator("select.series")).count() == 1
    other = page.request.get(f"{live_server}/dicom-web/studies/{prior}/metadata")
    assert other.status == 404
    assert page.request.get(f"{live_server}/dicom-web/studies/{current}/metadata").ok
    assert page.csp_refusals == []


def test_mammograms_hang_by_laterality_and_view_at_full_resolution(app, live_server, page):
    """Four MG images stored in a shuffled order hang R CC | L CC | R MLO | L MLO, each decoded at its
    stored size (bad implementation: instance order, or a 512 px render)."""
    study, series = generate_uid(), generate_uid()
    expected = {}
    for number, (side, view) in enumerate([("L", "MLO"), ("R", "CC"), ("L", "CC"), ("R", "MLO")], start=1):
        ds = make_ct(study_uid=study, series_uid=series, rows=600, modality="MG", patient_id="PAT-MG",
                     SOPClassUID="1.2.840.10008.5.1.4.1.1.1.2", InstanceNumber=number, ImageLaterality=side,
                     ViewPosition=view, PatientOrientation=["A", "R"] if side == "L" else ["P", "L"],
                     WindowCenter=2000, WindowWidth=4000)
        expected[f"mg-{side}-{view}"] = ds.SOPInstanceUID
        store(app.extensions["archivage"].archive, [ds])
    add_user(app, "dr_mammo", "radiologist")
    sign_in(page, live_server, "dr_mammo")
    page.goto(f"{live_server}/radiology/studies/{study}/viewer")
    _ready(page)
    page.click("[data-action=mammo]")
    _ready(page, 5)
    for pane, sop in expected.items():
        assert page.locator(f"section.pane[data-pane={pane}]").get_attribute("data-sop") == sop
    size = page.evaluate("() => window.archivageViewer.mammo[0].imageRect()")
    assert (size["cols"], size["rows"]) == (600, 600)


@pytest.mark.parametrize("syntax", [("dcmcjpeg", "1.2.840.10008.1.2.4.50"), ("dcmcjpls", "1.2.840.10008.1.2.4.80"),
                                    ("dcmcjpeg", "1.2.840.10008.1.2.4.70")], ids=["jpeg-baseline", "jpeg-ls",
                                                                                "jpeg-lossless"])
def test_compressed_multiframe_decodes_in_the_worker_and_plays_as_cine(app, live_server, page, tmp_path, syntax):
    """A multi-frame object compressed by DCMTK (JPEG baseline and JPEG-LS go through the WebAssembly codecs
    in the decoding worker, under the viewer's CSP) shows its first frame as the server renders it, and cine
    plays the frames. Bad implementations: codecs fetched from a CDN or refused by the CSP (nothing shows),
    a multi-frame object shown as one image, a cine button that does not move."""
    import subprocess

    tool, expected_syntax = syntax
    frames, rows = 6, 96
    ds = make_ct(rows=rows, modality="US", patient_id="PAT-CINE", SOPClassUID="1.2.840.10008.5.1.4.1.1.7.2",
                 NumberOfFrames=frames, FrameIncrementPointer=0x00181063, FrameTime=100,
                 BitsAllocated=8, BitsStored=8, HighBit=7)
    i, j = np.mgrid[0:rows, 0:rows]
    ds.PixelData = np.stack([(i + j + 25 * f) % 256 for f in range(frames)]).astype(np.uint8).tobytes()
    for name in ("RescaleSlope", "RescaleIntercept"):
        if name in ds:
            del ds[name]
    plain, packed = tmp_path / "plain.dcm", tmp_path / "packed.dcm"
    ds.save_as(plain, enforce_file_format=True)
    options = ["+eb"] if expected_syntax.endswith(".50") else []  # DCMTK's default: lossless SV1, or JPEG-LS
    subprocess.run([require_tool(tool), *options, str(plain), str(packed)], check=True, capture_output=True)
    compressed = pydicom.dcmread(packed)  # lossy JPEG: DCMTK gives the copy a new SOP Instance UID
    assert compressed.file_meta.TransferSyntaxUID == expected_syntax
    store(app.extensions["archivage"].archive, [compressed])
    add_user(app, "dr_cine", "radiologist")
    sign_in(page, live_server, "dr_cine")
    page.goto(f"{live_server}/radiology/studies/{ds.StudyInstanceUID}/viewer")
    _ready(page)
    current = page.locator("section.pane[data-pane=current]")
    assert current.get_attribute("data-count") == str(frames)
    image, shot = _canvas(page)
    rendered = page.request.get(
        f"{live_server}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
        f"{compressed.SOPInstanceUID}/frames/1/rendered?window={shot['wc']},{shot['ww']}", headers={"Accept": "image/png"})
    assert rendered.ok, (rendered.status, rendered.text()[:300])
    server = np.asarray(Image.open(io.BytesIO(rendered.body())).convert("L").resize((rows, rows)), dtype=float)
    assert np.abs(_image_region(image, shot["rect"]) - server)[2:-2, 2:-2].mean() < 8
    page.keyboard.press("c")  # cine at the object's Frame Time (100 ms)
    seen = set()
    for _ in range(40):
        seen.add(current.get_attribute("data-index"))
        if len(seen) >= 3:
            break
        page.wait_for_timeout(100)
    page.keyboard.press("c")
    assert len(seen) >= 3, seen
    assert page.csp_refusals == []


def test_toolbar_fits_a_1366_by_768_screen_with_a_long_name(app, live_server, page):
    """Issue 11: every toolbar control is on screen at 1366×768 and a 300-character description or name
    does not widen the page (bad layout: a toolbar or pane bar pushing the page sideways)."""
    import warnings

    study = generate_uid()
    with warnings.catch_warnings():  # over LO's 64 characters, as some modalities send
        warnings.simplefilter("ignore")
        stack = ct_stack(study, 2, 2.5, study_date="20240301", frame_of_reference=generate_uid(),
                         description="D" * 300)
    store(app.extensions["archivage"].archive, stack)
    add_user(app, "dr_" + "x" * 40, "radiologist")
    sign_in(page, live_server, "dr_" + "x" * 40)
    page.goto(f"{live_server}/radiology/studies/{study}/viewer")
    _ready(page)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 1366
    assert page.evaluate("() => document.documentElement.scrollHeight") <= 768
    controls = page.locator(".toolbar button, .toolbar select, .toolbar a")
    assert controls.count() >= 10
    for k in range(controls.count()):
        box = controls.nth(k).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 1366 and box["y"] + box["height"] <= 768
    stage = page.locator("section.pane[data-pane=current] .stage").bounding_box()
    assert stage["height"] >= 500  # the image keeps most of the screen
