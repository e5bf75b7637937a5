"""Query/Retrieve SCP (PS3.4 C): C-FIND answered as rows come from the index, C-MOVE to a registered peer,
C-GET over the requesting association; each query and retrieve in the audit trail. The Modality
Worklist's C-FIND (same DIMSE service, its own model) is handed to archive_core/net/worklist.py."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from contextlib import closing, suppress

from pynetdicom import build_context, evt

from archive_core import audit
from archive_core.db import read_session, write_session
from archive_core.errors import UnknownPeer
from archive_core.index.answers import answer, answer_elements
from archive_core.index.matching import has_wildcards
from archive_core.index.query import PATIENT_ROOT, STUDY_ROOT, instances_to_retrieve, parse_identifier, stream
from archive_core.net import outgoing, requestor, sender, tls, worklist
from archive_core.net.encoding import PendingAnswers
from archive_core.net.handlers import ArchiveContext, refuse_query
from archive_core.net.replies import FindAnswers, failure, failure_for
from archive_core.net.status import (
    CANCEL,
    FIND_STATUS,
    PENDING,
    PENDING_UNMATCHED_KEYS,
    REFUSED_NOT_AUTHORIZED,
    RETRIEVE_STATUS,
)
from archive_core.peers import find_peer

log = logging.getLogger(__name__)


# The information model of each Q/R SOP class (FIND, MOVE, GET of Patient Root and Study Root).
QR_ROOTS = {
    "1.2.840.10008.5.1.4.1.2.1.1": PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.1.2": PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.1.3": PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.1": STUDY_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.2": STUDY_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.3": STUDY_ROOT,
}


def _see_everything_acknowledged(ctx: ArchiveContext) -> None:
    # Associations released elsewhere already waited for their index; this covers objects
    # acknowledged in this process on associations still open.
    ctx.ingestor.wait_indexed(timeout=ctx.settings.DICOM_NETWORK_TIMEOUT)


def note_find(ctx: ArchiveContext, assoc, query, answers: int) -> None:
    """Queue the audit event of one answered C-FIND: who (AE title, address), what (the matching keys
    and their values: the audit trail is where patient-data access is recorded, never the
    application log), how many answers. Written by the context's writer thread, which commits what
    every association queued meanwhile together: no query waits for a database write, and the
    association's A-RELEASE answer waits for its events (handle_acse_sent)."""
    state = ctx.state(assoc)
    patient_id = query.conditions.get("PatientID")
    state.last_find = ctx.find_audit.add({
        "actor": assoc.requestor.ae_title,
        "patient_id": patient_id if isinstance(patient_id, str) and not has_wildcards(patient_id) else None,
        "detail": {"address": state.address, "model": query.root, "level": query.level,
                   "keys": dict(query.conditions), "answers": answers},
    })


