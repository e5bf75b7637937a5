"""The billing part of the JSON API (DESIGN.md public contract): exam groups, check-in, consent,
insurers and memberships here; invoices, payments, credit notes, their PDFs, claims and closings in
backoffice/api/invoices.py. Billing's errors are answered once, by this module's handler on the API
blueprint: the English message and the code, with the kind's status."""

from __future__ import annotations

from datetime import datetime

from flask import jsonify, request

from backoffice.api import ApiError, api_route, bp, current_api_user, json_body, page, page_args
from backoffice.billing import checkin, listings
from backoffice.billing.arrivals import sync_from_archive
from backoffice.billing import services as S
from backoffice.billing.errors import KINDS
from backoffice.billing.models import ExamGroup, Insurer, Membership
from backoffice.extensions import db, facade
from backoffice.patients import services as patients


DESK = ("front_desk", "manager")
MANAGER = ("manager",)


@bp.errorhandler(S.BillingError)
def _billing_error(exc: S.BillingError):
    status = next((code for kind, code in KINDS.items() if isinstance(exc, kind)), 400)
    error = {"code": exc.code, "message": exc.message}
    if isinstance(exc, checkin.NearMatch):
        error["candidates"] = [{"patient_id": c.patient_id, "name": c.name, "birth_date": c.birth_date}
                               for c in exc.candidates]
    response = jsonify({"error": error})
    response.status_code = status
    return response


def _utc_iso(moment: datetime) -> str:
    """ISO 8601 with its UTC offset (UtcDateTime columns give aware UTC values)."""
    return moment.isoformat()


def _int_field(body: dict, name: str) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(400, "bad_request", f"{name} must be an integer")
    return value


# -- exam groups ---------------------------------------------------------------------------------


PROCEDURE_STATUS = {"SCHEDULED": "scheduled", "IN PROGRESS": "in_progress", "COMPLETED": "completed",
                    "DISCONTINUED": "discontinued"}


def _group_json(group: ExamGroup, state: S.GroupState | None = None, steps: dict | None = None) -> dict:
    state = state or S.group_state(db(), group)
    if steps is None:
        steps = facade().procedure_steps(db(), [group.accession_number or ""])
    step = steps.get(group.accession_number or "")
    return {
        "id": group.id,
        "patient_id": group.patient_id,
        "patient_name": group.patient_name,
        "visit_date": group.visit_date.isoformat(),
        "exam_group": group.exam_group,
        "study_uids": [s.study_uid for s in group.studies],
        "accession_number": group.accession_number,
        "fee_cents": state.fee_cents,
        "consent": group.consent,
        "invoice_id": state.invoice_id,
        "state": state.state,
        # The modality's progress (worklist item and MPPS): null when nothing was scheduled.
        "procedure_status": PROCEDURE_STATUS.get(step.status) if step else None,
    }


@api_route(
    "/exam-groups", roles=DESK, summary="Billable units: one per patient, visit day and exam group",
    parameters=[{"name": "date", "in": "query", "schema": {"type": "string", "format": "date"}},
                {"name": "patient_id", "in": "query", "schema": {"type": "string"}},
                {"name": "after", "in": "query", "schema": {"type": "integer"}}],
)
def list_exam_groups():
    visit_date = S.parse_date(request.args["date"], "date") if request.args.get("date") else None
    patient_id = request.args.get("patient_id") or None
    if visit_date is None and patient_id is None:
        visit_date = S.paris_today()
    after, limit = page_args()
    sync_from_archive(visit_date=visit_date, patient_id=patient_id)
    groups = S.list_exam_groups(db(), visit_date=visit_date, patient_id=patient_id, after_id=after, limit=limit + 1)
    more = len(groups) > limit
    groups = groups[:limit]
    facade().audit_now("billing.exam_groups.viewed", actor=current_api_user().login, patient_id=patient_id,
                       detail={"date": visit_date.isoformat() if visit_date else None, "count": len(groups)})
    states = S.group_states(db(), groups)
    steps = facade().procedure_steps(db(), [g.accession_number for g in groups if g.accession_number])
    return jsonify(page([_group_json(g, states[g.id], steps) for g in groups], groups[-1].id if groups else None, limit,
                         more))


