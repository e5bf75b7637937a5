"""DIMSE event handlers: thin translations between pynetdicom events and the archive's services."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import closing, suppress
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.pdu_primitives import A_RELEASE
from sqlalchemy.orm import Session, sessionmaker

from archive_core import audit
from archive_core.config import Settings
from archive_core.db import read_session, write_session
from archive_core.errors import ArchiveError, UnknownPeer
from archive_core.index.answers import answer, answer_elements
from archive_core.index.ingest import Identity, Ingestor, audit_refusal, parse
from archive_core.index.matching import has_wildcards
from archive_core.index.query import (
    PATIENT_ROOT,
    STUDY_ROOT,
    StoredInstance,
    instances_to_retrieve,
    parse_identifier,
    stream,
)
from archive_core.net import chunked, scu, tls, tuning, worklist
from archive_core.net.audit_writer import AuditWriter
from archive_core.net.encoding import PendingAnswers
from archive_core.net.status import (
    CANCEL,
    FIND_STATUS,
    PENDING,
    PENDING_UNMATCHED_KEYS,
    REFUSED_NOT_AUTHORIZED,
    RETRIEVE_STATUS,
    STORE_STATUS,
    SUCCESS,
    TOO_MANY_MATCHES,
    status_for,
)
from archive_core.peers import PeerInfo, connects_from, find_peer, register_command

log = logging.getLogger(__name__)


@dataclass
class AssociationState:
    # The registered peer this association is, if any (AE title and address both match).
    peer: PeerInfo | None
    address: str = ""
    # The AE title is registered but this association may not be that peer's: why (else "").
    impostor: str = ""
    # What the operator does to let it in: the one command line that registers it, or advice.
    remedy: str = ""
    refusal_recorded: bool = False
    last_seq: int = 0
    # Number of this association's last C-FIND audit event in the context's AuditWriter (0: none):
    # the A-RELEASE answer waits until it is written (see note_find).
    last_find: int = 0
    # Study UID -> (Patient ID, instances stored), written to the audit trail when the association ends.
    stored: dict[str, list] = field(default_factory=dict)


@dataclass
class ArchiveContext:
    """What the handlers need, bound to them when the server starts."""

    settings: Settings
    ingestor: Ingestor
    sessions: sessionmaker[Session]
    # Opens a stored instance's object in its tier's store (BlobStore.open); set by the server.
    open_blob: Callable[[StoredInstance], BinaryIO] | None = None
    _states: dict[int, AssociationState] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Writes the C-FIND audit events off the answer path (group commit); drained by close().
    _finds: AuditWriter | None = None
    # (AE title, address, reason) -> (when last recorded, refusals not recorded since): see record_refusal.
    _refusals: dict[tuple[str, str, str], tuple[float, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._finds = AuditWriter(lambda events: _write_finds(self, events), max_batch=FIND_AUDIT_BATCH)

    @property
    def find_audit(self) -> AuditWriter:
        return self._finds

    def close(self) -> None:
        self._finds.close()

    def state(self, assoc) -> AssociationState:
        key = id(assoc)
        with self._lock:
            st = self._states.get(key)
        if st is None:
            st = admission(self, assoc.requestor.ae_title, assoc.requestor.address, _over_tls(assoc))
            with self._lock:
                self._states[key] = st
        return st

    def forget(self, assoc) -> None:
        with self._lock:
            self._states.pop(id(assoc), None)

    def record_refusal(self, state: AssociationState, ae_title: str, service: str) -> None:
        """:func:`record_refusal`, for the handlers of other modules (worklist, commitment) that this
        module imports: they reach it through the context they are bound to, not by importing it back."""
        record_refusal(self, state, ae_title, service)


def _failure(code: int, reason: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = reason[:64]
    return status


# -- who may talk to the archive -------------------------------------------------------------------


def _over_tls(assoc) -> bool:
    return getattr(assoc, "dul", None) is not None and tls.is_tls(assoc)


def admission(ctx: ArchiveContext, ae_title: str, address: str, over_tls: bool) -> AssociationState:
    """Who an association is: a registered peer (AE title and address), an unknown AE, or an impostor."""
    with ctx.sessions() as s:
        peer = find_peer(s, ae_title)
    if peer is None:
        return AssociationState(peer=None, address=address,
                                remedy=f"to register it: {register_command(ae_title, address)}")
    if not connects_from(peer, address):
        return AssociationState(peer=None, address=address, impostor="registered for another address",
                                remedy=f"if it is the same AE: {register_command(ae_title, address, peer)}")
    if peer.tls and not over_tls:
        return AssociationState(peer=None, address=address, impostor="registered to use DICOM TLS",
                                remedy="it must connect to the DICOM TLS port")
    return AssociationState(peer=peer, address=address)


# Modalities retry a refused send every few seconds: the same AE refused from the same address for
# the same reason is recorded at most once per this many seconds, the next record counting the others.
REFUSAL_QUIET_S = 60.0
_REFUSALS_KEPT = 10000


def _worth_recording(ctx: ArchiveContext, key: tuple[str, str, str]) -> int | None:
    """None to stay quiet; else how many refusals of *key* went unrecorded since the last record."""
    now = time.monotonic()
    with ctx._lock:
        last = ctx._refusals.get(key)
        if last is not None and now - last[0] < REFUSAL_QUIET_S:
            ctx._refusals[key] = (last[0], last[1] + 1)
            return None
        if len(ctx._refusals) >= _REFUSALS_KEPT:  # many AE titles or addresses: forget the quiet ones
            for stale in [k for k, (at, _) in ctx._refusals.items() if now - at >= REFUSAL_QUIET_S]:
                del ctx._refusals[stale]
        ctx._refusals[key] = (now, 0)
        return last[1] if last is not None else 0


def record_refusal(ctx: ArchiveContext, state: AssociationState, ae_title: str, service: str) -> None:
    """Log (AE title and address) and audit a refusal, with the command that would register the AE:
    once per association, and once per REFUSAL_QUIET_S for the same AE, address and reason."""
    if state.refusal_recorded:
        return
    state.refusal_recorded = True
    reason = state.impostor or "not a registered peer"
    unrecorded = _worth_recording(ctx, (ae_title, state.address, reason))
    if unrecorded is None:
        return
    again = f" ({unrecorded} more refusals since the last record)" if unrecorded else ""
    log.warning("%s from AE %s at %s refused (%s); %s%s", service, ae_title, state.address, reason, state.remedy,
                again)
    try:
        with write_session(ctx.sessions) as s:
            audit.record(s, "dicom.refused", actor=ae_title, actor_kind="ae",
                         detail={"address": state.address, "service": service, "reason": reason,
                                 "remedy": state.remedy, "unrecorded_since_last": unrecorded})
    except Exception:
        log.exception("cannot audit the refusal of AE %s", ae_title)


def handle_requested(event, ctx: ArchiveContext) -> None:
    """A-ASSOCIATE-RQ: rejected (permanent, calling AE title not recognised, PS3.8 9.3.4) for a
    registered AE title from an address (or without the TLS) it is not registered for, and for an
    unknown AE when no service is open to unknown AEs; others go on, each request checked."""
    assoc = event.assoc
    ae_title = str(assoc.requestor.primitive.calling_ae_title).strip()
    state = admission(ctx, ae_title, assoc.requestor.address, _over_tls(assoc))
    with ctx._lock:
        ctx._states[id(assoc)] = state
    settings = ctx.settings
    stranger = state.peer is None and not (settings.DICOM_STORE_FROM_UNKNOWN_AES or settings.DICOM_QR_FROM_UNKNOWN_AES)
    if state.impostor or stranger:
        record_refusal(ctx, state, ae_title, "association")
        assoc.acse.send_reject(0x01, 0x01, 0x03)
        assoc.kill()


def handle_conn_open(event, ctx: ArchiveContext) -> None:
    """Turn Nagle off and replace pynetdicom's polling sleeps (see archive_core/net/tuning.py)."""
    if ctx.settings.DICOM_DUL_LOOP_DELAY:
        # Tuning off: pynetdicom's own polling, at the configured delay.
        tuning.set_nodelay(event.assoc.dul.socket.socket if event.assoc.dul.socket else None)
        event.assoc.dul._run_loop_delay = ctx.settings.DICOM_DUL_LOOP_DELAY
    else:
        tuning.tune_acceptor(event.assoc)