def handle_find(event, ctx: ArchiveContext):
    """C-FIND: pending answers, one per match; A900 for a bad identifier; FE00 when cancelled.

    Answers are built and sent as rows come from the database cursor: the first ones reach the
    peer before the last rows are read, and a cancel stops the reading.
    """
    if str(event.request.AffectedSOPClassUID) == worklist.MODALITY_WORKLIST_FIND:
        yield from worklist.handle_worklist_find(event, ctx)  # its own model and access rule
        return
    calling = event.assoc.requestor.ae_title
    if refuse_query(ctx, event.assoc, "C-FIND"):
        yield failure(REFUSED_NOT_AUTHORIZED, f"calling AE {calling} is not registered"), None
        return
    limit = ctx.settings.DICOM_MAX_FIND_RESULTS
    try:
        query = parse_identifier(event.identifier, QR_ROOTS[str(event.request.AffectedSOPClassUID)])
        _see_everything_acknowledged(ctx)
    except Exception as exc:
        yield failure_for(exc, FIND_STATUS, "C-FIND", calling), None
        return
    pending = PENDING_UNMATCHED_KEYS if query.unmatched_keys else PENDING
    ae_title = ctx.settings.DICOM_AE_TITLE
    fast = ctx.settings.DICOM_FAST_FIND_ANSWERS
    direct = None
    final, failed = None, False
    with read_session(ctx.sessions) as s, closing(stream(s, query, limit=limit + 1)) as rows:
        matches = FindAnswers(event, rows, limit, "C-FIND", calling)
        try:
            for row in matches:
                if fast and direct is None:
                    direct = PendingAnswers.for_event(event, pending)
                    fast = direct is not None
                identifier = None
                if direct is not None:
                    elements = answer_elements(query, row, ae_title=ae_title)
                    data = direct.encode(elements) if elements is not None else None
                    if data is not None and direct.send_encoded(data):
                        continue
                    identifier = answer(query, row, ae_title=ae_title)
                    if direct.send(identifier):
                        continue
                    direct.flush()
                    direct, fast = None, False  # pynetdicom's path for this answer and the rest
                yield pending, identifier if identifier is not None else answer(query, row, ae_title=ae_title)
        except Exception as exc:
            log.exception("C-FIND from %s failed after %d answers", calling, matches.sent)
            final, failed = failure(0xC000, f"processing failure: {exc.__class__.__name__}"), True
    final = final if failed else matches.final
    sent = matches.sent
    if direct is not None:
        with suppress(OSError):  # a broken connection: pynetdicom's final response finds it too
            direct.flush()  # the answers queued so far go out before the final response
    log.info("C-FIND %s level from %s: %d answers%s", query.level, calling, sent,
             " (cancelled)" if matches.cancelled else "")
    if sent or not failed:  # a query that failed before any answer gave nothing to audit
        note_find(ctx, event.assoc, query, sent)
    if final is not None:
        yield final, None


def _retrieve_plan(event, ctx: ArchiveContext, service: str):
    """(instances, failure status or None, audit events: one per study) of a C-MOVE or C-GET request."""
    calling = event.assoc.requestor.ae_title
    try:
        if refuse_query(ctx, event.assoc, f"C-{service}"):
            raise UnknownPeer(f"calling AE {calling} is not registered")
        query = parse_identifier(event.identifier, QR_ROOTS[str(event.request.AffectedSOPClassUID)], retrieve=True)
        _see_everything_acknowledged(ctx)
        with read_session(ctx.sessions) as s:
            instances = instances_to_retrieve(s, query)
    except Exception as exc:
        return [], failure_for(exc, RETRIEVE_STATUS, f"C-{service}", calling), []
    if len(instances) > 0xFFFF:
        return [], failure(0xA702, "more than 65535 instances: retrieve fewer at a time"), []
    counts = Counter(i.study_uid for i in instances)
    address = ctx.state(event.assoc).address
    events = [{"action": "study.retrieved", "actor": calling, "actor_kind": "ae", "study_uid": study_uid,
               "detail": {"service": f"C-{service}", "instances": counts[study_uid], "address": address}}
              for study_uid in sorted(counts)]
    log.info("C-%s from %s: %d instances", service, calling, len(instances))
    return instances, None, events


def _audit_retrieve(ctx: ArchiveContext, events: list[dict]) -> None:
    """Commit a retrieve's events: one read of the chain's head and one insert for every study."""
    if events:
        with write_session(ctx.sessions) as s:
            audit.record_many(s, events)


class _AuditAside:
    """A C-MOVE's audit events committed by a thread of their own while pynetdicom opens the
    association to the destination (which sends nothing of the study): :meth:`wait` waits for the
    commit before the first instance goes out, and answers a failed commit with a failure status,
    so nothing is sent unaudited (docs/conformance.md)."""

    def __init__(self, ctx: ArchiveContext, events: list[dict], calling: str) -> None:
        self._error: Exception | None = None
        self._calling = calling
        self._thread = threading.Thread(target=self._write, args=(ctx, events), name="retrieve-audit", daemon=True)
        self._thread.start()

    def _write(self, ctx: ArchiveContext, events: list[dict]) -> None:
        try:
            _audit_retrieve(ctx, events)
        except Exception as exc:  # answered by wait(), in the C-MOVE's thread
            self._error = exc

    def wait(self):
        """None once the events are committed; else the failure status that ends the C-MOVE."""
        self._thread.join()
        if self._error is None:
            return None
        log.error("C-MOVE from %s: cannot audit the retrieve, nothing sent", self._calling, exc_info=self._error)
        return failure(0xC000, f"processing failure: {self._error.__class__.__name__}")


