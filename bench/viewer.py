"""Viewer benchmark: first and next image of a 500-image CT over HTTP, and a 6-image paper reproduction.

Usage: python bench/viewer.py [--images 500] [--size 512] [--repeat 20] [--browser-repeat 5]

A fresh instance under a temporary folder; the back-office is served by werkzeug in this process
(threaded) and measured from an HTTP client on loopback: the figures are server render + transfer.

Then the Cornerstone3D viewer in Debian's Chromium (when installed): from the navigation to the first
image on screen (the archive's render the page shows while the viewer starts) and to the first frame
drawn by Cornerstone on the canvas (the viewer usable), each with a cold browser (a new context: no HTTP cache, the 4.3 MB bundle
fetched again) and with the bundle in the browser's cache (the same context, a second visit). What
the viewer fetches before its first frame is timed over HTTP too: the series metadata (500 instances)
and the first frame by WADO-RS.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

from _common import REPO, ImageSetSpec, free_port, generate_image_set

sys.path.insert(0, str(REPO))

TARGETS_MS = {"first image (cold)": 300, "next image (cold)": 100, "reproduction PDF, 6 images": 1000,
              "viewer: first image on screen, bundle cached, from the list": 300}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", type=int, default=512, help="rows and columns of each image")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--browser-repeat", type=int, default=5, help="0: no browser measure")
    args = parser.parse_args()

    from archive_core.archive import Archive
    from archive_core.config import Settings
    from archive_core.maintenance import import_path
    from backoffice import create_app
    from backoffice.auth.services import create_user
    from backoffice.migrate import upgrade
    from werkzeug.serving import make_server

    work = Path(tempfile.mkdtemp(prefix="bench-viewer-"))
    try:
        instance = work / "instance"
        instance.mkdir()
        settings = Settings(instance_path=instance, STORAGE_MIN_FREE_BYTES=0)
        upgrade(settings.database_url)
        print(f"generating {args.images} CT images {args.size}x{args.size} ...", flush=True)
        images = generate_image_set(ImageSetSpec("ct", args.images, args.size, args.size), work / "set")
        archive = Archive.open(settings)
        started = time.perf_counter()
        import_path(archive, work / "set")
        print(f"imported in {time.perf_counter() - started:.1f} s", flush=True)
        archive.close()

        app = create_app({"INSTANCE_PATH": str(instance), "STORAGE_MIN_FREE_BYTES": 0})
        import logging

        for name in ("", "werkzeug", "weasyprint", "weasyprint.progress", "fontTools"):
            logging.getLogger(name).setLevel(logging.WARNING)  # they log every request and layout step
        facade = app.extensions["archivage"]
        with facade.new_session(write=True) as s:
            create_user(s, "bench", role="radiologist", password="bench password 1")
            s.commit()
        port = free_port()
        server = make_server("127.0.0.1", port, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{port}"
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        login_page = opener.open(base + "/login").read().decode()
        token = re.search(r'name="csrf_token"[^>]*?value="([^"]+)"', login_page).group(1)
        opener.open(base + "/login", urllib.parse.urlencode(
            {"login": "bench", "password": "bench password 1", "csrf_token": token}).encode()).read()

        import pydicom

        study_uid = pydicom.dcmread(images.files[0], stop_before_pixels=True).StudyInstanceUID
        with facade.new_session() as s:
            detail = facade.study_detail(s, study_uid)
            sops = [r.sop_instance_uid for r in facade.series_instances(s, detail.series[0].series_uid)]
        cache = instance / "cache" / "render"

        def fetch(url: str) -> float:
            t0 = time.perf_counter()
            with opener.open(url) as response:
                body = response.read()
            elapsed = (time.perf_counter() - t0) * 1000
            assert body, url
            return elapsed

        image_url = base + "/radiology/instances/{}/image?size=512"
        fetch(image_url.format(sops[-1]))  # warm the imports and the connection pool once
        results: dict[str, list[float]] = {"first image (cold)": [], "next image (cold)": [], "image (cached)": [],
                                           "reproduction PDF, 6 images": []}
        for _ in range(args.repeat):
            shutil.rmtree(cache, ignore_errors=True)
            results["first image (cold)"].append(fetch(image_url.format(sops[0])))
            for sop in sops[1:6]:
                results["next image (cold)"].append(fetch(image_url.format(sop)))
            results["image (cached)"].append(fetch(image_url.format(sops[0])))
        from backoffice.radiology import services

        with facade.new_session(write=True) as s:
            for n, sop in enumerate(sops[: len(sops): max(1, len(sops) // 6)][:6]):
                services.add_key_image(s, study_uid, sop, chosen_by="bench", window_center=40 + n, window_width=400)
            s.commit()
        for _ in range(max(5, args.repeat // 2)):
            shutil.rmtree(cache, ignore_errors=True)
            results["reproduction PDF, 6 images"].append(
                fetch(base + f"/radiology/studies/{study_uid}/reproduction.pdf?per_page=6"))
        series_uid = detail.series[0].series_uid
        wado = base + f"/dicom-web/studies/{study_uid}/series/{series_uid}"
        for _ in range(args.repeat):
            results.setdefault("WADO-RS series metadata", []).append(fetch(wado + "/metadata"))
            results.setdefault("WADO-RS first frame", []).append(fetch(wado + f"/instances/{sops[0]}/frames/1"))
        if args.browser_repeat and shutil.which("chromium"):
            results.update(browser_first_frame(base, study_uid, args.browser_repeat))
        server.shutdown()

        print(f"\n{args.images} images {args.size}x{args.size}, {args.repeat} repetitions (ms):")
        print(f"{'measure':60} {'p50':>8} {'p95':>8} {'target':>8}")
        failed = False
        for name, values in results.items():
            p50 = statistics.median(values)
            target = TARGETS_MS.get(name)
            flag = "" if target is None else ("ok" if p50 < target else "MISSED")
            failed |= flag == "MISSED"
            print(f"{name:60} {p50:8.1f} {percentile(values, 0.95):8.1f} {target or '':>8} {flag}")
        return 1 if failed else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def browser_first_frame(base: str, study_uid: str, repeat: int) -> dict[str, list[float]]:
    """Navigation to the first image on screen and to the first frame Cornerstone3D drew, cold and with
    the bundle cached."""
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--headless", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"]
    on_screen = ("() => document.querySelector('section.pane[data-rendered]') !== null || [...document.querySelectorAll("
                 "'section.pane img.preview')].some((i) => i.complete && i.naturalWidth > 0)")
    drawn = "() => document.querySelector('section.pane[data-rendered]') !== null"
    results: dict[str, list[float]] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=args, headless=True)
        try:
            for _ in range(repeat):
                context = browser.new_context(viewport={"width": 1366, "height": 768})
                page = context.new_page()
                page.goto(base + "/login")
                page.fill("input[name=login]", "bench")
                page.fill("input[name=password]", "bench password 1")
                page.click("button[type=submit]")
                page.wait_for_load_state()
                for visit in ("cold browser", "bundle cached, from the viewer", "bundle cached, from the list"):
                    if visit.endswith("from the list"):  # the previous viewer's teardown is not in this one
                        page.goto(base + "/radiology/", wait_until="load")
                    t0 = time.perf_counter()
                    page.goto(base + f"/radiology/studies/{study_uid}/viewer", wait_until="commit")
                    page.wait_for_function(on_screen, polling="raf", timeout=60000)
                    results.setdefault(f"viewer: first image on screen, {visit}", []).append(
                        (time.perf_counter() - t0) * 1000)
                    page.wait_for_function(drawn, polling="raf", timeout=60000)
                    results.setdefault(f"viewer: first frame drawn, {visit}", []).append(
                        (time.perf_counter() - t0) * 1000)
                    # The series' metadata is still coming: let it, so the next visit does not share the
                    # server with this one's.
                    page.wait_for_function("() => document.querySelector('section.pane[data-state=ready]')",
                                           timeout=120000)
                context.close()
        finally:
            browser.close()
    return results


if __name__ == "__main__":
    sys.exit(main())
