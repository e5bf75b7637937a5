"""Our SCU side: sending stored instances to a peer (C-MOVE sub-operations, C-GET, retrieve-to-peer).

Each instance goes in its stored transfer syntax when the receiving association accepted it for
the SOP class; a compressed one the receiver cannot take is decompressed (pydicom + pylibjpeg)
to explicit or implicit VR little endian; otherwise it is reported failed and nothing is sent.
"""

from __future__ import annotations

import logging
import socket
import warnings
from dataclasses import dataclass, field
from typing import Iterable

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.presentation import PresentationContext, build_context

from archive_core.index.query import StoredInstance
from archive_core.storage.filesystem import FilesystemStore

log = logging.getLogger(__name__)

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
MAX_CONTEXTS = 128


def proposed_contexts(instances: Iterable[StoredInstance]) -> list[PresentationContext]:
    """Contexts to ask a destination for: each stored (SOP class, transfer syntax), and an
    uncompressed fallback per SOP class for the compressed ones."""
    wanted: dict[tuple[str, str], None] = {}
    for inst in instances:
        wanted[(inst.sop_class_uid, inst.transfer_syntax_uid)] = None
    contexts: list[PresentationContext] = []
    fallbacks: list[PresentationContext] = []
    seen_fallback: set[str] = set()
    for sop_class, ts in wanted:
        contexts.append(build_context(sop_class, [ts]))
        if UID(ts) not in UNCOMPRESSED and sop_class not in seen_fallback:
            seen_fallback.add(sop_class)
            fallbacks.append(build_context(sop_class, list(UNCOMPRESSED)))
    chosen = (contexts + fallbacks)[:MAX_CONTEXTS]
    if len(contexts) + len(fallbacks) > MAX_CONTEXTS:
        log.warning("more than %d presentation contexts needed; some instances may fail", MAX_CONTEXTS)
    return chosen


def transfer_plan(sop_class_uid: str, stored_ts: str, accepted: Iterable[PresentationContext]) -> str | None:
    """The transfer syntax to send an instance in over *accepted* contexts (ours as SCU), or None."""
    syntaxes = {str(cx.transfer_syntax[0]) for cx in accepted if cx.abstract_syntax == sop_class_uid and cx.as_scu}
    if stored_ts in syntaxes:
        return stored_ts
    stored = UID(stored_ts)
    for ts in UNCOMPRESSED:
        if ts in syntaxes and (stored.is_compressed or stored.is_deflated or stored.is_little_endian):
            return ts
    return None


def _unsendable(inst: StoredInstance) -> Dataset:
    # A dataset no accepted context fits: pynetdicom refuses to send it and counts the
    # sub-operation failed, with this SOP Instance UID in the Failed SOP Instance UID List.
    ds = Dataset()
    ds.SOPClassUID = inst.sop_class_uid
    ds.SOPInstanceUID = inst.sop_instance_uid
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.999"  # never accepted
    return ds


def load_for_sending(store: FilesystemStore, inst: StoredInstance, accepted: list[PresentationContext]) -> Dataset:
    """The dataset to yield for one sub-operation: as stored, decompressed, or unsendable."""
    plan = transfer_plan(inst.sop_class_uid, inst.transfer_syntax_uid, accepted)
    if plan is None:
        log.warning("no accepted context for %s in %s", inst.sop_instance_uid, inst.transfer_syntax_uid)
        return _unsendable(inst)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(store.path_of(inst.storage_key))
            if UID(inst.transfer_syntax_uid).is_compressed and UID(plan) in UNCOMPRESSED:
                ds.decompress()
    except Exception as exc:
        log.error("cannot send %s: %s", inst.sop_instance_uid, exc)
        return _unsendable(inst)
    return ds


@dataclass
class Capture:
    """Holds the association a C-MOVE opens to its destination, to read its accepted contexts."""

    assoc: object = None
    contexts: list[PresentationContext] = field(default_factory=list)

    def on_accepted(self, event) -> None:
        self.assoc = event.assoc
        self.contexts = list(event.assoc.accepted_contexts)


def tune_socket(assoc, loop_delay: float) -> None:
    """Nagle off and no idle sleep in the DUL loop (as the server does for its associations)."""
    sock = assoc.dul.socket.socket if assoc.dul.socket else None
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    assoc.dul._run_loop_delay = loop_delay


@dataclass(frozen=True)
class SendResult:
    completed: int
    failed: int
    warning: int
    failed_uids: tuple[str, ...]


def send_instances(
    store: FilesystemStore,
    instances: list[StoredInstance],
    *,
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    loop_delay: float = 0.0,
    timeout: float = 60.0,
) -> SendResult:
    """Push *instances* to a peer on one association of our own (the facade's retrieve-to-peer)."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    handlers = [(evt.EVT_CONN_OPEN, lambda event: tune_socket(event.assoc, loop_delay))]
    assoc = ae.associate(host, port, contexts=proposed_contexts(instances), ae_title=called_ae, max_pdu=0,
                         evt_handlers=handlers)
    if not assoc.is_established:
        return SendResult(0, len(instances), 0, tuple(i.sop_instance_uid for i in instances))
    completed = warning = 0
    failed: list[str] = []
    try:
        accepted = list(assoc.accepted_contexts)
        for inst in instances:
            ds = load_for_sending(store, inst, accepted)
            try:
                status = assoc.send_c_store(ds).get("Status")
            except Exception as exc:
                log.warning("C-STORE of %s to %s failed: %s", inst.sop_instance_uid, called_ae, exc)
                status = None
            if status == 0x0000:
                completed += 1
            elif status is not None and (status & 0xF000) == 0xB000:
                warning += 1
            else:
                failed.append(inst.sop_instance_uid)
    finally:
        assoc.release()
    return SendResult(completed, len(failed), warning, tuple(failed))
