"""Our C-STORE SCU: sending stored objects to peers.

Two callers: the back-office's send/prefetch jobs (:func:`send_objects`, issue 6) and query/retrieve
(:func:`load_for_sending` for the C-MOVE and C-GET sub-operations, :func:`send_instances` for the
facade's retrieve-to-peer). Query/retrieve sends each instance in its stored transfer syntax when the
receiving association accepted it for the SOP class; a compressed one the receiver cannot take is
decompressed (pydicom + pylibjpeg) to explicit or implicit VR little endian; otherwise it is reported
failed and nothing of it is sent.
"""

from __future__ import annotations

import logging
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, evt
from pynetdicom.presentation import PresentationContext

from archive_core.index.query import StoredInstance
from archive_core.net import tuning
from archive_core.net.encoding import StoredDataset
from archive_core.part10 import dataset_offset
from archive_core.peers import PeerInfo
from archive_core.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

log = logging.getLogger(__name__)
MAX_CONTEXTS = 128


@dataclass(frozen=True)
class StoredObject:
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    storage_key: str
    tier: str = "active"


@dataclass
class SendResult:
    sent: int = 0
    failed: int = 0
    failed_uids: list[str] = field(default_factory=list)
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.message


def send_objects(
    open_file: Callable[[StoredObject], BinaryIO],
    objects: list[StoredObject],
    peer: PeerInfo,
    *,
    calling_ae_title: str,
    timeout: float = 60,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> SendResult:
    """C-STORE every object to *peer*, read with *open_file*; *progress(sent, failed)* is called after each one."""
    result = SendResult()
    if not objects:
        return result
    ae = AE(ae_title=calling_ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    contexts = _contexts(objects)
    try:
        # pynetdicom leaks its socket when the connection is refused: find out first, with ours.
        socket.create_connection((peer.host, peer.port), timeout=min(timeout, 10)).close()
    except OSError as exc:
        result.failed = len(objects)
        result.message = f"{peer.ae_title} unreachable ({exc.strerror or exc})"
        log.warning("send to %s: %s", peer.ae_title, result.message)
        return result
    assoc = ae.associate(peer.host, peer.port, contexts=contexts, ae_title=peer.ae_title)
    if not assoc.is_established:
        result.failed = len(objects)
        result.message = f"association with {peer.ae_title} refused or failed"
        log.warning("send to %s: %s", peer.ae_title, result.message)
        return result
    try:
        for obj in objects:
            if cancelled():
                result.message = "cancelled"
                break
            status = None
            try:
                with open_file(obj) as f, warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = dcmread(f, force=True)
                status = assoc.send_c_store(ds)
            except (ValueError, RuntimeError, OSError) as exc:  # no accepted context, network trouble
                log.warning("send %s to %s failed: %s", obj.sop_instance_uid, peer.ae_title, exc)
            if status is not None and getattr(status, "Status", 0xC000) in (0x0000, 0xB000, 0xB007, 0xB006):
                result.sent += 1
            else:
                result.failed += 1
                result.failed_uids.append(obj.sop_instance_uid)
            if progress:
                progress(result.sent, result.failed)
            if not assoc.is_established:
                result.message = "association lost"
                result.failed += len(objects) - result.sent - result.failed
                break
    finally:
        if assoc.is_established:
            assoc.release()
    log.info("sent %d objects to %s (%d failed)", result.sent, peer.ae_title, result.failed)
    return result


def _contexts(objects: Iterable[StoredObject]):
    """Per SOP class: one context for the uncompressed syntaxes, one per compressed syntax as stored."""
    uncompressed = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, "1.2.840.10008.1.2.2"}
    wanted: dict[tuple[str, str], None] = {}
    for obj in objects:
        wanted[(obj.sop_class_uid, "")] = None
        if obj.transfer_syntax_uid not in uncompressed:
            wanted[(obj.sop_class_uid, obj.transfer_syntax_uid)] = None
    contexts = []
    for sop_class, syntax in wanted:
        syntaxes = [syntax] if syntax else [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        contexts.append(build_context(sop_class, syntaxes))
    return contexts[:MAX_CONTEXTS]


# -- query/retrieve (issue 3) ---------------------------------------------------------------------

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


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


def load_for_sending(
    path_of: Callable[[StoredInstance], Path], inst: StoredInstance, accepted: list[PresentationContext]
) -> Dataset:
    """The dataset to yield for one sub-operation: as stored, decompressed, or unsendable."""
    plan = transfer_plan(inst.sop_class_uid, inst.transfer_syntax_uid, accepted)
    if plan is None:
        log.warning("no accepted context for %s in %s", inst.sop_instance_uid, inst.transfer_syntax_uid)
        return _unsendable(inst)
    try:
        if plan == inst.transfer_syntax_uid:
            # Sent as stored: the bytes as received, never decoded (see archive_core/net/encoding.py).
            data = path_of(inst).read_bytes()
            return StoredDataset.of(
                data[dataset_offset(data):],
                sop_class_uid=inst.sop_class_uid,
                sop_instance_uid=inst.sop_instance_uid,
                transfer_syntax_uid=inst.transfer_syntax_uid,
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(path_of(inst))
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
    tuning.set_nodelay(assoc.dul.socket.socket if assoc.dul.socket else None)
    assoc.dul._run_loop_delay = loop_delay


@dataclass(frozen=True)
class StoreCounts:
    """What a retrieve-to-peer did."""

    completed: int
    failed: int
    warning: int
    failed_uids: tuple[str, ...]


def send_instances(
    path_of: Callable[[StoredInstance], Path],
    instances: list[StoredInstance],
    *,
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    loop_delay: float = 0.0,
    timeout: float = 60.0,
) -> StoreCounts:
    """Push *instances* to a peer on one association of our own (the facade's retrieve-to-peer)."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    handlers = [(evt.EVT_CONN_OPEN, lambda event: tune_socket(event.assoc, loop_delay))]
    assoc = ae.associate(host, port, contexts=proposed_contexts(instances), ae_title=called_ae, max_pdu=0,
                         evt_handlers=handlers)
    if not assoc.is_established:
        return StoreCounts(0, len(instances), 0, tuple(i.sop_instance_uid for i in instances))
    completed = warning = 0
    failed: list[str] = []
    try:
        accepted = list(assoc.accepted_contexts)
        for inst in instances:
            ds = load_for_sending(path_of, inst, accepted)
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
    return StoreCounts(completed, len(failed), warning, tuple(failed))
