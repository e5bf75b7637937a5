"""The web edge's response headers: CSP with a per-response nonce, nosniff, referrer policy, no caching."""

from __future__ import annotations

import secrets

from flask import Flask, g, request
from werkzeug.http import http_date


def csp_nonce() -> str:
    """The nonce of this response: inline ``<script>``/``<style>`` elements carry it, nothing else runs."""
    if "csp_nonce" not in g:
        g.csp_nonce = secrets.token_urlsafe(16)
    return g.csp_nonce


def content_security_policy(nonce: str, *, viewer: bool = False) -> str:
    """The page policy. ``viewer=True`` for the study viewer's page only: Cornerstone3D decodes in web
    workers started from our own files (``worker-src 'self' blob:``) that compile WebAssembly codecs
    (``'wasm-unsafe-eval'``, which allows WebAssembly compilation and nothing of JavaScript's eval)."""
    return "; ".join((
        "default-src 'self'",
        f"script-src 'self' 'nonce-{nonce}'" + (" 'wasm-unsafe-eval'" if viewer else ""),
        *(("worker-src 'self' blob:",) if viewer else ()),
        f"style-src 'self' 'nonce-{nonce}'",
        # style="" attributes cannot run code; the pages use a few for layout.
        "style-src-attr 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ))


# Chromium shows a PDF through an internal <embed> governed by the PDF response's own object-src and
# default-src (crbug.com/271452): a PDF gets only the clickjacking guard. Other non-HTML answers (images,
# JSON, archives, CSV) load nothing themselves.
PDF_POLICY = "frame-ancestors 'self'"
DATA_POLICY = "default-src 'none'; frame-ancestors 'none'"
# A dedicated worker runs under its own script's response policy: the viewer's decoding worker fetches
# and compiles its WebAssembly codecs from our origin, and nothing else.
VIEWER_WORKER_POLICY = ("default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; connect-src 'self'; "
                        "frame-ancestors 'none'")
VIEWER_STATIC = "/static/vendor/viewer/"


def policy_for(mimetype: str) -> str:
    if mimetype == "text/html":
        return content_security_policy(csp_nonce())
    if mimetype == "application/pdf":
        return PDF_POLICY
    return DATA_POLICY


# Added when the view set none of its own (a view may choose a stricter or a looser value).
_DEFAULTS = (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "same-origin"),
             ("X-Frame-Options", "DENY"))  # frame-ancestors for browsers without CSP level 2
# Pages, PDFs, images and media carry patient data and the desk PCs are shared: nothing is kept, neither by
# the browser nor by a proxy (Expires: the response's own date). Only the application's own static files
# may be cached: /static/, and a file a view marks ``g.keep_in_browser`` with its own Cache-Control
# (OHIF's content-named bundles, backoffice/radiology/ohif.py).
_NOT_KEPT = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))


def init_app(app: Flask) -> None:
    app.jinja_env.globals["csp_nonce"] = csp_nonce

    @app.after_request
    def _security_headers(response):
        # One pass over the response's headers, then each header added or replaced once: every answer (a
        # QIDO-RS search in a few milliseconds included) goes through here.
        headers = response.headers
        path = request.path
        present = {key.lower() for key, _ in headers}
        if "content-security-policy" not in present:
            if path.startswith(VIEWER_STATIC) and path.endswith(".js"):
                headers.add("Content-Security-Policy", VIEWER_WORKER_POLICY)
            else:
                headers.add("Content-Security-Policy", policy_for(response.mimetype))
        for name, value in _DEFAULTS:
            if name.lower() not in present:
                headers.add(name, value)
        if not path.startswith("/static/") and not g.get("keep_in_browser"):
            for name, value in _NOT_KEPT:
                if name.lower() in present:
                    headers[name] = value
                else:
                    headers.add(name, value)
            headers["Expires"] = http_date()
        return response
