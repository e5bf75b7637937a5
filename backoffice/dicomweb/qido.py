"""QIDO-RS: searches for studies, series and instances (DICOM JSON), matched as C-FIND matches."""

from __future__ import annotations

import json

from flask import Response, g, request

from archive_core.api import InvalidQuery
from backoffice.dicomweb.access import DICOM_JSON, DicomwebError, base_url, dicomweb_route
from backoffice.extensions import db, facade


def _search(resource: str, study: str | None = None, series: str | None = None):
    accept = request.headers.get("Accept", "")
    if accept and not any(t in accept for t in (DICOM_JSON, "application/json", "*/*")):
        raise DicomwebError(406, f"QIDO-RS answers {DICOM_JSON}, not {accept}")
    params = list(request.args.items(multi=True))
    scope = g.get("dicomweb_scope")
    if scope is not None and study is None:
        # A share link searches its studies only: matched by UID list (the caller's own
        # StudyInstanceUID, later, narrows it), and every answer checked below.
        params = [("StudyInstanceUID", "\\".join(sorted(scope)))] + params
    try:
        answers, ignored = facade().qido_search(db(), resource, params, base_url=base_url(),
                                                study_uid=study, series_uid=series)
    except InvalidQuery as exc:
        raise DicomwebError(400, str(exc)) from None
    if scope is not None:
        answers = [a for a in answers if (a.get("0020000D", {}).get("Value") or [None])[0] in scope]
    g.dicomweb_detail.update(query=request.query_string.decode("ascii", "replace")[:500], matches=len(answers))
    response = Response(json.dumps(answers), mimetype=DICOM_JSON)
    if ignored:
        response.headers["Warning"] = (
            f'299 archivage "these match keys or include fields were ignored: {", ".join(ignored)}"')
    return response


@dicomweb_route("/studies", "dicomweb.search", methods=["GET"])
def search_studies():
    return _search("studies")


@dicomweb_route("/series", "dicomweb.search", methods=["GET"])
def search_series():
    return _search("series")


@dicomweb_route("/instances", "dicomweb.search", methods=["GET"])
def search_instances():
    return _search("instances")


@dicomweb_route("/studies/<study>/series", "dicomweb.search", methods=["GET"])
def search_study_series(study: str):
    return _search("series", study)


@dicomweb_route("/studies/<study>/instances", "dicomweb.search", methods=["GET"])
def search_study_instances(study: str):
    return _search("instances", study)


@dicomweb_route("/studies/<study>/series/<series>/instances", "dicomweb.search", methods=["GET"])
def search_series_instances(study: str, series: str):
    return _search("instances", study, series)
