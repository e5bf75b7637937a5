"""Patient search API: the same ranked matches as the pages (``GET /api/v1/patients?q=``)."""

from __future__ import annotations

from flask import jsonify, request

from backoffice.api import PAGE_SIZE, ApiError, api_route, current_api_user, page
from backoffice.extensions import db, facade

READERS = ("front_desk", "manager", "radiologist")


def _match_json(m) -> dict:
    return {"patient_id": m.patient_id, "issuer_of_patient_id": m.issuer_of_patient_id, "name": m.name,
            "dicom_name": m.dicom_name, "birth_date": m.birth_date, "sex": m.sex}


@api_route("/patients", roles=READERS,
           summary="Find patients: name words in any order, with or without accents, hyphens or capitals, "
                   "partial words, birth date (dd/mm/yyyy or ISO 8601) or patient ID; best matches first "
                   "(exact ID, exact name, family name, family name prefix, other). ``after`` is the number "
                   "of matches already returned (the ``next`` link carries it)",
           parameters=[{"name": "q", "in": "query", "required": True, "schema": {"type": "string"}},
                       {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                       {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": PAGE_SIZE}}],
           responses={"200": {"description": '{"items": [{"patient_id", "issuer_of_patient_id", "name" '
                                             '("DUPRÉ Jean"), "dicom_name", "birth_date" (ISO 8601), "sex"}], '
                                             '"next"}'},
                      "400": {"description": "q missing, or after/limit not integers"}})
def search_patients():
    text = (request.args.get("q") or "").strip()
    if not text:
        raise ApiError(400, "bad_request", "q is required")
    try:
        offset = max(int(request.args.get("after", 0)), 0)
        limit = min(max(int(request.args.get("limit", PAGE_SIZE)), 1), PAGE_SIZE)
    except ValueError as exc:
        raise ApiError(400, "bad_request", "after and limit must be integers") from exc
    found = facade().search_patients(db(), text, limit=limit, offset=offset)
    facade().audit_now("patient.search", actor=current_api_user().login,
                       detail={"results": len(found.items), "after": offset})
    return jsonify(page([_match_json(m) for m in found.items], offset + len(found.items), limit, found.has_more))
