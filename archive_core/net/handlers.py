"""DIMSE event handlers of the association and of C-ECHO/C-STORE: who may talk to the archive (admission,
refusals), what an association stored, and when its release is answered. Query/Retrieve (C-FIND, C-MOVE,
C-GET) is in archive_core/net/qr.py, the worklist and MPPS in archive_core/net/worklist.py; all are bound
to one :class:`ArchiveContext` by archive_core/net/server.py."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

from pynetdicom.pdu_primitives import A_RELEASE
from sqlalchemy.orm import Session, sessionmaker

from archive_core import audit
from archive_core.config import Settings
from archive_core.db import write_session
from archive_core.errors import ArchiveError, UnknownPeer
from archive_core.index.identity import Identity, audit_refusal
from archive_core.index.ingest import Ingestor
from archive_core.index.received import parse
from archive_core.index.query import StoredInstance
from archive_core.net import chunked, tls, tuning
from archive_core.audit_writer import AuditWriter
from archive_core.net.replies import failure_for
from archive_core.net.status import REFUSED_NOT_AUTHORIZED, STORE_STATUS, SUCCESS
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
    except Exception as exc:  # never let one bad object take the server down
        answer = failure_for(exc, STORE_STATUS, f"C-STORE {sop_uid}", calling)
        if isinstance(exc, ArchiveError):
            audit_refusal(ctx.sessions, exc, ds, actor=calling, actor_kind="ae", via="C-STORE",
                          sop_instance_uid=request.AffectedSOPInstanceUID)
        return answer
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


def _write_finds(ctx: ArchiveContext, events: list[dict]) -> None:
    """One transaction for *events* (the AuditWriter logs a failure)."""
    audit.append_many_now(ctx.sessions.kw["bind"], [{"action": "dicom.find", "actor_kind": "ae", **e} for e in events])



def may_query(ctx: ArchiveContext, assoc) -> bool:
    state = ctx.state(assoc)
    return state.peer is not None or (ctx.settings.DICOM_QR_FROM_UNKNOWN_AES and not state.impostor)


def refuse_query(ctx: ArchiveContext, assoc, service: str) -> bool:
    """True (refusal logged and audited) when the calling AE may not query or retrieve."""
    if may_query(ctx, assoc):
        return False
    record_refusal(ctx, ctx.state(assoc), assoc.requestor.ae_title, service)
    return True


__all__ = [
    "ArchiveContext",
    "handle_acse_sent",
    "handle_closed",
    "handle_conn_open",
    "handle_requested",
    "handle_echo",
    "handle_store",
    "may_query",
    "refuse_query",
    "REFUSED_NOT_AUTHORIZED",
]
