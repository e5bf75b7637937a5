"""Pushing stored instances to a peer on an association of our own (:func:`send_instances`): the
facade's retrieve-to-peer and the back-office's send and prefetch jobs."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

from pynetdicom import AE, evt

from archive_core.index.query import StoredInstance
from archive_core.net.outgoing import load_for_sending
from archive_core.net.requestor import close_socket, proposed_contexts, tls_refusal, tune_socket
from archive_core.net.sender import hold, send_c_store, use_stored_sender
from archive_core.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    """One instance a peer did not store as sent: its C-STORE status (None: never answered) and comment."""

    sop_instance_uid: str
    status: int | None
    comment: str


@dataclass
class SendResult:
    """What a push to a peer did (retrieve-to-peer, send jobs, prefetch).

    Only status 0x0000 counts as completed. A warning (0xB000, 0xB006, 0xB007) means the peer
    stored the object but not as sent (coerced or discarded elements): it is counted in
    ``warning`` and listed in ``failures`` with its status and comment, so a send job with one is
    not ``done``.
    """

    completed: int = 0
    warning: int = 0
    failed: int = 0
    failures: list[Failure] = field(default_factory=list)
    message: str = ""  # why the push stopped early, if it did

    @property
    def failed_uids(self) -> list[str]:
        return [f.sop_instance_uid for f in self.failures if f.status is None or (f.status & 0xF000) != 0xB000]

    @property
    def sent(self) -> int:
        return self.completed

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.warning == 0 and not self.message


def send_instances(
    open_blob: Callable[[StoredInstance], BinaryIO],
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
    converted, else it is counted failed (:func:`load_for_sending`).
    """
    result = SendResult()
    if not instances:
        return result
    try:
        # pynetdicom leaks its socket when the connection is refused: find out first, with ours.
        socket.create_connection((host, port), timeout=min(timeout, 10)).close()
    except OSError as exc:
        return all_failed(instances, f"{called_ae} unreachable ({exc.strerror or exc})")
    refused = tls_refusal(host, port, tls_args, timeout=min(timeout, 10))
    if refused:
        return all_failed(instances, f"DICOM TLS with {called_ae} failed ({refused})")
    ae = AE(ae_title=calling_ae)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    handlers = [(evt.EVT_CONN_OPEN, lambda event: tune_socket(event.assoc, loop_delay)),
                (evt.EVT_CONN_CLOSE, close_socket)]
    # tls_args: (SSLContext, server hostname) for a peer registered --tls (archive_core/net/tls.py).
    assoc = ae.associate(host, port, contexts=proposed_contexts(instances), ae_title=called_ae, max_pdu=0,
                         evt_handlers=handlers, tls_args=tls_args)
    if not assoc.is_established:
        return all_failed(instances, f"association with {called_ae} refused or failed")
    try:
        accepted = list(assoc.accepted_contexts)
        use_stored_sender(assoc)  # its release and abort give the reads back to pynetdicom first
        hold(assoc)
        for n, inst in enumerate(instances):
            if cancelled():
                result.message = "cancelled"
                break
            if not assoc.is_established:
                result.message = "association lost"
                for rest in instances[n:]:
                    result.failed += 1
                    result.failures.append(Failure(rest.sop_instance_uid, None, "association lost"))
                break
            ds = load_for_sending(open_blob, inst, accepted)
            comment = ""
            try:
                answer = send_c_store(assoc, ds)
                status = answer.get("Status")
                comment = str(answer.get("ErrorComment", "") or "")
            except Exception as exc:  # no accepted context, network trouble
                log.warning("C-STORE of %s to %s failed: %s", inst.sop_instance_uid, called_ae, exc)
                status = None
                comment = "not sent: no transfer syntax the peer accepts" if isinstance(exc, ValueError) else "not sent"
            if status == 0x0000:
                result.completed += 1
            else:
                if status is not None and (status & 0xF000) == 0xB000:
                    result.warning += 1
                else:
                    result.failed += 1
                result.failures.append(Failure(inst.sop_instance_uid, status, comment))
                log.warning("C-STORE of %s to %s answered %s", inst.sop_instance_uid, called_ae,
                            "nothing" if status is None else f"0x{status:04X}")
            if progress:
                progress(result.sent, result.failed + result.warning)
    finally:
        if assoc.is_established:
            assoc.release()
        if getattr(assoc, "_archivage_socket", None) is not None:
            assoc._archivage_socket.close()  # see tune_socket
    log.info("sent %d instances to %s (%d failed, %d warnings)", result.sent, called_ae, result.failed, result.warning)
    return result


def all_failed(instances: list[StoredInstance], message: str) -> SendResult:
    log.warning("send to peer: %s", message)
    return SendResult(failed=len(instances), message=message,
                      failures=[Failure(i.sop_instance_uid, None, message) for i in instances])
