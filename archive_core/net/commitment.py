"""Storage Commitment Push Model SCP (PS3.4 Annex J): N-ACTION answered at once, N-EVENT-REPORT once verified.

A modality deletes its local copy when we commit an instance, so an instance is committed only if
it is durable and its stored bytes still hash to the SHA-256 recorded when it was received. The
report goes back on the requesting association while it is open, otherwise on a new association
to the calling AE's registered address (we propose the SCP role for the SOP class, PS3.7 D.3.3.4).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.pdu_primitives import A_RELEASE
from sqlalchemy import select

from archive_core import audit
from archive_core.db import read_session, write_session
from archive_core.errors import InvalidIdentifier, UnknownPeer
from archive_core.index.models import Instance, Patient, Series, Study
from archive_core.index.query import StoredInstance
from archive_core.net import tls
from archive_core.net.replies import failure as _failure
from archive_core.net.requestor import tls_refusal
from archive_core.peers import find_peer
from archive_core.uids import is_valid_uid, require_uid

log = logging.getLogger(__name__)

STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
# The well-known SOP Instance of the Push Model (PS3.4 J.3.5): every N-ACTION names it.
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_COMMITMENT = 1  # Action Type ID
ALL_COMMITTED, SOME_FAILED = 1, 2  # Event Type ID of the report

# Failure Reason (0008,1197) of an item of the Failed SOP Sequence (PS3.4 J.3.3.1.1).
PROCESSING_FAILURE = 0x0110  # stored bytes unreadable or not matching their checksum, or not yet indexed
NO_SUCH_OBJECT = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119

# The report waits at least this long after the N-ACTION answer: a modality that releases its
# association right after the answer has done so by then, and the report goes on a new association
# instead of meeting its A-RELEASE on the wire (then it would wait for the DIMSE timeout).
REPORT_DELAY = 0.5

# N-ACTION statuses (PS3.4 J.3.2.1.2, PS3.7 C).
INVALID_ARGUMENT = 0x0115
INVALID_OBJECT_INSTANCE = 0x0117
NO_SUCH_ACTION = 0x0123
REFUSED_NOT_AUTHORIZED = 0x0124


@dataclass(frozen=True)
class Commitment:
    """The outcome of one transaction: committed (class, instance) pairs and failed ones with their reason."""

    transaction_uid: str
    committed: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)
    studies: dict[str, str] = field(default_factory=dict)  # Study UID -> Patient ID of the committed instances

    def report(self, retrieve_ae_title: str) -> tuple[int, Dataset]:
        """(Event Type ID, Event Information) of the N-EVENT-REPORT."""
        ds = Dataset()
        ds.TransactionUID = self.transaction_uid
        ds.RetrieveAETitle = retrieve_ae_title
        if self.committed:
            ds.ReferencedSOPSequence = [_item(c, i) for c, i in self.committed]
        if self.failed:
            items = []
            for class_uid, instance_uid, reason in self.failed:
                item = _item(class_uid, instance_uid)
                item.FailureReason = reason
                items.append(item)
            ds.FailedSOPSequence = items
        return (SOME_FAILED if self.failed else ALL_COMMITTED), ds


def _item(class_uid: str, instance_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = class_uid
    item.ReferencedSOPInstanceUID = instance_uid
    return item


def parse_request(action_information: Dataset | None) -> tuple[str, list[tuple[str, str]]]:
    """(Transaction UID, referenced (class, instance) pairs) of an N-ACTION; :class:`InvalidIdentifier` if unusable."""
    if action_information is None:
        raise InvalidIdentifier("Action Information is missing")
    transaction_uid = require_uid(action_information.get("TransactionUID"), "Transaction UID")
    items = action_information.get("ReferencedSOPSequence")
    if not items:
        raise InvalidIdentifier("Referenced SOP Sequence is missing or empty")
    # A reference whose UIDs are not UIDs is kept as sent: it fails as "no such object" in the report.
    return transaction_uid, [
        (str(item.get("ReferencedSOPClassUID", "") or "").strip("\x00 "),
         str(item.get("ReferencedSOPInstanceUID", "") or "").strip("\x00 "))
        for item in items
    ]


def verify(ctx, transaction_uid: str, references: list[tuple[str, str]]) -> Commitment:
    """Check each referenced instance: stored (indexed, not tombstoned), same SOP class, stored bytes intact.

    Objects acknowledged but not yet indexed are waited for first (they are in the journal): the
    report then covers them like any indexed object.
    """
    from archive_core.errors import StorageUnavailable
    from archive_core.storage.base import dataset_checksum

    if not ctx.ingestor.wait_indexed(timeout=ctx.settings.DICOM_NETWORK_TIMEOUT):
        log.warning("storage commitment %s: the index is behind; unindexed objects fail", transaction_uid)
    wanted = sorted({uid for _, uid in references if is_valid_uid(uid)})
    rows: dict[str, tuple] = {}
    with read_session(ctx.sessions) as s:
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            for row in s.execute(
                select(Instance.sop_instance_uid, Instance.sop_class_uid, Instance.transfer_syntax_uid,
                       Instance.storage_key, Instance.tier, Instance.checksum_sha256, Study.study_uid,
                       Patient.patient_id)
                .join(Series, Instance.series_pk == Series.id)
                .join(Study, Series.study_pk == Study.id)
                .join(Patient, Study.patient_pk == Patient.id)
                .where(Instance.sop_instance_uid.in_(chunk), Instance.deleted_at.is_(None))
            ):
                rows[row[0]] = row
    result = Commitment(transaction_uid)
    for class_uid, instance_uid in references:
        row = rows.get(instance_uid)
        if row is None:
            # Acknowledged but still unindexed after the wait: durable, not yet verifiable.
            pending = is_valid_uid(instance_uid) and ctx.ingestor.is_pending(instance_uid)
            result.failed.append((class_uid, instance_uid, PROCESSING_FAILURE if pending else NO_SUCH_OBJECT))
            continue
        _, stored_class, ts, key, tier, checksum, study_uid, patient_id = row
        if stored_class != class_uid:
            result.failed.append((class_uid, instance_uid, CLASS_INSTANCE_CONFLICT))
            continue
        try:
            with ctx.open_blob(StoredInstance(instance_uid, stored_class, ts, key, study_uid, tier)) as f:
                intact = dataset_checksum(f) == checksum
        except (OSError, StorageUnavailable):
            intact = False
        if not intact:
            log.error("storage commitment %s: %s does not match its checksum", transaction_uid, instance_uid)
            result.failed.append((class_uid, instance_uid, PROCESSING_FAILURE))
            continue
        result.committed.append((class_uid, instance_uid))
        result.studies.setdefault(study_uid, patient_id)
    return result


def handle_n_action(event, ctx):
    """N-ACTION on the Push Model: check the request, answer it, then verify and report in a thread."""
    calling = event.assoc.requestor.ae_title
    request = event.request
    if str(request.RequestedSOPInstanceUID or "") != WELL_KNOWN_INSTANCE:
        return _failure(INVALID_OBJECT_INSTANCE, "Requested SOP Instance is not the well-known one"), None
    if event.action_type != REQUEST_COMMITMENT:
        return _failure(NO_SUCH_ACTION, "only Action Type 1 (request commitment)"), None
    state = ctx.state(event.assoc)
    if state.peer is None and (state.impostor or not ctx.settings.DICOM_STORE_FROM_UNKNOWN_AES):
        ctx.record_refusal(state, calling, "N-ACTION")
        return _failure(REFUSED_NOT_AUTHORIZED, f"calling AE {calling} is not registered"), None
    try:
        transaction_uid, references = parse_request(event.action_information)
    except Exception as exc:  # a sequence pydicom cannot decode is as unusable as a missing one
        reason = str(exc) if isinstance(exc, InvalidIdentifier) else "Action Information cannot be read"
        log.warning("storage commitment from %s refused: %s", calling, reason)
        return _failure(INVALID_ARGUMENT, reason), None
    log.info("storage commitment %s from %s: %d instances", transaction_uid, calling, len(references))
    not_before = time.monotonic() + REPORT_DELAY
    threading.Thread(
        target=_verify_and_report, args=(ctx, event.assoc, calling, transaction_uid, references, not_before),
        name=f"commitment-{transaction_uid[-12:]}", daemon=True,
    ).start()
    return 0x0000, None


def _verify_and_report(ctx, assoc, calling: str, transaction_uid: str, references, not_before: float) -> None:
    try:
        commitment = verify(ctx, transaction_uid, references)
    except Exception:
        log.exception("storage commitment %s: verification failed", transaction_uid)
        commitment = Commitment(transaction_uid, failed=[(c, i, PROCESSING_FAILURE) for c, i in references])
    time.sleep(max(0.0, not_before - time.monotonic()))
    event_type, info = commitment.report(ctx.settings.DICOM_AE_TITLE)
    delivered = "not delivered"
    try:
        if _send_on(assoc, event_type, info):
            delivered = "same association"
        elif _send_on_new_association(ctx, calling, event_type, info):
            delivered = "new association"
    except Exception:
        log.exception("storage commitment %s: report to %s failed", transaction_uid, calling)
    if delivered == "not delivered":
        log.error("storage commitment %s: report to %s not delivered", transaction_uid, calling)
    else:
        log.info("storage commitment %s: %d committed, %d failed, report on the %s", transaction_uid,
                 len(commitment.committed), len(commitment.failed), delivered)
    _audit(ctx, calling, commitment, delivered)


def _send_on(assoc, event_type: int, info: Dataset) -> bool:
    """Send the report on *assoc* if it is open and its peer has not asked to release it; True if answered."""
    if not assoc.is_established:
        return False
    # pynetdicom's send_n_event_report pauses the acceptor's reactor and waits for it forever; the
    # reactor stops at its next turn unless the association ends first, so pause it ourselves.
    assoc._reactor_checkpoint.clear()
    try:
        for _ in range(20000):  # at most about 2 s (the reactor turns every millisecond)
            if assoc._is_paused or not assoc.is_established:
                break
            time.sleep(0.0001)
        release = assoc.dul.peek_next_pdu()
        if not assoc._is_paused or not assoc.is_established or (
            isinstance(release, A_RELEASE) and release.result is None
        ):
            return False  # the modality is leaving: the report goes on a new association
        status, _ = assoc.send_n_event_report(info, event_type, STORAGE_COMMITMENT_PUSH, WELL_KNOWN_INSTANCE)
    finally:
        assoc._reactor_checkpoint.set()
    return "Status" in status and int(status.Status) == 0x0000


def _send_on_new_association(ctx, calling: str, event_type: int, info: Dataset) -> bool:
    with read_session(ctx.sessions) as s:
        peer = find_peer(s, calling)
    if peer is None:
        raise UnknownPeer(f"{calling} is not a registered peer: no address for the report")
    ae = AE(ae_title=ctx.settings.DICOM_AE_TITLE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ctx.settings.DICOM_NETWORK_TIMEOUT
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH)
    # We send the N-EVENT-REPORT: we propose the SCP role for the SOP class (and not the SCU role).
    role = build_role(STORAGE_COMMITMENT_PUSH, scu_role=False, scp_role=True)
    # A peer registered --tls gets its report over DICOM TLS, never in clear.
    tls_args = tls.tls_args(ctx.settings, peer)
    refused = tls_refusal(peer.host, peer.port, tls_args, timeout=min(ctx.settings.DICOM_NETWORK_TIMEOUT, 10))
    if refused:
        log.error("storage commitment report: DICOM TLS with %s failed (%s)", calling, refused)
        return False
    assoc = ae.associate(peer.host, peer.port, ae_title=calling, ext_neg=[role], tls_args=tls_args)
    if not assoc.is_established:
        log.error("storage commitment report: %s at %s:%d refused the association", calling, peer.host, peer.port)
        return False
    try:
        status, _ = assoc.send_n_event_report(info, event_type, STORAGE_COMMITMENT_PUSH, WELL_KNOWN_INSTANCE)
    finally:
        assoc.release()
    return "Status" in status and int(status.Status) == 0x0000


def _audit(ctx, calling: str, commitment: Commitment, delivered: str) -> None:
    """One event per transaction; the failed instances (UID and reason) are listed in the detail."""
    studies = commitment.studies
    single = next(iter(studies.items())) if len(studies) == 1 else (None, None)
    try:
        with write_session(ctx.sessions) as s:
            audit.record(s, "dicom.storage_commitment", actor=calling, actor_kind="ae", patient_id=single[1] or None,
                         study_uid=single[0], detail={
                             "transaction_uid": commitment.transaction_uid,
                             "committed": len(commitment.committed),
                             "failed": [[i, f"0x{reason:04X}"] for _, i, reason in commitment.failed[:100]],
                             "studies": sorted(studies),
                             "report": delivered,
                         })
    except Exception:
        log.exception("cannot audit storage commitment %s", commitment.transaction_uid)