@api_route(
    "/exam-groups", methods=("POST",), roles=DESK,
    summary="Check-in: the exam group of a patient, day and exam group, and its worklist item",
    request_body={"type": "object", "required": ["patient_id", "exam_group"],
                  "properties": {"patient_id": {"type": "string"}, "visit_date": {"type": "string"},
                                 "exam_group": {"type": "string"},
                                 "patient_name": {"type": "string", "description": "as typed: NOM Prénom"},
                                 "patient_birth_date": {"type": "string", "description": "YYYY-MM-DD"},
                                 "patient_sex": {"type": "string"}, "patient_address": {"type": "string"},
                                 "accession_number": {"type": "string"}, "modality": {"type": "string"},
                                 "station_ae_title": {"type": "string"},
                                 "scheduled_time": {"type": "string", "description": "HH:MM"},
                                 "confirm_new_patient": {"type": "boolean"}}},
    responses={"201": {"description": "Created (with its worklist item)"},
               "200": {"description": "This patient already has this exam group that day: that group"},
               "409": {"description": "near_match: a known patient has this name; error.candidates lists them"}},
)
def create_exam_group():
    body = json_body()
    for name in ("patient_id", "patient_name", "patient_birth_date", "patient_sex", "patient_address",
                 "accession_number", "modality", "station_ae_title", "scheduled_time"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise ApiError(400, "bad_request", f"{name} must be a string")
    if not isinstance(body.get("patient_id"), str):
        raise ApiError(400, "bad_request", "patient_id must be a string")
    visit_date = S.parse_date(body["visit_date"], "visit_date") if body.get("visit_date") else S.paris_today()
    birth = S.parse_date(body["patient_birth_date"], "patient_birth_date").strftime("%Y%m%d") \
        if body.get("patient_birth_date") else None
    result = checkin.check_in(
        patient_id=body["patient_id"], visit_date=visit_date, exam_group=str(body.get("exam_group", "")),
        actor=current_api_user().login, patient_name=body.get("patient_name"), patient_birth_date=birth,
        patient_sex=body.get("patient_sex"), patient_address=body.get("patient_address"),
        accession_number=body.get("accession_number"), modality=body.get("modality"),
        station_ae_title=body.get("station_ae_title"), start_time=checkin.parse_time(body.get("scheduled_time")),
        confirm_new_patient=body.get("confirm_new_patient") is True,
    )
    group = result.group
    if result.created:
        facade().audit(db(), "billing.exam_group.created", actor=current_api_user().login,
                       patient_id=group.patient_id, detail={"exam_group_id": group.id,
                                                            "accession_number": group.accession_number})
    return jsonify({**_group_json(group), "created": result.created}), 201 if result.created else 200


@api_route("/exam-groups/<int:group_id>/consent", methods=("POST",), roles=DESK,
           summary="Record that the price was shown and whether the patient accepted",
           request_body={"type": "object", "required": ["accepted"], "properties": {"accepted": {"type": "boolean"}}})
def record_consent(group_id: int):
    body = json_body()
    if not isinstance(body.get("accepted"), bool):
        raise ApiError(400, "bad_request", "accepted must be true or false")
    group = S.record_consent(db(), group_id, accepted=body["accepted"], recorded_by=current_api_user().login)
    facade().audit(db(), "billing.consent", actor=current_api_user().login, patient_id=group.patient_id,
                   detail={"exam_group_id": group.id, "accepted": body["accepted"]})
    return jsonify(_group_json(group))


# -- insurers and memberships --------------------------------------------------------------------


def _insurer_json(insurer: Insurer) -> dict:
    return {"id": insurer.id, "name": insurer.name, "amc_number": insurer.amc_number,
            "coverage_bp": insurer.coverage_bp, "flat_cents": insurer.flat_cents,
            "annual_cap_cents": insurer.annual_cap_cents, "third_party_payment": insurer.third_party_payment,
            "retired": insurer.retired_at is not None,
            "retired_at": _utc_iso(insurer.retired_at) if insurer.retired_at else None}


INSURER_SCHEMA = {"name": {"type": "string"}, "amc_number": {"type": "string"},
                  "coverage_bp": {"type": "integer", "minimum": 0, "maximum": 10000,
                                  "description": "basis points: 5000 = 50 %"},
                  "flat_cents": {"type": "integer"}, "annual_cap_cents": {"type": ["integer", "null"]},
                  "third_party_payment": {"type": "boolean"}}


@api_route("/insurers", methods=("POST",), roles=MANAGER, summary="Register a mutual insurer (AMC)",
           request_body={"type": "object", "required": ["name", "amc_number"], "properties": INSURER_SCHEMA},
           responses={"201": {"description": "Created"}})
def create_insurer():
    body = json_body()
    insurer = S.create_insurer(
        db(), name=body.get("name"), amc_number=body.get("amc_number"), coverage_bp=body.get("coverage_bp", 0),
        flat_cents=body.get("flat_cents", 0), annual_cap_cents=body.get("annual_cap_cents"),
        third_party_payment=body.get("third_party_payment", False),
    )
    facade().audit(db(), "billing.insurer.created", actor=current_api_user().login,
                   detail={"insurer_id": insurer.id, **{k: getattr(insurer, k) for k in S.INSURER_FIELDS}})
    return jsonify(_insurer_json(insurer)), 201


@api_route("/insurers", roles=DESK, summary="Mutual insurers (retired ones too, marked \"retired\")")
def list_insurers():
    return jsonify({"items": [_insurer_json(i) for i in listings.insurers(db())]})


@api_route("/insurers/<int:insurer_id>", methods=("PATCH",), roles=MANAGER,
           summary="Correct an insurer (fields omitted keep their value); issued invoices keep their split",
           request_body={"type": "object", "properties": INSURER_SCHEMA},
           responses={"200": {"description": "The insurer, and what changed"}})
def update_insurer(insurer_id: int):
    body = json_body()
    insurer = S.get_insurer(db(), insurer_id)
    fields = {key: body[key] if key in body else getattr(insurer, key) for key in S.INSURER_FIELDS}
    insurer, changes = S.update_insurer(db(), insurer_id, **fields)
    if changes:
        facade().audit(db(), "billing.insurer.updated", actor=current_api_user().login,
                       detail={"insurer_id": insurer.id, "changes": changes})
    return jsonify({**_insurer_json(insurer), "changes": changes})


@api_route("/insurers/<int:insurer_id>/retire", methods=("POST",), roles=MANAGER,
           summary="Retire an insurer (no new memberships; recorded ones keep their dates), or bring it back",
           request_body={"type": "object", "properties": {"retired": {"type": "boolean", "default": True}}})
def retire_insurer(insurer_id: int):
    body = json_body()
    retired = body.get("retired", True)
    if not isinstance(retired, bool):
        raise ApiError(400, "bad_request", "retired must be true or false")
    insurer = S.retire_insurer(db(), insurer_id, retired=retired)
    facade().audit(db(), "billing.insurer.retired" if retired else "billing.insurer.restored",
                   actor=current_api_user().login, detail={"insurer_id": insurer.id, "name": insurer.name})
    return jsonify(_insurer_json(insurer))


def _membership_json(membership: Membership) -> dict:
    return {"id": membership.id, "patient_id": membership.patient_id, "insurer_id": membership.insurer_id,
            "insurer_name": membership.insurer.name, "member_number": membership.member_number,
            "valid_from": membership.valid_from.isoformat(),
            "valid_to": membership.valid_to.isoformat() if membership.valid_to else None,
            "payer_name": membership.payer_name}


def _known_patient(patient_id: str) -> None:
    if not patients.is_known(db(), facade(), patient_id):
        raise S.NotFound("no patient with this ID (neither checked in nor in the archive)", code="unknown_patient")


@api_route("/patients/<path:patient_id>/memberships", roles=DESK,
           summary="A patient's memberships, current and past, newest first")
def list_memberships(patient_id: str):
    _known_patient(patient_id)
    return jsonify({"items": [_membership_json(m) for m in listings.memberships_of(db(), patient_id)]})


@api_route("/patients/<path:patient_id>/memberships", methods=("POST",), roles=DESK,
           summary="A patient's membership of an insurer (patient_id: the URL-encoded DICOM Patient ID; "
                   "404 unknown_patient for an ID nobody has)",
           request_body={"type": "object", "required": ["insurer_id", "member_number", "valid_from"],
                         "properties": {"insurer_id": {"type": "integer"}, "member_number": {"type": "string"},
                                        "valid_from": {"type": "string"}, "valid_to": {"type": "string"},
                                        "payer_name": {"type": "string"}}},
           responses={"201": {"description": "Created"}})
def add_membership(patient_id: str):
    body = json_body()
    _known_patient(patient_id)
    membership = S.add_membership(
        db(), patient_id=patient_id, insurer_id=_int_field(body, "insurer_id"),
        member_number=body.get("member_number"), valid_from=S.parse_date(body.get("valid_from"), "valid_from"),
        valid_to=S.parse_date(body["valid_to"], "valid_to") if body.get("valid_to") else None,
        payer_name=body.get("payer_name"),
    )
    facade().audit(db(), "billing.membership.created", actor=current_api_user().login, patient_id=patient_id,
                   detail={"membership_id": membership.id, "insurer_id": membership.insurer_id})
    return jsonify(_membership_json(membership)), 201


@api_route("/patients/<path:patient_id>/memberships/<int:membership_id>/end", methods=("POST",), roles=DESK,
           summary="End a membership on valid_to (its last day); issued invoices keep their split",
           request_body={"type": "object", "required": ["valid_to"], "properties": {"valid_to": {"type": "string"}}})
def end_membership(patient_id: str, membership_id: int):
    body = json_body()
    _known_patient(patient_id)
    membership = S.end_membership(db(), membership_id, patient_id=patient_id,
                                  valid_to=S.parse_date(body.get("valid_to"), "valid_to"))
    facade().audit(db(), "billing.membership.ended", actor=current_api_user().login, patient_id=patient_id,
                   detail={"membership_id": membership.id, "valid_to": membership.valid_to.isoformat()})
    return jsonify(_membership_json(membership))


@api_route("/exam-groups/<int:group_id>/split-preview", roles=DESK,
           summary="The split the group's invoice would carry if issued now (nothing written; 409 no_fee)")
def split_preview(group_id: int):
    preview = S.preview_split(db(), group_id)
    return jsonify({"total_cents": preview.total_cents, "insurer_cents": preview.insurer_cents,
                    "patient_cents": preview.patient_cents, "insurer_id": preview.insurer_id,
                    "insurer_name": preview.insurer_name, "coverage_bp": preview.coverage_bp,
                    "member_number": preview.member_number, "third_party_payment": preview.third_party_payment,
                    "to_collect_cents": preview.to_collect_cents})
