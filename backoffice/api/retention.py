"""Retention API: today's answer per patient, deaths, legal holds, purge batches, corrections, audit search."""

from __future__ import annotations

from datetime import date

from flask import jsonify, request

from backoffice.api import (PAGE_PARAMETERS, ApiError, api_route, bp, current_api_user, error_response, json_body,
                            page, page_args)
from backoffice.extensions import db, facade
from backoffice.retention import batches, corrections, decisions, records
from backoffice.retention.clock import now_utc, today
from backoffice.retention.errors import ERRORS, RetentionError, message_for, problem_of

MANAGER = ("manager",)


@bp.errorhandler(RetentionError)
def _retention_error(exc: RetentionError):
    """The area's one API handler: roll back the request's work, answer from the error table."""
    db().rollback()
    problem = problem_of(exc)
    return error_response(problem.status, problem.code, message_for(exc))


def _errors(*keys: str, ok: dict | None = None) -> dict:
    """OpenAPI responses of a route: its success plus the table rows it may answer."""
    out = dict(ok or {"200": {"description": "OK"}})
    for key in keys:
        problem = ERRORS[key]
        entry = out.setdefault(str(problem.status), {"description": ""})
        entry["description"] = "; ".join(filter(None, [entry["description"], f"`{problem.code}` ({key})"]))
    return out


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
def patient_retention(patient_id: str):
    answer = decisions.patient_retention(db(), facade(), patient_id, today=today(),
                                         issuer=request.args.get("issuer"))
    facade().audit_now("retention.viewed", actor=current_api_user().login, patient_id=patient_id)
    return jsonify(decisions.as_json(answer))


@api_route("/patients/<path:patient_id>/death", methods=("PUT",), roles=MANAGER,
           summary="Record or correct a patient's death. Refused: a date in the future, before birth or before the "
                   "last visit (422). A date that ends retention sooner needs confirm_shortening: true (else 409 "
                   "shortening_needs_confirmation)",
           request_body={"type": "object", "required": ["date"],
                         "properties": {"date": {"type": "string", "format": "date"},
                                        "confirm_shortening": {"type": "boolean", "default": False}}},
           responses=_errors("patient_not_found", "death_in_future", "death_before_birth", "death_before_last_visit",
                             "shortening_needs_confirmation",
                             ok={"200": {"description": "today's answer, as GET .../retention"}}))
def record_death(patient_id: str):
    body = json_body()
    death = _date(body.get("date"), "date")
    confirm = body.get("confirm_shortening", False)
    if not isinstance(confirm, bool):
        raise ApiError(400, "bad_request", "confirm_shortening must be true or false")
    answer = records.record_death(db(), facade(), patient_id, death, actor=current_api_user().login,
                                  today=today(), confirm_shortening=confirm)
    return jsonify(decisions.as_json(answer))


@api_route("/retention/holds", methods=("POST",), roles=MANAGER, summary="Place a legal hold on a patient",
           request_body={"type": "object", "required": ["patient_id", "reason"],
                         "properties": {"patient_id": {"type": "string"}, "reason": {"type": "string"}}},
           responses={"201": {"description": "the hold"}})
def place_hold():
    body = json_body()
    patient_id = body.get("patient_id")
    if not isinstance(patient_id, str) or not patient_id:
        raise ApiError(400, "bad_request", "patient_id is required")
    hold = records.place_hold(db(), facade(), patient_id, _reason(body), actor=current_api_user().login,
                              today=today(), now=now_utc())
    return jsonify(decisions.hold_json(hold)), 201


@api_route("/retention/holds", roles=MANAGER, summary="Active legal holds, oldest first", parameters=PAGE_PARAMETERS)
def list_holds():
    after, limit = page_args()
    holds = records.active_holds(db(), after_id=after, limit=limit + 1)
    more = len(holds) > limit
    holds = holds[:limit]
    return jsonify(page([decisions.hold_json(h) for h in holds], holds[-1].id if holds else None, limit, more))


@api_route("/retention/holds/<int:hold_id>", methods=("DELETE",), roles=MANAGER, summary="Release a legal hold")
def release_hold(hold_id: int):
    hold = records.release_hold(db(), facade(), hold_id, actor=current_api_user().login, now=now_utc())
    return jsonify(decisions.hold_json(hold))


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
    found = list(db().scalars(query))
    more = len(found) > limit
    found = found[:limit]
    return jsonify(page([batches.batch_json(b) for b in found], found[-1].id if found else None, limit, more))


@api_route("/retention/batches/<int:batch_id>", roles=MANAGER, summary="One purge batch")
def get_batch(batch_id: int):
    return jsonify(batches.batch_json(batches.get_batch(db(), batch_id)))