def handle_move(event, ctx: ArchiveContext):
    """C-MOVE to a registered peer; pynetdicom runs the sub-operations and counts them."""
    calling = event.assoc.requestor.ae_title
    destination = event.move_destination
    if isinstance(destination, bytes):
        destination = destination.decode("ascii", "replace")
    destination = str(destination).strip()
    with read_session(ctx.sessions) as s:
        peer = find_peer(s, destination) if destination else None
    if peer is None:
        log.warning("C-MOVE from %s to unknown destination %r refused", calling, destination)
        yield None, None  # pynetdicom answers 0xA801, nothing is sent
        return
    instances, failure, events = _retrieve_plan(event, ctx, "MOVE")
    tls_args = None
    if failure is None and peer.tls:
        try:
            tls_args = tls.tls_args(ctx.settings, peer)
            refused = requestor.tls_refusal(peer.host, peer.port, tls_args,
                                            timeout=min(ctx.settings.DICOM_NETWORK_TIMEOUT, 10))
        except tls.TLSConfigError as exc:
            refused = str(exc)
        if refused:
            log.warning("C-MOVE from %s: DICOM TLS with %s failed (%s)", calling, destination, refused)
            yield None, None  # 0xA801, nothing is sent
            return
    capture = requestor.Capture(requestor=event.assoc)
    sender.frame_pending_responses(event.assoc, deferred=True)
    audited = _AuditAside(ctx, events, calling).wait if failure is None and events else None
    yield peer.host, peer.port, {
        "contexts": requestor.proposed_contexts(instances) or [build_context("1.2.840.10008.1.1")],
        "max_pdu": 0,
        "tls_args": tls_args,
        "evt_handlers": [
            (evt.EVT_CONN_OPEN, lambda e: requestor.tune_socket(e.assoc, ctx.settings.DICOM_DUL_LOOP_DELAY)),
            (evt.EVT_ACCEPTED, capture.on_accepted),
            (evt.EVT_CONN_CLOSE, requestor.close_socket),
        ],
    }
    try:
        yield from _sub_operations(event, ctx, instances, failure, lambda: capture.contexts, audited)
    finally:
        sender.flush_pending_responses(event.assoc)
        if capture.assoc is not None:
            sender.give_back_reads(capture.assoc)  # pynetdicom releases it next


def handle_get(event, ctx: ArchiveContext):
    """C-GET: the sub-operations go over the requesting association, in the contexts it accepted."""
    instances, failure, events = _retrieve_plan(event, ctx, "GET")
    _audit_retrieve(ctx, events)
    sender.use_stored_sender(event.assoc)  # sub-operations send stored bytes as stored
    sender.frame_pending_responses(event.assoc)
    try:
        yield from _sub_operations(event, ctx, instances, failure, lambda: list(event.assoc.accepted_contexts))
    finally:
        sender.give_back_reads(event.assoc)  # pynetdicom sends the final response and reads what follows


def _sub_operations(event, ctx: ArchiveContext, instances, failure, accepted, audited=None):
    if failure is not None:
        # pynetdicom takes the failure as the final response after one announced sub-operation.
        yield 1
        yield failure, None
        return
    yield len(instances)
    failure = audited() if audited is not None else None  # the audit is committed before anything is sent
    if failure is not None:
        yield failure, None  # pynetdicom counts every sub-operation failed
        return
    contexts = None
    following = None  # the next sub-operation's dataset, made one ahead: its file is read while the peer answers
    for n, inst in enumerate(instances):
        if event.is_cancelled:
            yield CANCEL, None
            return
        if contexts is None:
            contexts = accepted()
        dataset = following if following is not None else outgoing.load_for_sending(ctx.open_blob, inst, contexts)
        following = None
        if n + 1 < len(instances) and isinstance(dataset, outgoing.StoredDataset):
            following = outgoing.load_stored(ctx.open_blob, instances[n + 1], contexts)
            outgoing.read_next(dataset, following)
        yield PENDING, dataset


__all__ = ["QR_ROOTS", "handle_find", "handle_get", "handle_move", "note_find"]
