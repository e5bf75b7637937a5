"""The committed viewer bundle is the build of its lockfile and sources (no Node needed to check it).

`make viewer-bundle` writes backoffice/static/vendor/viewer/MANIFEST.json with the SHA-256 of every file it
wrote, of viewer/package-lock.json, viewer/package.json and the viewer's sources. A hand-edited bundle file,
a stray file, a lockfile or source change without a rebuild, or a range instead of a pinned version fails here.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENDOR = ROOT / "backoffice" / "static" / "vendor" / "viewer"
VIEWER = ROOT / "viewer"
PINNED = ("@cornerstonejs/core", "@cornerstonejs/tools", "@cornerstonejs/dicom-image-loader", "esbuild")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest() -> dict:
    return json.loads((VENDOR / "MANIFEST.json").read_text())


def test_every_bundle_file_matches_the_manifest():
    manifest = _manifest()
    on_disk = {p.name for p in VENDOR.iterdir()} - {"MANIFEST.json"}
    assert on_disk == set(manifest["files"])  # nothing added or removed by hand
    for name, digest in manifest["files"].items():
        assert _sha256(VENDOR / name) == digest, name
    # the page's module, its decoding worker, and the WebAssembly codecs served from our origin
    assert {"viewer.js", "decodeImageFrameWorker.js", "libjpegturbowasm_decode.wasm", "charlswasm_decode.wasm",
            "openjpegwasm_decode.wasm"} <= on_disk


def test_the_bundle_was_built_from_this_lockfile_and_these_sources():
    manifest = _manifest()
    assert manifest["package_lock_sha256"] == _sha256(VIEWER / "package-lock.json")
    assert manifest["package_json_sha256"] == _sha256(VIEWER / "package.json")
    sources = {"build.mjs", *(str(p.relative_to(VIEWER)) for p in (VIEWER / "src").rglob("*.js"))}
    assert set(manifest["sources_sha256"]) == sources
    for name, digest in manifest["sources_sha256"].items():
        assert _sha256(VIEWER / name) == digest, f"{name} changed: run `make viewer-bundle`"


def test_versions_are_pinned_exactly_and_recorded():
    package = json.loads((VIEWER / "package.json").read_text())
    lock = json.loads((VIEWER / "package-lock.json").read_text())
    declared = {**package["dependencies"], **package["devDependencies"]}
    for name in PINNED:
        assert re.fullmatch(r"\d+\.\d+\.\d+", declared[name]), (name, declared[name])  # no ^, ~ or range
        assert lock["packages"][f"node_modules/{name}"]["version"] == declared[name]
        assert _manifest()["versions"][name] == declared[name]


def test_the_bundle_loads_nothing_from_another_origin():
    """No CDN: the worker and the codecs are found next to the module, on our origin."""
    for name in ("viewer.js", "decodeImageFrameWorker.js"):
        text = (VENDOR / name).read_text(encoding="utf-8")
        assert not re.search(r"https?://(cdn|unpkg|[\w.]*jsdelivr|cdnjs)", text), name
        assert "@cornerstonejs/codec-" not in text, name  # a package path a browser cannot resolve
    worker = (VENDOR / "decodeImageFrameWorker.js").read_text(encoding="utf-8")
    for wasm in ("libjpegturbowasm_decode.wasm", "charlswasm_decode.wasm", "openjpegwasm_decode.wasm"):
        assert f'"./{wasm}"' in worker