def handle_echo(event, ctx: ArchiveContext) -> int:
    return SUCCESS


def handle_store(event, ctx: ArchiveContext):
    calling = event.assoc.requestor.ae_title
    state = ctx.state(event.assoc)
    request = event.request
    sop_uid = str(request.AffectedSOPInstanceUID or "?")
    ds = None
    try:
        if state.peer is None and (state.impostor or not ctx.settings.DICOM_STORE_FROM_UNKNOWN_AES):
            record_refusal(ctx, state, calling, "C-STORE")
            raise UnknownPeer(f"calling AE {calling} is not registered")
        raw = chunked.received_dataset(event)
        ctx.ingestor.check_size(raw)
        ts = str(event.context.transfer_syntax)
        ds = parse(raw, ts)
        identity = Identity.of(ds, sop_class_uid=request.AffectedSOPClassUID, sop_instance_uid=request.AffectedSOPInstanceUID)
        outcome = ctx.ingestor.receive(
            raw,
            ds,
            transfer_syntax_uid=ts,
            identity=identity,
            source_ae=calling,
            external=state.peer.external if state.peer else None,
        )
    except ArchiveError as exc:
        code = status_for(exc, STORE_STATUS)
        log.warning("C-STORE %s from %s answered 0x%04X: %s", sop_uid, calling, code, exc)
        audit_refusal(ctx.sessions, exc, ds, actor=calling, actor_kind="ae", via="C-STORE",
                      sop_instance_uid=request.AffectedSOPInstanceUID)
        return _failure(code, str(exc))
    except Exception as exc:  # never let one bad object take the server down
        log.exception("C-STORE %s from %s failed", sop_uid, calling)
        return _failure(0xC000, f"processing failure: {exc.__class__.__name__}")
    # An identical duplicate of a pending object carries that object's (earlier) sequence.
    state.last_seq = max(state.last_seq, outcome.seq)
    if outcome.seq and not outcome.duplicate:
        entry = state.stored.setdefault(identity.study_uid, [str(ds.get("PatientID", "") or ""), 0])
        entry[1] += 1
    return SUCCESS


