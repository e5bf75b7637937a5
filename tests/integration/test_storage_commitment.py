"""Storage Commitment Push Model: a pynetdicom modality stores, asks for commitment and gets the report.

A modality deletes its copy of every instance the report commits: each test checks that what is
committed is stored intact, and that everything else is listed as failed with its reason.
"""

from __future__ import annotations

import json
import queue
import time

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, StorageCommitmentPushModel
from sqlalchemy import select

from archive_core.audit import AuditEvent
from archive_core.index.models import Instance
from tests.helpers import free_port, make_ct

WELL_KNOWN = "1.2.840.10008.1.20.1.1"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_CLASS = str(CTImageStorage)


class Modality:
    """A CT that stores and requests commitment; reports it receives (on any association) land in ``reports``."""

    def __init__(self, ae_title: str = "CT_SALLE1") -> None:
        self.ae_title = ae_title
        self.reports: queue.Queue[tuple[int, Dataset, str]] = queue.Queue()

    def on_report(self, event):
        where = "same" if event.assoc.is_requestor else "new"
        if where == "new":  # the archive proposed the SCP role: this side acts as SCU of the SOP class
            (cx,) = [c for c in event.assoc.accepted_contexts if c.abstract_syntax == StorageCommitmentPushModel]
            where += f" as_scu={cx.as_scu} as_scp={cx.as_scp}"
        self.reports.put((event.event_type, event.event_information, where))
        return 0x0000, None

    def associate(self, port: int):
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVAGE",
                             evt_handlers=[(evt.EVT_N_EVENT_REPORT, self.on_report)])
        assert assoc.is_established
        return assoc

    def report(self, timeout: float = 20) -> tuple[int, Dataset, str]:
        return self.reports.get(timeout=timeout)