@api_route("/retention/batches/<int:batch_id>/approve", methods=("POST",), roles=MANAGER,
           summary="Approve a proposed purge batch (reason required). The approver must be another person than the "
                   "requester (any manager for the scheduler's batches); today's facts of each item are recorded",
           request_body={"type": "object", "required": ["reason"], "properties": {"reason": {"type": "string"}}},
           responses=_errors("reason_required", "batch_not_found", "already_decided", "approver_is_requester",
                             "on_hold", "nothing_to_destroy"))
def approve_batch(batch_id: int):
    return _decide(batch_id, approve=True)


def _decide(batch_id: int, *, approve: bool):
    batch = batches.decide_batch(db(), facade(), batch_id, approve=approve, reason=_reason(json_body()),
                                 actor=current_api_user().login, today=today())
    return jsonify(batches.batch_json(batch))


@api_route("/retention/batches/<int:batch_id>/reject", methods=("POST",), roles=MANAGER,
           summary="Reject a proposed purge batch (reason required)",
           request_body={"type": "object", "required": ["reason"], "properties": {"reason": {"type": "string"}}},
           responses=_errors("reason_required", "batch_not_found", "already_decided"))
def reject_batch(batch_id: int):
    return _decide(batch_id, approve=False)


@api_route("/retention/batches/<int:batch_id>/execute", methods=("POST",), roles=MANAGER,
           summary="Run an approved purge batch. Refused unless approved, to the requester, and to the approver of a "
                   "scheduler's batch. Every item is checked again: if its owner, holds, retention or exams changed "
                   "since approval nothing is destroyed and the batch is sent back to proposed (409 "
                   "changed_since_approval)",
           responses=_errors("batch_not_found", "not_approved", "executor_is_requester", "executor_is_approver",
                             "changed_since_approval"))
def execute_batch(batch_id: int):
    from backoffice.retention.certificate import certificates_dir, render_certificate
    from backoffice.retention.purge import run_purge

    login = current_api_user().login
    # The purge owns its transactions (tombstones must be committed before files go): release
    # the request's write lock first; the request itself only read the token.
    db().rollback()
    batch = run_purge(facade(), batch_id, certificates=certificates_dir(), render=render_certificate,
                      actor=login, today=today())
    with facade().new_session() as s:
        return jsonify(batches.batch_json(batches.get_batch(s, batch.id)))


@api_route("/studies/<study_uid>/deletion-requests", methods=("POST",), roles=MANAGER,
           summary="Propose the destruction of a study sent by mistake (approval required)",
           request_body={"type": "object", "required": ["reason"], "properties": {"reason": {"type": "string"}}},
           responses=_errors("reason_required", "study_not_found", "already_requested",
                             ok={"201": {"description": "the proposed batch"}}))
def request_deletion(study_uid: str):
    batch = batches.request_study_deletion(db(), facade(), study_uid, _reason(json_body()),
                                           actor=current_api_user().login)
    return jsonify(batches.batch_json(batch)), 201


@api_route("/studies/<study_uid>/move", methods=("POST",), roles=MANAGER,
           summary="File a study under another patient (refused while the study, its patient or the target "
                   "patient is in a purge batch not yet executed or rejected)",
           request_body={"type": "object", "required": ["patient_id", "reason"],
                         "properties": {"patient_id": {"type": "string"}, "reason": {"type": "string"}}},
           responses=_errors("reason_required", "study_not_found", "patient_not_found", "study_in_open_batch",
                             "patient_in_open_batch", "correction_failed"))
def move_study(study_uid: str):
    body = json_body()
    target = body.get("patient_id")
    if not isinstance(target, str) or not target:
        raise ApiError(400, "bad_request", "patient_id is required")
    corrections.move_study(db(), facade(), study_uid, target, _reason(body), actor=current_api_user().login)
    return jsonify({"study_uid": study_uid, "patient_id": target})


@api_route("/patients/<path:patient_id>/merge", methods=("POST",), roles=MANAGER,
           summary="Merge a duplicate patient into another (refused while either has anything in a purge batch "
                   "not yet executed or rejected)",
           request_body={"type": "object", "required": ["into_patient_id", "reason"],
                         "properties": {"into_patient_id": {"type": "string"}, "reason": {"type": "string"}}},
           responses=_errors("reason_required", "patient_not_found", "patient_in_open_batch", "correction_failed"))
def merge_patient(patient_id: str):
    body = json_body()
    target = body.get("into_patient_id")
    if not isinstance(target, str) or not target:
        raise ApiError(400, "bad_request", "into_patient_id is required")
    moved = corrections.merge_patients(db(), facade(), patient_id, target, _reason(body), actor=current_api_user().login)
    return jsonify({"patient_id": target, "studies_moved": moved})