def handle_acse_sent(event, ctx: ArchiveContext) -> None:
    """Hold the A-RELEASE response until what the association stored is indexed.

    Everything acknowledged is then visible to queries and to the web app (another process,
    perhaps) as soon as the peer sees its association released.
    """
    primitive = event.primitive
    if isinstance(primitive, A_RELEASE) and primitive.result is not None:
        state = ctx._states.get(id(event.assoc))
        if state and state.last_seq and not ctx.ingestor.wait_indexed(state.last_seq):
            log.error("association from %s released before its objects were indexed", event.assoc.requestor.ae_title)
        # Every query of the association is in the audit trail before the peer sees it released.
        if state and state.last_find and not ctx.find_audit.wait(state.last_find, ctx.settings.DICOM_NETWORK_TIMEOUT):
            log.error("association from %s released before its C-FIND audit events were written",
                      event.assoc.requestor.ae_title)


def handle_closed(event, ctx: ArchiveContext) -> None:
    """Write what the association stored (one event per study) to the audit trail, then forget it
    (its C-FIND events are already queued: see note_find)."""
    state = ctx._states.get(id(event.assoc))
    ctx.forget(event.assoc)
    if not state or not state.stored:
        return
    calling = event.assoc.requestor.ae_title
    try:
        with write_session(ctx.sessions) as s:
            for study_uid, (patient_id, count) in state.stored.items():
                audit.record(s, "dicom.store", actor=calling, actor_kind="ae", patient_id=patient_id or None,
                             study_uid=study_uid, detail={"instances": count})
    except Exception:
        log.exception("cannot audit what %s stored", calling)


# At most this many C-FIND audit events are written in one transaction.
FIND_AUDIT_BATCH = 50


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


def _write_finds(ctx: ArchiveContext, events: list[dict]) -> None:
    """One transaction for *events* (the AuditWriter logs a failure)."""
    with write_session(ctx.sessions) as s:
        audit.record_many(s, [{"action": "dicom.find", "actor_kind": "ae", **e} for e in events])


