"""Radiology API: priors, the paper reproduction, CD/USB media."""

from __future__ import annotations

import tempfile
from pathlib import Path

from flask import Response, current_app, jsonify, request, url_for

from archive_core.api import NotFound
from backoffice.api import ApiError, api_route, current_api_user, json_body
from backoffice.extensions import db, facade
from backoffice.errors import db_int

PAGE_SIZE = 100  # lists answer up to 100 items, with a "next" link when there are more

PRIOR_ITEM = {
    "type": "object",
    "properties": {
        "study_uid": {"type": "string"},
        "study_date": {"type": ["string", "null"], "format": "date"},
        "modalities": {"type": "array", "items": {"type": "string"}},
        "description": {"type": ["string", "null"]},
        "body_parts": {"type": "array", "items": {"type": "string"}},
        "relevant": {"type": "boolean"},
    },
}
PRIOR_SCHEMA = {
    "200": {
        "description": "the patient's other studies, newest first",
        "content": {"application/json": {"schema": {"type": "object", "properties": {
            "items": {"type": "array", "items": PRIOR_ITEM}, "next": {"type": "string"}}}}},
    },
    "404": {"description": "no such study"},
}


def _detail(study_uid: str):
    try:
        return facade().study_detail(db(), study_uid)
    except NotFound:
        raise ApiError(404, "not_found", "no such study") from None


@api_route("/studies/<study_uid>/priors", roles=("radiologist",), summary="The patient's other studies, newest first",
           responses=PRIOR_SCHEMA,
           parameters=[{"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}}])
def study_priors(study_uid: str):
    detail = _detail(study_uid)
    offset = max(request.args.get("offset", 0, type=db_int), 0)
    priors = facade().prior_studies(db(), study_uid)
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
           responses={"200": {"description": "PDF", "content": {"application/pdf": {}}},
                      "404": {"description": "no such study"}})
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
                    headers={"Content-Disposition":
                             f'inline; filename="reproduction-{detail.study.accession_number or "examen"}.pdf"'})


@api_route("/studies/<study_uid>/media.zip", roles=("front_desk", "radiologist"),
           summary="CD/USB content (IHE PDI): DICOMDIR, README.TXT, DICOM files; ?prior=UID adds a prior",
           parameters=[{"name": "prior", "in": "query", "schema": {"type": "array", "items": {"type": "string"}}}],
           responses={"200": {"description": "zip", "content": {"application/zip": {}}},
                      "404": {"description": "no such study"}})
def study_media(study_uid: str):
    detail = _detail(study_uid)
    data = media_zip(detail, request.args.getlist("prior"))
    facade().audit_now("study.media", actor=current_api_user().login, patient_id=detail.study.patient_id,
                       study_uid=study_uid, detail={"via": "api", "priors": request.args.getlist("prior")})
    return Response(data, mimetype="application/zip",
                    headers={"Content-Disposition": 'attachment; filename="examen-dicom.zip"'})


def media_zip(detail, prior_uids: list[str]) -> bytes:
    """The study and those of *prior_uids* that belong to the same patient, as a zipped PDI file set."""
    from backoffice.practice import practice_identity

    allowed = {p.study_uid for p in facade().prior_studies(db(), detail.study.study_uid)}
    unknown = [uid for uid in prior_uids if uid not in allowed]
    if unknown:
        raise ApiError(400, "bad_request", "a prior must be another study of the same patient")
    workdir = Path(tempfile.mkdtemp(prefix="media-", dir=_tmp_root()))
    return facade().media_zip(db(), [detail.study.study_uid, *prior_uids], workdir, practice=practice_identity())


def _tmp_root() -> str:
    root = Path(current_app.instance_path) / "tmp"
    root.mkdir(exist_ok=True)
    return str(root)


# -- reports and key images --------------------------------------------------------------------------


def _report_json(report) -> dict:
    return {
        "version": report.version, "status": report.status, "indication": report.indication,
        "technique": report.technique, "findings": report.findings, "conclusion": report.conclusion,
        "author": report.author, "amendment_reason": report.amendment_reason or None,
        "signed_by": report.signed_by, "signed_at": report.signed_at.isoformat() if report.signed_at else None,
    }


@api_route("/studies/<study_uid>/reports", roles=("front_desk", "radiologist"),
           summary="The study's report versions, newest first, and reports received over DICOM")
def study_reports(study_uid: str):
    from backoffice.radiology import services

    detail = _detail(study_uid)
    facade().audit_now("report.view", actor=current_api_user().login, patient_id=detail.study.patient_id,
                       study_uid=study_uid, detail={"via": "api"})
    return jsonify({
        "items": [_report_json(r) for r in services.reports_of(db(), study_uid)],
        "dicom_documents": [{"sop_instance_uid": d.sop_instance_uid, "kind": d.kind, "title": d.title,
                             "content_date": d.content_date, "text": d.text, "verified": d.verified}
                            for d in facade().study_documents(db(), study_uid)],
    })


REPORT_BODY = {"type": "object", "properties": {
    "indication": {"type": "string"}, "technique": {"type": "string"}, "findings": {"type": "string"},
    "conclusion": {"type": "string"}, "amendment_reason": {"type": "string"}}}


@api_route("/studies/<study_uid>/reports/draft", methods=("PUT",), roles=("radiologist",),
           summary="Write the draft (a new version amending the signed one needs amendment_reason)",
           request_body=REPORT_BODY, responses={"200": {"description": "updated"}, "201": {"description": "created"}})
def study_report_draft(study_uid: str):
    from backoffice.api import json_body
    from backoffice.radiology import services

    detail = _detail(study_uid)
    body = json_body()
    fields = {k: str(body[k]) for k in services.REPORT_FIELDS if k in body}
    existed = services.current_draft(db(), study_uid) is not None
    try:
        draft = services.save_draft(db(), study_uid, author=current_api_user().login,
                                    amendment_reason=str(body.get("amendment_reason") or ""), **fields)
    except services.RadiologyError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    facade().audit(db(), "report.draft", actor=current_api_user().login, patient_id=detail.study.patient_id,
                   study_uid=study_uid, detail={"version": draft.version, "via": "api"})
    return jsonify(_report_json(draft)), 200 if existed else 201


@api_route("/studies/<study_uid>/reports/sign", methods=("POST",), roles=("radiologist",),
           summary="Sign the draft: it is frozen from then on")
def study_report_sign(study_uid: str):
    from backoffice.radiology import services

    detail = _detail(study_uid)
    try:
        report = services.sign_report(db(), study_uid, signed_by=current_api_user().login,
                                      signer_name=current_api_user().full_name, signer_rpps=current_api_user().rpps)
    except services.RadiologyError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    facade().audit(db(), "report.sign", actor=current_api_user().login, patient_id=detail.study.patient_id,
                   study_uid=study_uid, detail={"version": report.version, "via": "api"})
    return jsonify(_report_json(report))


@api_route("/studies/<study_uid>/key-images", methods=("POST",), roles=("front_desk", "radiologist"),
           summary="Choose an image (with its window) for the paper reproduction",
           request_body={"type": "object", "required": ["sop_instance_uid"], "properties": {
               "sop_instance_uid": {"type": "string"}, "frame": {"type": "integer"},
               "window_center": {"type": "number"}, "window_width": {"type": "number"}}},
           responses={"201": {"description": "chosen"}})
def study_key_image(study_uid: str):
    from backoffice.api import json_body
    from backoffice.radiology import services

    _detail(study_uid)
    body = json_body()
    sop_uid = str(body.get("sop_instance_uid") or "")
    try:
        if facade().instance_study_uid(db(), sop_uid) != study_uid:
            raise ApiError(400, "bad_request", "the image is not in this study")
        wc, ww = body.get("window_center"), body.get("window_width")
        key = services.add_key_image(db(), study_uid, sop_uid, chosen_by=current_api_user().login,
                                     frame=int(body.get("frame") or 0),
                                     window_center=float(wc) if wc is not None else None,
                                     window_width=float(ww) if ww is not None else None)
    except NotFound:
        raise ApiError(400, "bad_request", "no such image") from None
    except (TypeError, ValueError):
        raise ApiError(400, "bad_request", "frame and window values are numbers") from None
    except services.RadiologyError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return jsonify({"position": key.position + 1, "sop_instance_uid": sop_uid, "frame": key.frame,
                    "window_center": key.window_center, "window_width": key.window_width}), 201


SEND_JOB_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "peer": {"type": "string"},
        "status": {"type": "string", "enum": ["queued", "running", "done", "failed"]},
        "sent": {"type": "integer", "description": "instances the peer answered success (0x0000)"},
        "failed": {"type": "integer", "description": "instances answered anything else (warnings included)"},
        "message": {"type": "string"},
        "failures": {"type": "array", "items": {"type": "object", "properties": {
            "sop_instance_uid": {"type": "string"},
            "status": {"type": ["integer", "null"], "description": "the peer's C-STORE status; null: no answer"},
            "comment": {"type": "string", "description": "the peer's Error Comment, or why nothing was sent"}}}},
    },
}


