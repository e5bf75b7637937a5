"""OHIF v3, optionally served under ``/ohif/`` on the web port (``OHIF_DIR``): its files, our ``app-config.js``.

Same origin as ``/dicom-web``, so OHIF's DICOMweb requests carry the signed-in session cookie and are
checked and audited there, one event per request (backoffice/dicomweb/access.py). The viewer's own files
open to the roles that open the study viewer, like every page. ``OHIF_DIR`` unset: no route, ``/ohif/`` is 404.

The package is built for the root of a site (``PUBLIC_URL=/``): its ``index.html``, its stylesheets'
``url(/…)`` and the public path of its scripts' chunk loader (``__webpack_require__.p = "/"``, in the
app bundle and in each worker) are rewritten to ``/ohif/`` as they are served; the files on disk stay
as unpacked (tools/fetch_ohif.py verified them).
"""

from __future__ import annotations

import json
import logging
import re
from functools import lru_cache
from pathlib import Path

from flask import Blueprint, Flask, Response, abort, current_app, g, send_from_directory
from flask_babel import gettext as _

from backoffice.auth import roles_required
from backoffice.radiology.web import READERS

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent.parent
PREFIX = "/ohif/"
bp = Blueprint("ohif", __name__, url_prefix=PREFIX.rstrip("/"))

# The chunk loader's public path, as rspack writes it in the package's runtime chunks.
PUBLIC_PATH = (b'__webpack_require__.p = "/";', b'__webpack_require__.p = "' + PREFIX.encode() + b'";')
CSS_ROOT_URL = re.compile(rb"url\((['\"]?)/(?!/)")
# A file named by its content (rspack's 16-hex hash: ``89.bundle.b327bf3664812958.js``, ``0ddf166f7a343eda.wasm``):
# the same name never holds other bytes, so the browser may keep it (see serve).
CONTENT_NAMED = re.compile(r"(?:^|\.)[0-9a-f]{16}\.(?:m?js|css|wasm)$")
KEPT = "private, max-age=31536000, immutable"
MIMETYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
             ".css": "text/css", ".json": "application/json", ".woff2": "font/woff2", ".svg": "image/svg+xml"}


def ohif_dir() -> Path | None:
    """``OHIF_DIR`` as a folder (relative: to the project's root, where ``make ohif`` unpacks it), or None."""
    value = current_app.config.get("OHIF_DIR")
    if not value:
        return None
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else ROOT / path