def may_query(ctx: ArchiveContext, assoc) -> bool:
    state = ctx.state(assoc)
    return state.peer is not None or (ctx.settings.DICOM_QR_FROM_UNKNOWN_AES and not state.impostor)


def _refuse_query(ctx: ArchiveContext, assoc, service: str) -> bool:
    """True (refusal logged and audited) when the calling AE may not query or retrieve."""
    if may_query(ctx, assoc):
        return False
    record_refusal(ctx, ctx.state(assoc), assoc.requestor.ae_title, service)
    return True


# -- query/retrieve ------------------------------------------------------------------------------

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


def handle_find(event, ctx: ArchiveContext):
    """C-FIND: pending answers, one per match; A900 for a bad identifier; FE00 when cancelled.

    Answers are built and sent as rows come from the database cursor: the first ones reach the
    peer before the last rows are read, and a cancel stops the reading.
    """
    if str(event.request.AffectedSOPClassUID) == worklist.MODALITY_WORKLIST_FIND:
        yield from worklist.handle_worklist_find(event, ctx)  # its own model and access rule
        return
    calling = event.assoc.requestor.ae_title
    if _refuse_query(ctx, event.assoc, "C-FIND"):
        yield _failure(REFUSED_NOT_AUTHORIZED, f"calling AE {calling} is not registered"), None
        return
    limit = ctx.settings.DICOM_MAX_FIND_RESULTS
    try:
        query = parse_identifier(event.identifier, QR_ROOTS[str(event.request.AffectedSOPClassUID)])
        _see_everything_acknowledged(ctx)
    except ArchiveError as exc:
        code = status_for(exc, FIND_STATUS)
        log.warning("C-FIND from %s answered 0x%04X: %s", calling, code, exc)
        yield _failure(code, str(exc)), None
        return
    except Exception as exc:
        log.exception("C-FIND from %s failed", calling)
        yield _failure(0xC000, f"processing failure: {exc.__class__.__name__}"), None
        return
    pending = PENDING_UNMATCHED_KEYS if query.unmatched_keys else PENDING
    ae_title = ctx.settings.DICOM_AE_TITLE
    fast = ctx.settings.DICOM_FAST_FIND_ANSWERS
    direct = None
    sent = 0
    final, cancelled, failed = None, False, False
    with read_session(ctx.sessions) as s, closing(stream(s, query, limit=limit + 1)) as rows:
        try:
            for row in rows:
                if event.is_cancelled:
                    final, cancelled = CANCEL, True
                    break
                if sent == limit:
                    log.warning("C-FIND from %s stopped after %d matches", calling, limit)
                    final = _failure(TOO_MANY_MATCHES, f"more than {limit} matches: refine the query")
                    break
                sent += 1
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
            log.exception("C-FIND from %s failed after %d answers", calling, sent)
            final, failed = _failure(0xC000, f"processing failure: {exc.__class__.__name__}"), True
    if direct is not None:
        with suppress(OSError):  # a broken connection: pynetdicom's final response finds it too
            direct.flush()  # the answers queued so far go out before the final response
    log.info("C-FIND %s level from %s: %d answers%s", query.level, calling, sent, " (cancelled)" if cancelled else "")
    if sent or not failed:  # a query that failed before any answer gave nothing to audit
        note_find(ctx, event.assoc, query, sent)
    if final is not None:
        yield final, None


