"""Our C-STORE SCU: sending stored objects to peers.

Two callers: query/retrieve (:func:`load_for_sending` for the C-MOVE and C-GET sub-operations) and
:func:`send_instances`, which pushes to a peer on an association of our own (the facade's
retrieve-to-peer and the back-office's send and prefetch jobs). Query/retrieve sends each instance in its stored transfer syntax when the
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
from typing import Callable, Iterable

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, evt
from pynetdicom.presentation import PresentationContext

from archive_core.index.query import StoredInstance
from archive_core.net import tuning
from archive_core.net.encoding import StoredDataset
from archive_core.part10 import dataset_offset
from archive_core.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

log = logging.getLogger(__name__)
MAX_CONTEXTS = 128
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


@dataclass
class SendResult:
    """What a push to a peer did (retrieve-to-peer, send jobs, prefetch)."""

    completed: int = 0
    warning: int = 0
    failed: int = 0
    failed_uids: list[str] = field(default_factory=list)
    message: str = ""  # why the push stopped early, if it did

    @property
    def sent(self) -> int:
        return self.completed + self.warning

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.message


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
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
    tls_args=None,
) -> SendResult:
    """Push *instances* to a peer on one association of our own; *progress(sent, failed)* after each.

    Each instance goes in its stored transfer syntax when accepted (its bytes as stored), else
    decompressed, else it is counted failed (:func:`load_for_sending`).
    """
    result = SendResult()
    if not instances:
        return result
    try:
        # pynetdicom leaks its socket when the connection is refused: find out first, with ours.
        socket.create_connection((host, port), timeout=min(timeout, 10)).close()
    except OSError as exc:
        return _all_failed(instances, f"{called_ae} unreachable ({exc.strerror or exc})")
    refused = tls_refusal(host, port, tls_args, timeout=min(timeout, 10))
    if refused:
        return _all_failed(instances, f"DICOM TLS with {called_ae} failed ({refused})")
    ae = AE(ae_title=calling_ae)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    handlers = [(evt.EVT_CONN_OPEN, lambda event: tune_socket(event.assoc, loop_delay))]
    # tls_args: (SSLContext, server hostname) for a peer registered --tls (archive_core/net/tls.py).
    assoc = ae.associate(host, port, contexts=proposed_contexts(instances), ae_title=called_ae, max_pdu=0,
                         evt_handlers=handlers, tls_args=tls_args)
    if not assoc.is_established:
        return _all_failed(instances, f"association with {called_ae} refused or failed")
    try:
        accepted = list(assoc.accepted_contexts)
        for n, inst in enumerate(instances):
            if cancelled():
                result.message = "cancelled"
                break
            if not assoc.is_established:
                result.message = "association lost"
                rest = instances[n:]
                result.failed += len(rest)
                result.failed_uids.extend(i.sop_instance_uid for i in rest)
                break
            ds = load_for_sending(path_of, inst, accepted)
            try:
                status = assoc.send_c_store(ds).get("Status")
            except Exception as exc:  # no accepted context, network trouble
                log.warning("C-STORE of %s to %s failed: %s", inst.sop_instance_uid, called_ae, exc)
                status = None
            if status == 0x0000:
                result.completed += 1
            elif status is not None and (status & 0xF000) == 0xB000:
                result.warning += 1
            else:
                result.failed += 1
                result.failed_uids.append(inst.sop_instance_uid)
            if progress:
                progress(result.sent, result.failed)
    finally:
        if assoc.is_established:
            assoc.release()
    log.info("sent %d instances to %s (%d failed)", result.sent, called_ae, result.failed)
    return result


def tls_refusal(host: str, port: int, tls_args, *, timeout: float) -> str | None:
    """Why a TLS handshake with the peer fails (its certificate, or no TLS there), or None when it
    succeeds or *tls_args* is None. pynetdicom leaks the socket of a failed handshake, and says less."""
    if tls_args is None:
        return None
    context, hostname = tls_args
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=hostname):
                return None
    except OSError as exc:  # ssl.SSLError is one
        return str(getattr(exc, "reason", None) or exc.strerror or exc)


def _all_failed(instances: list[StoredInstance], message: str) -> SendResult:
    log.warning("send to peer: %s", message)
    return SendResult(failed=len(instances), failed_uids=[i.sop_instance_uid for i in instances], message=message)
