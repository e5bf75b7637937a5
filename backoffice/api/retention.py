"""Retention API: today's answer per patient, deaths, legal holds, purge batches, corrections, audit search."""

from __future__ import annotations

from datetime import date
from functools import wraps

from flask import jsonify, request

from backoffice.api import PAGE_PARAMETERS, ApiError, api_route, current_api_user, json_body, page, page_args
from backoffice.extensions import db, facade
from backoffice.retention import services
from backoffice.retention.services import RetentionError, today_paris

MANAGER = ("manager",)


def _domain_errors(view):
    @wraps(view)
    def wrapped(*args, **kwargs):
        try:
            return view(*args, **kwargs)
        except RetentionError as exc:
            raise ApiError(exc.status, exc.code, str(exc)) from exc

    return wrapped


def _date(value, name: str) -> date:
    try:
        return date.fromisoformat(str(value))
    except (TypeError, ValueError):
        raise ApiError(400, "bad_request", f"{name} must be a date YYYY-MM-DD") from None


def _reason(body: dict) -> str:
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise ApiError(400, "bad_request", "reason is required")
    return reason


@api_route("/patients/<path:patient_id>/retention", roles=MANAGER, summary="Today's retention answer for a patient",
           responses={"200": {"description": "keep_until, basis, explanation, tier, on_hold, needs_review"}})
@_domain_errors
def patient_retention(patient_id: str):
    answer = services.patient_retention(db(), facade(), patient_id, today=today_paris(),
                                        issuer=request.args.get("issuer"))
    facade().audit_now("retention.viewed", actor=current_api_user().login, patient_id=patient_id)
    return jsonify(services.as_json(answer))


@api_route("/patients/<path:patient_id>/death", methods=("PUT",), roles=MANAGER, summary="Record a patient's death",
           request_body={"type": "object", "required": ["date"], "properties": {"date": {"type": "string", "format": "date"}}})
@_domain_errors
def record_death(patient_id: str):
    death = _date(json_body().get("date"), "date")
    answer = services.record_death(db(), facade(), patient_id, death, actor=current_api_user().login,
                                   today=today_paris())
    return jsonify(services.as_json(answer))


@api_route("/retention/holds", methods=("POST",), roles=MANAGER, summary="Place a legal hold on a patient",
           request_body={"type": "object", "required": ["patient_id", "reason"],
                         "properties": {"patient_id": {"type": "string"}, "reason": {"type": "string"}}},
           responses={"201": {"description": "the hold"}})
@_domain_errors
def place_hold():
    body = json_body()
    patient_id = body.get("patient_id")
    if not isinstance(patient_id, str) or not patient_id:
        raise ApiError(400, "bad_request", "patient_id is required")
    hold = services.place_hold(db(), facade(), patient_id, _reason(body), actor=current_api_user().login,
                               today=today_paris())
    return jsonify(services.hold_json(hold)), 201


@api_route("/retention/holds", roles=MANAGER, summary="Active legal holds, oldest first", parameters=PAGE_PARAMETERS)
def list_holds():
    after, limit = page_args()
    holds = services.active_holds(db(), after_id=after, limit=limit + 1)
    more = len(holds) > limit
    holds = holds[:limit]
    return jsonify(page([services.hold_json(h) for h in holds], holds[-1].id if holds else None, limit, more))


@api_route("/retention/holds/<int:hold_id>", methods=("DELETE",), roles=MANAGER, summary="Release a legal hold")
@_domain_errors
def release_hold(hold_id: int):
    hold = services.release_hold(db(), facade(), hold_id, actor=current_api_user().login)
    return jsonify(services.hold_json(hold))


@api_route("/retention/batches", roles=MANAGER, summary="Purge batches, newest first (filter: ?status=proposed)",
           parameters=[{"name": "status", "in": "query", "schema": {"type": "string"}}, *PAGE_PARAMETERS])
