"""Sending stored objects to a registered peer (C-STORE SCU): what a C-MOVE sub-operation and a prefetch do.

Minimal on purpose (issue 6 needed it before the query/retrieve branch landed): one association per call,
presentation contexts for each SOP class as stored plus the uncompressed syntaxes.
"""

from __future__ import annotations

import logging
import socket
import warnings
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context

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
