"""DIMSE event handlers: thin translations between pynetdicom events and the archive's services."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom.pdu_primitives import A_RELEASE
from sqlalchemy.orm import Session, sessionmaker

from archive_core import audit
from archive_core.config import Settings
from archive_core.db import write_session
from archive_core.errors import ArchiveError, UnknownPeer
from archive_core.index.ingest import Identity, Ingestor, parse
from archive_core.net import tuning
from archive_core.net.status import REFUSED_NOT_AUTHORIZED, STORE_STATUS, SUCCESS, status_for
from archive_core.peers import PeerInfo, find_peer

log = logging.getLogger(__name__)


@dataclass
class AssociationState:
    peer: PeerInfo | None
    last_seq: int = 0
    # Study UID -> (Patient ID, instances stored), written to the audit trail when the association ends.
    stored: dict[str, list] = field(default_factory=dict)


@dataclass
class ArchiveContext:
    """What the handlers need, bound to them when the server starts."""

    settings: Settings
    ingestor: Ingestor
    sessions: sessionmaker[Session]
    _states: dict[int, AssociationState] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def state(self, assoc) -> AssociationState:
        key = id(assoc)
        with self._lock:
            st = self._states.get(key)
        if st is None:
            with self.sessions() as s:
                st = AssociationState(peer=find_peer(s, assoc.requestor.ae_title))
            with self._lock:
                self._states[key] = st
        return st

    def forget(self, assoc) -> None:
        with self._lock:
            self._states.pop(id(assoc), None)


def _failure(code: int, reason: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = reason[:64]
    return status


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
    try:
        if state.peer is None and not ctx.settings.DICOM_STORE_FROM_UNKNOWN_AES:
            raise UnknownPeer(f"calling AE {calling} is not registered")
        raw = request.DataSet.getvalue()
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


def handle_closed(event, ctx: ArchiveContext) -> None:
    """Write what the association stored to the audit trail (one event per study), then forget it."""
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


def may_query(ctx: ArchiveContext, assoc) -> bool:
    return ctx.state(assoc).peer is not None or ctx.settings.DICOM_QR_FROM_UNKNOWN_AES


__all__ = [
    "ArchiveContext",
    "handle_acse_sent",
    "handle_closed",
    "handle_conn_open",
    "handle_echo",
    "handle_store",
    "may_query",
    "REFUSED_NOT_AUTHORIZED",
]