def list_batches():
    from sqlalchemy import select

    from backoffice.retention.models import PurgeBatch

    after, limit = page_args()
    query = select(PurgeBatch).order_by(PurgeBatch.id.desc()).limit(limit + 1)
    if after:
        query = query.where(PurgeBatch.id < after)
    if request.args.get("status"):
        query = query.where(PurgeBatch.status == request.args["status"])
    batches = list(db().scalars(query))
    more = len(batches) > limit
    batches = batches[:limit]
    return jsonify(page([services.batch_json(b) for b in batches], batches[-1].id if batches else None, limit, more))


@api_route("/retention/batches/<int:batch_id>", roles=MANAGER, summary="One purge batch")
@_domain_errors
def get_batch(batch_id: int):
    return jsonify(services.batch_json(services.get_batch(db(), batch_id)))


@api_route("/retention/batches/<int:batch_id>/approve", methods=("POST",), roles=MANAGER,
           summary="Approve a proposed purge batch (reason required)",
           request_body={"type": "object", "required": ["reason"], "properties": {"reason": {"type": "string"}}})
@_domain_errors
def approve_batch(batch_id: int):
    return _decide(batch_id, approve=True)


def _decide(batch_id: int, *, approve: bool):
    batch = services.decide_batch(db(), facade(), batch_id, approve=approve, reason=_reason(json_body()),
                                  actor=current_api_user().login)
    return jsonify(services.batch_json(batch))


@api_route("/retention/batches/<int:batch_id>/reject", methods=("POST",), roles=MANAGER,
           summary="Reject a proposed purge batch (reason required)",
           request_body={"type": "object", "required": ["reason"], "properties": {"reason": {"type": "string"}}})
@_domain_errors
def reject_batch(batch_id: int):
    return _decide(batch_id, approve=False)


@api_route("/retention/batches/<int:batch_id>/execute", methods=("POST",), roles=MANAGER,
           summary="Run an approved purge batch (refused unless approved)")
@_domain_errors
def execute_batch(batch_id: int):
    from backoffice.retention.certificate import certificates_dir, render_certificate

    login = current_api_user().login
    # The purge owns its transactions (tombstones must be committed before files go): release
    # the request's write lock first; the request itself only read the token.
    db().rollback()
    batch = services.run_purge(facade(), batch_id, certificates=certificates_dir(), render=render_certificate,
                               actor=login)
    with facade().new_session() as s:
        return jsonify(services.batch_json(services.get_batch(s, batch.id)))


@api_route("/studies/<study_uid>/deletion-requests", methods=("POST",), roles=MANAGER,
           summary="Propose the destruction of a study sent by mistake (approval required)",
           request_body={"type": "object", "required": ["reason"], "properties": {"reason": {"type": "string"}}},
           responses={"201": {"description": "the proposed batch"}})
@_domain_errors
def request_deletion(study_uid: str):
    batch = services.request_study_deletion(db(), facade(), study_uid, _reason(json_body()),
                                            actor=current_api_user().login)
    return jsonify(services.batch_json(batch)), 201


@api_route("/studies/<study_uid>/move", methods=("POST",), roles=MANAGER,
           summary="File a study under another patient",
           request_body={"type": "object", "required": ["patient_id", "reason"],
                         "properties": {"patient_id": {"type": "string"}, "reason": {"type": "string"}}})
@_domain_errors
def move_study(study_uid: str):
    body = json_body()
    target = body.get("patient_id")
    if not isinstance(target, str) or not target:
        raise ApiError(400, "bad_request", "patient_id is required")
    services.move_study(db(), facade(), study_uid, target, _reason(body), actor=current_api_user().login)
    return jsonify({"study_uid": study_uid, "patient_id": target})


@api_route("/patients/<path:patient_id>/merge", methods=("POST",), roles=MANAGER,
           summary="Merge a duplicate patient into another",
           request_body={"type": "object", "required": ["into_patient_id", "reason"],
                         "properties": {"into_patient_id": {"type": "string"}, "reason": {"type": "string"}}})
@_domain_errors
def merge_patient(patient_id: str):
    body = json_body()
    target = body.get("into_patient_id")
    if not isinstance(target, str) or not target:
        raise ApiError(400, "bad_request", "into_patient_id is required")
    moved = services.merge_patients(db(), facade(), patient_id, target, _reason(body), actor=current_api_user().login)
    return jsonify({"patient_id": target, "studies_moved": moved})
