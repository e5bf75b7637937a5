"""DIMSE handlers of the modality worklist (C-FIND, PS3.4 K) and of MPPS (N-CREATE/N-SET, PS3.4 F.7).

Both answer registered peers only, whatever DICOM_QR_FROM_UNKNOWN_AES or DICOM_STORE_FROM_UNKNOWN_AES
say: a worklist carries the day's patients, and a performed step changes what the desk sees. The
application log gets AE titles, UIDs and counts; the audit trail records each query and step.
"""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from archive_core import audit
from archive_core import worklist as W
from archive_core import worklist_find
from archive_core.db import read_session, write_session
from archive_core.errors import InvalidQuery
from archive_core.net.replies import FindAnswers, failure, failure_for
from archive_core.net.status import IDENTIFIER_INVALID, PENDING, PENDING_UNMATCHED_KEYS, PROCESSING_FAILURE, \
    REFUSED_NOT_AUTHORIZED, SUCCESS

log = logging.getLogger(__name__)

MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
MODALITY_PERFORMED_PROCEDURE_STEP = "1.2.840.10008.3.1.2.3.3"

# N-CREATE / N-SET statuses (PS3.4 F.7.2, PS3.7 C): see docs/conformance.md.
INVALID_ATTRIBUTE_VALUE = 0x0106
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_SOP_INSTANCE = 0x0112
# Keys a modality filters by, recorded in the audit trail with their values (never names or IDs).
_AUDITED_VALUES = ("Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
                   "ScheduledProcedureStepStartTime", "ScheduledProcedureStepStatus")


def _refused(ctx, assoc, service: str) -> bool:
    """True (logged, audited) when the calling AE is not a registered peer from its registered address."""
    state = ctx.state(assoc)
    if state.peer is not None:
        return False
    ctx.record_refusal(state, assoc.requestor.ae_title, service)
    return True


def _audit(ctx, action: str, *, actor: str, patient_id: str | None = None, study_uid: str | None = None,
           detail: dict) -> None:
    try:
        with write_session(ctx.sessions) as s:
            audit.record(s, action, actor=actor, actor_kind="ae", patient_id=patient_id, study_uid=study_uid,
                         detail=detail)
    except Exception:
        log.exception("cannot audit %s from %s", action, actor)


def handle_worklist_find(event, ctx):
    """Modality Worklist C-FIND: one pending answer per scheduled step, requested keys only."""
    calling = event.assoc.requestor.ae_title
    if _refused(ctx, event.assoc, "worklist C-FIND"):
        yield failure(REFUSED_NOT_AUTHORIZED, f"calling AE {calling} is not registered"), None
        return
    limit = ctx.settings.DICOM_MAX_FIND_RESULTS
    try:
        with read_session(ctx.sessions) as s:
            query = worklist_find.parse_query(event.identifier, s.get_bind().dialect.name)
            answers = [worklist_find.answer(query, item, ae_title=ctx.settings.DICOM_AE_TITLE)
                       for item in worklist_find.find(s, query, limit=limit)]
    except Exception as exc:
        yield failure_for(exc, {InvalidQuery: IDENTIFIER_INVALID}, "worklist C-FIND", calling,
                          expected=InvalidQuery), None
        return
    pending = PENDING_UNMATCHED_KEYS if query.unmatched else PENDING
    matches = FindAnswers(event, answers, limit, "worklist C-FIND", calling)
    for identifier in matches:
        yield pending, identifier
    log.info("worklist C-FIND from %s: %d answers", calling, matches.sent)
    _audit(ctx, "dicom.worklist.find", actor=calling, detail={
        "address": ctx.state(event.assoc).address, "answers": matches.sent, "keys": sorted(query.keys),
        "filters": {k: v for k, v in query.keys.items() if k in _AUDITED_VALUES}})
    if matches.final is not None:
        yield matches.final, None


_MPPS_STATUS = {W.InvalidStep: INVALID_ATTRIBUTE_VALUE, W.DuplicateStep: DUPLICATE_SOP_INSTANCE,
                W.NoSuchStep: NO_SUCH_SOP_INSTANCE, W.StepFinished: PROCESSING_FAILURE}


def _perform(event, ctx, service: str, sop_class_uid, uid: str, action: str, change):
    """The part N-CREATE and N-SET share: the MPPS SOP class and a registered peer are checked, then
    *change* (session -> (step, worklist item or None)) runs and is audited as *action* in one
    transaction. Returns (step, item, None), or (None, None, the failure to answer)."""
    calling = event.assoc.requestor.ae_title
    if str(sop_class_uid) != MODALITY_PERFORMED_PROCEDURE_STEP:
        return None, None, (failure(0x0118, "no such SOP class"), None)
    if _refused(ctx, event.assoc, service):
        return None, None, (failure(REFUSED_NOT_AUTHORIZED, f"calling AE {calling} is not registered"), None)
    try:
        with write_session(ctx.sessions) as s:
            step, item = change(s)
            audit.record(s, action, actor=calling, actor_kind="ae",
                         patient_id=item.patient_id if item else None, study_uid=item.study_uid if item else None,
                         detail={"sop_instance_uid": uid, "status": step.status,
                                 "accession_number": item.accession_number if item else None})
    except Exception as exc:
        return None, None, (failure_for(exc, _MPPS_STATUS, f"{service} {uid}", calling, expected=W.WorklistError,
                                        processing=PROCESSING_FAILURE), None)
    return step, item, None


def handle_n_create(event, ctx):
    """MPPS N-CREATE: the step starts (IN PROGRESS), and so does the worklist item it names."""
    calling = event.assoc.requestor.ae_title
    given = str(event.request.AffectedSOPInstanceUID or "").strip()
    uid = given or generate_uid(prefix=None)
    _step, item, refused = _perform(
        event, ctx, "MPPS N-CREATE", event.request.AffectedSOPClassUID, uid, "dicom.mpps.created",
        lambda s: W.create_performed(s, uid, event.attribute_list, ae_title=calling))
    if refused is not None:
        return refused
    log.info("MPPS N-CREATE %s from %s: IN PROGRESS (%s)", uid, calling,
             "worklist item found" if item else "no worklist item")
    reply = Dataset()
    if not given:
        reply.AffectedSOPInstanceUID = uid
    reply.PerformedProcedureStepStatus = W.IN_PROGRESS
    return SUCCESS, reply


def handle_n_set(event, ctx):
    """MPPS N-SET: COMPLETED or DISCONTINUED ends the step and its worklist item; a finished step stays."""
    calling = event.assoc.requestor.ae_title
    uid = str(event.request.RequestedSOPInstanceUID or "").strip()
    step, _item, refused = _perform(
        event, ctx, "MPPS N-SET", event.request.RequestedSOPClassUID, uid, "dicom.mpps.set",
        lambda s: W.set_performed(s, uid, event.modification_list))
    if refused is not None:
        return refused
    log.info("MPPS N-SET %s from %s: %s", uid, calling, step.status)
    reply = Dataset()
    reply.PerformedProcedureStepStatus = step.status
    return SUCCESS, reply