def page_policy(nonce: str) -> str:
    """The policy of OHIF's page only (the rest of the site keeps backoffice/security.py's): OHIF's decoders
    and its other workers start from its own files or blobs (``worker-src``) and compile WebAssembly
    (``'wasm-unsafe-eval'``: WebAssembly compilation only, nothing of JavaScript's eval); its components
    set ``<style>`` elements at run time that carry no nonce (``style-src 'unsafe-inline'``, styles only)."""
    return "; ".join((
        "default-src 'self'",
        f"script-src 'self' 'nonce-{nonce}' 'wasm-unsafe-eval'",
        "worker-src 'self' blob:",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "connect-src 'self' data: blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ))


# Any of OHIF's scripts may start a worker, which runs under its script's own response policy.
WORKER_POLICY = ("default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self' blob:; "
                 "connect-src 'self' data: blob:; frame-ancestors 'none'")


def app_config(dicomweb_url: str, wado_uri_url: str) -> dict:
    """``window.config``: one DICOMweb data source, ours (docs/radiology.md shows it and says why each option)."""
    return {
        "routerBasename": PREFIX.rstrip("/"),
        "showStudyList": True,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "defaultDataSourceName": "archivage",
        "dataSources": [{
            "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
            "sourceName": "archivage",
            "configuration": {
                "friendlyName": "Archivage",
                "name": "archivage",
                "qidoRoot": dicomweb_url,
                "wadoRoot": dicomweb_url,
                "wadoUriRoot": wado_uri_url,
                "qidoSupportsIncludeField": True,
                "supportsFuzzyMatching": False,
                "supportsWildcard": True,
                "imageRendering": "wadors",
                "thumbnailRendering": "wadors",
                "enableStudyLazyLoad": True,
                "bulkDataURI": {"enabled": True},
                "omitQuotationForMultipartRequest": True,
                "supportsReject": False,
                "staticWado": False,
                "singlepart": False,
            },
        }],
    }


def rewrite_index(html: str, nonce: str) -> str:
    """The package's ``index.html`` under ``/ohif/``: its public URL, its root-absolute ``src``/``href``, a
    nonce on its inline scripts, and without its service-worker script (nothing to unregister on our site)."""
    html = re.sub(r'<script[^>]*src="/init-service-worker\.js"[^>]*></script>', "", html)
    html = html.replace('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{PREFIX}"')
    html = re.sub(r'(\s(?:src|href))="/(?!/)', rf'\1="{PREFIX}', html)
    return re.sub(r"<script(?![^>]*\bsrc=)", f'<script nonce="{nonce}"', html)


@lru_cache(maxsize=256)
def _rewritten(path: str, mtime_ns: int, size: int) -> bytes | None:
    """A script or stylesheet with its root-absolute URLs under ``/ohif/``; None when it has none (sent
    as it is). Keyed by modification time and size: a new ``make ohif`` is seen without a restart."""
    data = Path(path).read_bytes()
    if path.endswith(".css"):
        changed = CSS_ROOT_URL.sub(rb"url(\1" + PREFIX.encode(), data)
    elif path.endswith(".json"):  # the web app manifest's icons
        changed = data.replace(b'"/assets/', b'"' + PREFIX.encode() + b"assets/")
    else:
        changed = data.replace(*PUBLIC_PATH)
    return changed if changed != data else None


def _missing(folder: Path):
    """A configured folder without the viewer: the app's error page (503) saying what to run, and the log."""
    from backoffice.errors import error_page

    log.error("OHIF_DIR=%s holds no index.html: run `make ohif`, or unset OHIF_DIR", folder)
    return error_page(503, message=_("OHIF est activé (OHIF_DIR) mais son dossier ne contient pas la "
                                     "visionneuse : lancez « make ohif » sur le serveur."))


@bp.route("/app-config.js")
@roles_required(*READERS)
def config_script():
    from backoffice.dicomweb.access import base_url

    dicomweb = base_url()
    wado_uri = (dicomweb[: -len("/dicom-web")] if dicomweb.endswith("/dicom-web") else dicomweb) + "/wado"
    body = "window.config = " + json.dumps(app_config(dicomweb, wado_uri), indent=2) + ";\n"
    return Response(body, mimetype="text/javascript")


@bp.route("/", defaults={"path": ""})
@bp.route("/<path:path>")
@roles_required(*READERS)
def serve(path: str):
    """A file of the package; any other path is a route of OHIF's (``/ohif/viewer?StudyInstanceUIDs=``):
    its page. A missing file (a name with an extension) is 404, not the page."""
    from backoffice.security import csp_nonce

    folder = ohif_dir()
    index = folder / "index.html"
    if not index.is_file():
        return _missing(folder)
    name = path.rsplit("/", 1)[-1]
    if path and path != "index.html" and "." in name:
        target = (folder / path).resolve()
        if not target.is_relative_to(folder.resolve()) or not target.is_file():
            abort(404)
        suffix = target.suffix.lower()
        response = None
        if suffix in (".js", ".mjs", ".css", ".json"):
            stat = target.stat()
            data = _rewritten(str(target), stat.st_mtime_ns, stat.st_size)
            if data is not None:
                response = Response(data, mimetype=MIMETYPES[suffix])
        if response is None:
            response = send_from_directory(folder, path, mimetype=MIMETYPES.get(suffix))
        if suffix in (".js", ".mjs"):
            response.headers["Content-Security-Policy"] = WORKER_POLICY
        if CONTENT_NAMED.search(name):
            # The package's own code (no patient data), under a name that changes with its bytes: kept by
            # this browser only (private), so a radiologist's next visit does not download its 17 MB again.
            # The page, app-config.js and unhashed files stay no-store, like every page.
            response.headers["Cache-Control"] = KEPT
            g.keep_in_browser = True
        return response
    nonce = csp_nonce()
    response = Response(rewrite_index(index.read_text(encoding="utf-8"), nonce), mimetype="text/html")
    response.headers["Content-Security-Policy"] = page_policy(nonce)
    return response


def init_app(app: Flask) -> None:
    """Serve OHIF under ``/ohif/`` when ``OHIF_DIR`` is set; otherwise add no route (``/ohif/`` is 404)."""
    if app.config.get("OHIF_DIR"):
        app.register_blueprint(bp)