def _retrieve_plan(event, ctx: ArchiveContext, service: str):
    """(instances, failure status or None) of a C-MOVE or C-GET request, audited per study."""
    calling = event.assoc.requestor.ae_title
    try:
        if _refuse_query(ctx, event.assoc, f"C-{service}"):
            raise UnknownPeer(f"calling AE {calling} is not registered")
        query = parse_identifier(event.identifier, QR_ROOTS[str(event.request.AffectedSOPClassUID)], retrieve=True)
        _see_everything_acknowledged(ctx)
        with read_session(ctx.sessions) as s:
            instances = instances_to_retrieve(s, query)
    except ArchiveError as exc:
        code = status_for(exc, RETRIEVE_STATUS)
        log.warning("C-%s from %s answered 0x%04X: %s", service, calling, code, exc)
        return [], _failure(code, str(exc))
    except Exception as exc:
        log.exception("C-%s from %s failed", service, calling)
        return [], _failure(0xC000, f"processing failure: {exc.__class__.__name__}")
    if len(instances) > 0xFFFF:
        return [], _failure(0xA702, "more than 65535 instances: retrieve fewer at a time")
    if instances:
        with write_session(ctx.sessions) as s:
            for study_uid in sorted({i.study_uid for i in instances}):
                count = sum(1 for i in instances if i.study_uid == study_uid)
                audit.record(s, "study.retrieved", actor=calling, actor_kind="ae", study_uid=study_uid,
                             detail={"service": f"C-{service}", "instances": count,
                                     "address": ctx.state(event.assoc).address})
    log.info("C-%s from %s: %d instances", service, calling, len(instances))
    return instances, None


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
    instances, failure = _retrieve_plan(event, ctx, "MOVE")
    tls_args = None
    if failure is None and peer.tls:
        try:
            tls_args = tls.tls_args(ctx.settings, peer)
            refused = scu.tls_refusal(peer.host, peer.port, tls_args,
                                      timeout=min(ctx.settings.DICOM_NETWORK_TIMEOUT, 10))
        except tls.TLSConfigError as exc:
            refused = str(exc)
        if refused:
            log.warning("C-MOVE from %s: DICOM TLS with %s failed (%s)", calling, destination, refused)
            yield None, None  # 0xA801, nothing is sent
            return
    capture = scu.Capture(requestor=event.assoc)
    scu.frame_pending_responses(event.assoc, deferred=True)
    yield peer.host, peer.port, {
        "contexts": scu.proposed_contexts(instances) or [scu.build_context("1.2.840.10008.1.1")],
        "max_pdu": 0,
        "tls_args": tls_args,
        "evt_handlers": [
            (evt.EVT_CONN_OPEN, lambda e: scu.tune_socket(e.assoc, ctx.settings.DICOM_DUL_LOOP_DELAY)),
            (evt.EVT_ACCEPTED, capture.on_accepted),
            (evt.EVT_CONN_CLOSE, scu.close_socket),
        ],
    }
    try:
        yield from _sub_operations(event, ctx, instances, failure, lambda: capture.contexts)
    finally:
        scu.flush_pending_responses(event.assoc)
        if capture.assoc is not None:
            scu.give_back_reads(capture.assoc)  # pynetdicom releases it next


def handle_get(event, ctx: ArchiveContext):
    """C-GET: the sub-operations go over the requesting association, in the contexts it accepted."""
    instances, failure = _retrieve_plan(event, ctx, "GET")
    scu.use_stored_sender(event.assoc)  # sub-operations send stored bytes as stored
    scu.frame_pending_responses(event.assoc)
    try:
        yield from _sub_operations(event, ctx, instances, failure, lambda: list(event.assoc.accepted_contexts))
    finally:
        scu.give_back_reads(event.assoc)  # pynetdicom sends the final response and reads what follows


def _sub_operations(event, ctx: ArchiveContext, instances, failure, accepted):
    if failure is not None:
        # pynetdicom takes the failure as the final response after one announced sub-operation.
        yield 1
        yield failure, None
        return
    yield len(instances)
    contexts = None
    following = None  # the next sub-operation's dataset, made one ahead: its file is read while the peer answers
    for n, inst in enumerate(instances):
        if event.is_cancelled:
            yield CANCEL, None
            return
        if contexts is None:
            contexts = accepted()
        dataset = following if following is not None else scu.load_for_sending(ctx.open_blob, inst, contexts)
        following = None
        if n + 1 < len(instances) and isinstance(dataset, scu.StoredDataset):
            following = scu.load_stored(ctx.open_blob, instances[n + 1], contexts)
            scu.read_next(dataset, following)
        yield PENDING, dataset


__all__ = [
    "ArchiveContext",
    "handle_acse_sent",
    "handle_closed",
    "handle_conn_open",
    "handle_requested",
    "handle_echo",
    "handle_find",
    "handle_get",
    "handle_move",
    "handle_store",
    "may_query",
    "REFUSED_NOT_AUTHORIZED",
]
