"""Radiology API: priors, the paper reproduction, CD/USB media."""

from __future__ import annotations

import tempfile
from pathlib import Path

from flask import Response, current_app, jsonify, request, url_for

from archive_core.errors import NotFound
from backoffice.api import ApiError, api_route, current_api_user
from backoffice.extensions import db, facade

PAGE_SIZE = 100  # lists answer up to 100 items, with a "next" link when there are more

PRIOR_SCHEMA = {
    "200": {
        "description": "the patient's other studies, newest first",
        "content": {"application/json": {"schema": {"type": "object", "properties": {"items": {"type": "array", "items": {
            "type": "object",
            "properties": {
                "study_uid": {"type": "string"}, "study_date": {"type": ["string", "null"], "format": "date"},
                "modalities": {"type": "array", "items": {"type": "string"}},
                "description": {"type": ["string", "null"]},
                "body_parts": {"type": "array", "items": {"type": "string"}},
                "relevant": {"type": "boolean"},
            }}}}}}},
    },
    "404": {"description": "no such study"},
}


def _detail(study_uid: str):
    try:
        return facade().study_detail(study_uid)
    except NotFound:
        raise ApiError(404, "not_found", "no such study") from None


@api_route("/studies/<study_uid>/priors", roles=("radiologist",), summary="The patient's other studies, newest first",
           responses=PRIOR_SCHEMA,
           parameters=[{"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}}])
def study_priors(study_uid: str):
    detail = _detail(study_uid)
    offset = max(request.args.get("offset", 0, type=int), 0)
    priors = facade().prior_studies(study_uid)
    page = priors[offset : offset + PAGE_SIZE]
    facade().audit_now("study.priors", actor=current_api_user().login, patient_id=detail.study.patient_id,
                       study_uid=study_uid)
    body: dict = {"items": [
        {"study_uid": p.study_uid, "study_date": p.study_date, "modalities": list(p.modalities),
         "description": p.description, "body_parts": list(p.body_parts), "relevant": p.relevant}
        for p in page
    ]}
    if offset + PAGE_SIZE < len(priors):
        body["next"] = url_for("api.study_priors", study_uid=study_uid, offset=offset + PAGE_SIZE)
    return jsonify(body)


@api_route("/studies/<study_uid>/reproduction.pdf", roles=("front_desk", "radiologist"),
           summary="Paper reproduction (A4 PDF): practice, patient, exam, signed report, key images",
           parameters=[{"name": "per_page", "in": "query", "schema": {"type": "integer", "enum": [1, 2, 4, 6]}}],
           responses={"200": {"description": "PDF", "content": {"application/pdf": {}}}, "404": {"description": "no such study"}})
def study_reproduction(study_uid: str):
    from backoffice.radiology.reproduction import build_reproduction
    from backoffice.radiology.services import RadiologyError

    detail = _detail(study_uid)
    try:
        pdf = build_reproduction(db(), facade(), study_uid, per_page=request.args.get("per_page", 4, type=int))
    except RadiologyError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    facade().audit_now("study.print", actor=current_api_user().login, patient_id=detail.study.patient_id,
                       study_uid=study_uid, detail={"via": "api", "bytes": len(pdf)})
    return Response(pdf, mimetype="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="reproduction-{detail.study.accession_number or "examen"}.pdf"'})


@api_route("/studies/<study_uid>/media.zip", roles=("front_desk", "radiologist"),
           summary="CD/USB content (IHE PDI): DICOMDIR, README.TXT, DICOM files; ?prior=UID adds a prior",
           parameters=[{"name": "prior", "in": "query", "schema": {"type": "array", "items": {"type": "string"}}}],
           responses={"200": {"description": "zip", "content": {"application/zip": {}}}, "404": {"description": "no such study"}})
def study_media(study_uid: str):
    detail = _detail(study_uid)
    data = media_zip(detail, request.args.getlist("prior"))
    facade().audit_now("study.media", actor=current_api_user().login, patient_id=detail.study.patient_id,
                       study_uid=study_uid, detail={"via": "api", "priors": request.args.getlist("prior")})
    return Response(data, mimetype="application/zip",
                    headers={"Content-Disposition": 'attachment; filename="examen-dicom.zip"'})


def media_zip(detail, prior_uids: list[str]) -> bytes:
    """The study and those of *prior_uids* that belong to the same patient, as a zipped PDI file set."""
    from archive_core.media import build_media_zip
    from backoffice.radiology.reproduction import practice_identity

    allowed = {p.study_uid for p in facade().prior_studies(detail.study.study_uid)}
    unknown = [uid for uid in prior_uids if uid not in allowed]
    if unknown:
        raise ApiError(400, "bad_request", "a prior must be another study of the same patient")
    workdir = Path(tempfile.mkdtemp(prefix="media-", dir=_tmp_root()))
    return build_media_zip(facade(), [detail.study.study_uid, *prior_uids], workdir, practice=practice_identity())


def _tmp_root() -> str:
    root = Path(current_app.instance_path) / "tmp"
    root.mkdir(exist_ok=True)
    return str(root)
