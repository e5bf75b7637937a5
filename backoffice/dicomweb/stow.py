"""STOW-RS: storing instances (multipart/related) through the C-STORE ingest path."""

from __future__ import annotations

import json

from flask import Response, current_app, g, request

from archive_core.api import InvalidQuery
from backoffice.dicomweb.access import DICOM_JSON, DicomwebError, base_url, dicomweb_route
from backoffice.extensions import facade


DEFAULT_MAX_STOW_BYTES = 512 * 1024**2


def _store(study: str | None = None):
    content_type = request.headers.get("Content-Type", "")
    if content_type.split(";")[0].strip().lower() != "multipart/related":
        raise DicomwebError(415, 'STOW-RS takes multipart/related; type="application/dicom", '
                                 f"not {content_type[:80]!r}")
    limit = int(current_app.config.get("DICOMWEB_MAX_STOW_BYTES", DEFAULT_MAX_STOW_BYTES))
    length = request.content_length
    if length is None:
        raise DicomwebError(411, "STOW-RS needs a Content-Length")
    if length > limit:
        raise DicomwebError(413, f"the body is {length} bytes; at most {limit} are taken (DICOMWEB_MAX_STOW_BYTES)")
    if study is not None and not (set(study) <= set("0123456789.") and 0 < len(study) <= 64):
        raise DicomwebError(400, f"not a UID: {study[:80]!r}")
    # Read as it arrives, part by part into files (memory stays flat); Werkzeug's limited stream
    # ends at Content-Length, and a body cut short leaves the multipart without its closing
    # delimiter: a 400 with nothing stored.
    try:
        status, answer, reasons = facade().stow(request.stream, content_type, study_uid=study,
                                                actor=g.dicomweb_user, base_url=base_url())
    except InvalidQuery as exc:
        raise DicomwebError(400, str(exc)) from None
    g.dicomweb_detail.update(stored=len(answer.get("00081199", {}).get("Value", [])),
                             failed=len(answer.get("00081198", {}).get("Value", [])), status=status)
    response = Response(json.dumps(answer), status=status, mimetype=DICOM_JSON)
    if reasons:
        response.headers["Warning"] = "299 archivage " + json.dumps("; ".join(sorted(set(reasons)))[:500])
    return response


@dicomweb_route("/studies", "dicomweb.store", methods=["POST"], endpoint="store_instances")
def store_instances():
    return _store()


@dicomweb_route("/studies/<study>", "dicomweb.store", methods=["POST"], endpoint="store_study_instances")
def store_study_instances(study: str):
    return _store(study)
