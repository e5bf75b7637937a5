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
from archive_core.db import read_session, write_session
from archive_core.errors import ArchiveError, InvalidQuery
from archive_core.net.status import CANCEL, IDENTIFIER_INVALID, PENDING, PENDING_UNMATCHED_KEYS, \
    PROCESSING_FAILURE, REFUSED_NOT_AUTHORIZED, SUCCESS, TOO_MANY_MATCHES

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


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


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
        yield _status(REFUSED_NOT_AUTHORIZED, f"calling AE {calling} is not registered"), None
        return
    limit = ctx.settings.DICOM_MAX_FIND_RESULTS
    try:
        with read_session(ctx.sessions) as s:
            query = W.parse_query(event.identifier, s.get_bind().dialect.name)
            answers = [W.answer(query, item, ae_title=ctx.settings.DICOM_AE_TITLE)
                       for item in W.find(s, query, limit=limit)]
    except InvalidQuery as exc:
        log.warning("worklist C-FIND from %s answered 0x%04X: %s", calling, IDENTIFIER_INVALID, exc)
        yield _status(IDENTIFIER_INVALID, str(exc)), None
        return
    except Exception as exc:
        log.exception("worklist C-FIND from %s failed", calling)
        yield _status(0xC000, f"processing failure: {exc.__class__.__name__}"), None
        return
    pending = PENDING_UNMATCHED_KEYS if query.unmatched else PENDING
    sent, final = 0, None
    for identifier in answers:
        if event.is_cancelled:
            final = CANCEL
            break
        if sent == limit:
            final = _status(TOO_MANY_MATCHES, f"more than {limit} matches: refine the query")
            break
        sent += 1
        yield pending, identifier
    log.info("worklist C-FIND from %s: %d answers", calling, sent)
    _audit(ctx, "dicom.worklist.find", actor=calling, detail={
        "address": ctx.state(event.assoc).address, "answers": sent, "keys": sorted(query.keys),
        "filters": {k: v for k, v in query.keys.items() if k in _AUDITED_VALUES}})
    if final is not None:
        yield final, None


_MPPS_STATUS = {W.InvalidStep: INVALID_ATTRIBUTE_VALUE, W.DuplicateStep: DUPLICATE_SOP_INSTANCE,
                W.NoSuchStep: NO_SUCH_SOP_INSTANCE, W.StepFinished: PROCESSING_FAILURE}


def _mpps_failure(exc: ArchiveError, service: str, calling: str, uid: str) -> tuple[Dataset, None]:
    code = next((c for kind, c in _MPPS_STATUS.items() if isinstance(exc, kind)), PROCESSING_FAILURE)
    log.warning("%s %s from %s answered 0x%04X: %s", service, uid, calling, code, exc)
    return _status(code, str(exc)), None


def handle_n_create(event, ctx):
    """MPPS N-CREATE: the step starts (IN PROGRESS), and so does the worklist item it names."""
    calling = event.assoc.requestor.ae_title
    if str(event.request.AffectedSOPClassUID) != MODALITY_PERFORMED_PROCEDURE_STEP:
        return _status(0x0118, "no such SOP class"), None
    if _refused(ctx, event.assoc, "MPPS N-CREATE"):
        return _status(REFUSED_NOT_AUTHORIZED, f"calling AE {calling} is not registered"), None
    uid = str(event.request.AffectedSOPInstanceUID or "").strip()
    given = bool(uid)
    uid = uid or generate_uid(prefix=None)
    try:
        attributes = event.attribute_list
        with write_session(ctx.sessions) as s:
            step, item = W.create_performed(s, uid, attributes, ae_title=calling)
            audit.record(s, "dicom.mpps.created", actor=calling, actor_kind="ae",
                         patient_id=item.patient_id if item else None, study_uid=item.study_uid if item else None,
                         detail={"sop_instance_uid": uid, "status": step.status,
                                 "accession_number": item.accession_number if item else None})
    except W.WorklistError as exc:
        return _mpps_failure(exc, "MPPS N-CREATE", calling, uid)
    except Exception as exc:
        log.exception("MPPS N-CREATE %s from %s failed", uid, calling)
        return _status(PROCESSING_FAILURE, f"processing failure: {exc.__class__.__name__}"), None
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
    if str(event.request.RequestedSOPClassUID) != MODALITY_PERFORMED_PROCEDURE_STEP:
        return _status(0x0118, "no such SOP class"), None
    if _refused(ctx, event.assoc, "MPPS N-SET"):
        return _status(REFUSED_NOT_AUTHORIZED, f"calling AE {calling} is not registered"), None
    try:
        modifications = event.modification_list
        with write_session(ctx.sessions) as s:
            step, item = W.set_performed(s, uid, modifications)
            audit.record(s, "dicom.mpps.set", actor=calling, actor_kind="ae",
                         patient_id=item.patient_id if item else None, study_uid=item.study_uid if item else None,
                         detail={"sop_instance_uid": uid, "status": step.status,
                                 "accession_number": item.accession_number if item else None})
    except W.WorklistError as exc:
        return _mpps_failure(exc, "MPPS N-SET", calling, uid)
    except Exception as exc:
        log.exception("MPPS N-SET %s from %s failed", uid, calling)
        return _status(PROCESSING_FAILURE, f"processing failure: {exc.__class__.__name__}"), None
    log.info("MPPS N-SET %s from %s: %s", uid, calling, step.status)
    reply = Dataset()
    reply.PerformedProcedureStepStatus = step.status
    return SUCCESS, reply