@api_route("/studies/<study_uid>/send", methods=("POST",), roles=("radiologist",),
           summary="Send the study to a registered workstation (a background send job)",
           request_body={"type": "object", "required": ["peer"], "properties": {"peer": {"type": "string"}}},
           responses={"202": {"description": "job queued", "content": {"application/json": {"schema": {
               "type": "object", "properties": {"id": {"type": "integer"}, "status": {"type": "string"}}}}}},
               "400": {"description": "unknown peer"}, "404": {"description": "no such study"}})
def study_send(study_uid: str):
    from backoffice.radiology.sending import create_send_job, start_in_background

    detail = _detail(study_uid)
    peer = facade().find_peer(db(), str(json_body().get("peer", "")))
    if peer is None:
        raise ApiError(400, "unknown_peer", "peer must be a registered AE title")
    user = current_api_user().login
    job = create_send_job(db(), peer.ae_title, [study_uid], requested_by=user,
                          total=facade().count_instances(db(), [study_uid]))
    facade().audit(db(), "study.send.request", actor=user, patient_id=detail.study.patient_id, study_uid=study_uid,
                   detail={"peer": peer.ae_title, "job": job.id, "via": "api"})
    response = jsonify({"id": job.id, "status": job.status})
    response.status_code = 202
    job_id, the_facade = job.id, facade()
    # Started once the request has committed the job, so that the job's thread sees it.
    response.call_on_close(lambda: start_in_background(the_facade, job_id))
    return response


@api_route("/send-jobs/<int:job_id>", roles=("radiologist",), summary="A send job: progress and each failure",
           responses={"200": {"description": "the job", "content": {"application/json": {"schema": SEND_JOB_SCHEMA}}},
                      "404": {"description": "no such job"}})
def send_job(job_id: int):
    from backoffice.radiology.models import SendJob
    from backoffice.radiology.sending import job_json

    job = db().get(SendJob, job_id)
    if job is None:
        raise ApiError(404, "not_found", "no such send job")
    return jsonify(job_json(db(), job))