def _request(transaction_uid: str, references: list[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    items = []
    for class_uid, instance_uid in references:
        item = Dataset()
        item.ReferencedSOPClassUID = class_uid
        item.ReferencedSOPInstanceUID = instance_uid
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def _ask(assoc, transaction_uid: str, references) -> int:
    status, _reply = assoc.send_n_action(_request(transaction_uid, references), 1, StorageCommitmentPushModel,
                                         WELL_KNOWN)
    return int(status.Status)


def _listed(report: Dataset, keyword: str) -> dict[str, int | None]:
    return {str(item.ReferencedSOPInstanceUID): item.get("FailureReason") for item in report.get(keyword, [])}


def _commitment_audit(archive, transaction_uid: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with archive.sessions() as s:
            for event in s.scalars(select(AuditEvent).where(AuditEvent.action == "dicom.storage_commitment")):
                detail = json.loads(event.detail)
                if detail["transaction_uid"] == transaction_uid:
                    return {"actor": event.actor, **detail}
        time.sleep(0.05)
    raise AssertionError("no audit event for the commitment")


def test_everything_stored_is_committed_on_the_same_association(scp, archive):
    """The ordinary case: three images stored, commitment asked on the same association, kept open."""
    modality = Modality()
    images = [make_ct(InstanceNumber=n) for n in range(3)]
    assoc = modality.associate(scp.port)
    assert [assoc.send_c_store(ds).Status for ds in images] == [0x0000] * 3
    transaction = generate_uid()
    assert _ask(assoc, transaction, [(CT_CLASS, ds.SOPInstanceUID) for ds in images]) == 0x0000
    event_type, report, where = modality.report()
    assoc.release()
    assert (event_type, where, report.TransactionUID) == (1, "same", transaction)
    assert _listed(report, "ReferencedSOPSequence") == {ds.SOPInstanceUID: None for ds in images}
    assert "FailedSOPSequence" not in report
    assert report.RetrieveAETitle == "ARCHIVAGE"
    audit = _commitment_audit(archive, transaction)
    assert (audit["actor"], audit["committed"], audit["failed"], audit["report"]) == (
        "CT_SALLE1", 3, [], "same association"
    )



def test_missing_and_mismatched_instances_are_listed_as_failed(scp, archive):
    """Commitment asked for an image never sent (0x0112) and one named with the wrong SOP class (0x0119)."""
    modality = Modality()
    stored, wrong_class = make_ct(), make_ct()
    never_sent = generate_uid()
    assoc = modality.associate(scp.port)
    assert [assoc.send_c_store(ds).Status for ds in (stored, wrong_class)] == [0x0000, 0x0000]
    transaction = generate_uid()
    status = _ask(assoc, transaction, [(CT_CLASS, stored.SOPInstanceUID), (CT_CLASS, never_sent),
                                       (MR_IMAGE_STORAGE, wrong_class.SOPInstanceUID)])
    assert status == 0x0000
    event_type, report, _ = modality.report()
    assoc.release()
    assert event_type == 2
    assert _listed(report, "ReferencedSOPSequence") == {stored.SOPInstanceUID: None}
    assert _listed(report, "FailedSOPSequence") == {never_sent: 0x0112, wrong_class.SOPInstanceUID: 0x0119}
    failed_class = {str(i.ReferencedSOPInstanceUID): str(i.ReferencedSOPClassUID) for i in report.FailedSOPSequence}
    assert failed_class[wrong_class.SOPInstanceUID] == MR_IMAGE_STORAGE  # the reference as the modality sent it
    audit = _commitment_audit(archive, transaction)
    assert sorted(audit["failed"]) == sorted([[never_sent, "0x0112"], [wrong_class.SOPInstanceUID, "0x0119"]])


def test_a_purged_instance_is_no_such_object(scp, archive):
    """The study was tombstoned by a retention purge after it was stored: not committed."""
    from datetime import datetime, timezone

    from archive_core.db import write_session
    from archive_core.purge import tombstone_study

    modality = Modality()
    image = make_ct()
    assoc = modality.associate(scp.port)
    assert assoc.send_c_store(image).Status == 0x0000
    archive.ingestor.wait_indexed()
    with write_session(archive.sessions) as s:
        tombstone_study(s, image.StudyInstanceUID, at=datetime(2026, 3, 2, tzinfo=timezone.utc))
    assert _ask(assoc, generate_uid(), [(CT_CLASS, image.SOPInstanceUID)]) == 0x0000
    event_type, report, _ = modality.report()
    assoc.release()
    assert (event_type, _listed(report, "FailedSOPSequence")) == (2, {image.SOPInstanceUID: 0x0112})


def test_an_acknowledged_object_not_yet_indexed_is_not_committed(archive):
    """The indexer is stopped (not started here) and the wait for it ends at once: 0x0110, not 0x0112."""
    import dataclasses

    from archive_core.index.identity import Identity
    from archive_core.net.commitment import verify
    from archive_core.net.handlers import ArchiveContext
    from tests.integration.test_bad_input import _encoded

    image = make_ct()
    archive.ingestor.receive(_encoded(image), image, transfer_syntax_uid=ExplicitVRLittleEndian,
                             identity=Identity.of(image))
    ctx = ArchiveContext(settings=dataclasses.replace(archive.settings, DICOM_NETWORK_TIMEOUT=0),
                         ingestor=archive.ingestor, sessions=archive.sessions,
                         open_blob=lambda inst: archive.store.open(inst.storage_key))
    never_sent = generate_uid()
    result = verify(ctx, generate_uid(), [(CT_CLASS, image.SOPInstanceUID), (CT_CLASS, never_sent)])
    assert result.committed == []
    assert result.failed == [(CT_CLASS, image.SOPInstanceUID, 0x0110), (CT_CLASS, never_sent, 0x0112)]


def test_storage_commitment_is_refused_to_strangers_when_storage_is(instance_path):
    """DICOM_STORE_FROM_UNKNOWN_AES false: an unregistered AE asking for commitment gets 0x0124
    (query/retrieve opened to strangers so that its association is accepted at all)."""
    from tests.helpers import archive_server

    with archive_server(instance_path, DICOM_STORE_FROM_UNKNOWN_AES=False, DICOM_QR_FROM_UNKNOWN_AES=True) as (
            _archive, running):
        modality = Modality("STRANGER")
        assoc = modality.associate(running.port)
        assert _ask(assoc, generate_uid(), [(CT_CLASS, generate_uid())]) == 0x0124
        assoc.release()


def test_a_corrupted_stored_file_is_not_committed(scp, archive):
    """One stored file has a byte changed on disk after storage: its checksum no longer verifies."""
    modality = Modality()
    intact, damaged = make_ct(), make_ct()
    assoc = modality.associate(scp.port)
    assert [assoc.send_c_store(ds).Status for ds in (intact, damaged)] == [0x0000, 0x0000]
    archive.ingestor.wait_indexed()
    with archive.sessions() as s:
        key = s.scalar(select(Instance.storage_key).where(Instance.sop_instance_uid == damaged.SOPInstanceUID))
    path = archive.store.path_of(key)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # inside the pixel data: the file still parses
    path.write_bytes(bytes(data))
    transaction = generate_uid()
    assert _ask(assoc, transaction, [(CT_CLASS, intact.SOPInstanceUID), (CT_CLASS, damaged.SOPInstanceUID)]) == 0
    event_type, report, _ = modality.report()
    assoc.release()
    assert event_type == 2
    assert _listed(report, "ReferencedSOPSequence") == {intact.SOPInstanceUID: None}
    assert _listed(report, "FailedSOPSequence") == {damaged.SOPInstanceUID: 0x0110}


def test_report_goes_on_a_new_association_to_the_registered_peer(scp, archive):
    """The modality releases right after the N-ACTION answer; its own SCP (registered as the peer) gets the report."""
    from archive_core.peers import add_peer

    modality = Modality()
    listener = AE(ae_title="CT_SALLE1")
    # It receives N-EVENT-REPORT as the SCU of the SOP class; the archive proposes the SCP role.
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    port = free_port()
    server = listener.start_server(("127.0.0.1", port), block=False,
                                   evt_handlers=[(evt.EVT_N_EVENT_REPORT, modality.on_report)])
    try:
        with archive.sessions() as s:
            add_peer(s, "CT_SALLE1", "127.0.0.1", port)
            s.commit()
        images = [make_ct(), make_ct()]
        assoc = modality.associate(scp.port)
        assert [assoc.send_c_store(ds).Status for ds in images] == [0x0000, 0x0000]
        transaction = generate_uid()
        assert _ask(assoc, transaction, [(CT_CLASS, ds.SOPInstanceUID) for ds in images]) == 0x0000
        assoc.release()
        event_type, report, where = modality.report()
        assert (event_type, where, report.TransactionUID) == (1, "new as_scu=True as_scp=False", transaction)
        assert _listed(report, "ReferencedSOPSequence") == {ds.SOPInstanceUID: None for ds in images}
        assert _commitment_audit(archive, transaction)["report"] == "new association"
    finally:
        server.shutdown()


def test_no_report_for_an_unregistered_ae_that_left(scp, archive):
    """An unregistered modality releases before the report: nobody to send it to; audited as not delivered."""
    modality = Modality("STRANGER")
    image = make_ct()
    assoc = modality.associate(scp.port)
    assert assoc.send_c_store(image).Status == 0x0000
    transaction = generate_uid()
    assert _ask(assoc, transaction, [(CT_CLASS, image.SOPInstanceUID)]) == 0x0000
    assoc.release()
    assert _commitment_audit(archive, transaction)["report"] == "not delivered"
    with pytest.raises(queue.Empty):
        modality.report(timeout=0.5)


@pytest.mark.parametrize(
    "request_ds, action_type, instance, status",
    [
        (None, 1, WELL_KNOWN, 0x0115),  # no Action Information
        ("no transaction", 1, WELL_KNOWN, 0x0115),  # Referenced SOP Sequence without Transaction UID
        ("empty sequence", 1, WELL_KNOWN, 0x0115),
        ("good", 2, WELL_KNOWN, 0x0123),  # an Action Type the Push Model does not define
        ("good", 1, "1.2.840.10008.1.20.1.2", 0x0117),  # not the well-known SOP Instance
    ],
)
def test_unusable_requests_are_refused(scp, archive, request_ds, action_type, instance, status):
    modality = Modality()
    ds = None
    if request_ds == "no transaction":
        ds = _request(generate_uid(), [(CT_CLASS, generate_uid())])
        del ds.TransactionUID
    elif request_ds == "empty sequence":
        ds = _request(generate_uid(), [])
    elif request_ds == "good":
        ds = _request(generate_uid(), [(CT_CLASS, generate_uid())])
    assoc = modality.associate(scp.port)
    answer, _ = assoc.send_n_action(ds, action_type, StorageCommitmentPushModel, instance)
    assoc.release()
    assert int(answer.Status) == status
    with pytest.raises(queue.Empty):
        modality.report(timeout=0.3)


def test_push_model_is_accepted_in_the_little_and_big_endian_syntaxes(scp):
    """One context per transfer syntax the conformance statement lists; a JPEG one is not accepted."""
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        ImplicitVRLittleEndian,
        JPEGBaseline8Bit,
    )

    listed = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian]
    ae = AE(ae_title="CT_SALLE1")
    for syntax in [*listed, JPEGBaseline8Bit]:
        ae.add_requested_context(StorageCommitmentPushModel, syntax)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="ARCHIVAGE")
    accepted = sorted(str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts)
    assoc.release()
    assert accepted == sorted(listed)
