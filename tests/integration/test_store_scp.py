"""C-ECHO and C-STORE against the in-process server, with a pynetdicom SCU as the modality."""

from __future__ import annotations

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import func, select

from archive_core.index.models import Instance, Patient, Series, Study
from tests.helpers import archive_server, associate_ct_modality, make_ct


def _count(archive, model) -> int:
    with archive.sessions() as s:
        return s.scalar(select(func.count(model.id)))


def test_echo_answers_success(scp):
    assoc = associate_ct_modality(scp.port)
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_stored_instances_are_indexed_when_the_association_is_released(scp, archive):
    study = "1.2.826.0.1.3680043.8.498.1"
    assoc = associate_ct_modality(scp.port)
    for n in range(5):
        ds = make_ct(study_uid=study, series_uid=study + ".1", InstanceNumber=n + 1)
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    # No sleep: the release response waits for the index.
    with archive.sessions() as s:
        st = s.scalar(select(Study).where(Study.study_uid == study))
        assert st is not None
        assert (st.num_series, st.num_instances, st.modalities_in_study) == (1, 5, "CT")
    assert _count(archive, Patient) == 1


def test_stored_file_holds_the_dataset_bytes_as_sent(scp, archive):
    from archive_core.part10 import dataset_offset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = make_ct()
    assoc = associate_ct_modality(scp.port)
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    with archive.sessions() as s:
        key = s.scalar(select(Instance.storage_key).where(Instance.sop_instance_uid == ds.SOPInstanceUID))
    stored = archive.store.read_bytes(key)
    assert stored[128:132] == b"DICM"
    assert stored[dataset_offset(stored):] == buf.getvalue()


def test_identical_duplicate_is_success_and_stored_once(scp, archive):
    ds = make_ct()
    assoc = associate_ct_modality(scp.port)
    assert assoc.send_c_store(ds).Status == 0x0000
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    assert _count(archive, Instance) == 1
    assert sum(1 for _ in archive.store.keys()) == 1


def test_different_object_under_a_known_uid_keeps_the_first_with_a_warning(scp, archive):
    first = make_ct(PatientName="Premier^Patient")
    second = make_ct(sop_uid=first.SOPInstanceUID, study_uid=first.StudyInstanceUID,
                     series_uid=first.SeriesInstanceUID, PatientName="Second^Patient")
    assoc = associate_ct_modality(scp.port)
    assert assoc.send_c_store(first).Status == 0x0000
    status = assoc.send_c_store(second)
    assoc.release()
    assert status.Status == 0xB006
    assert "different content" in status.ErrorComment
    with archive.sessions() as s:
        assert s.scalar(select(Patient.patient_name)) == "Premier^Patient"
    assert _count(archive, Instance) == 1


def test_overwrite_policy_replaces_the_stored_object(instance_path):
    with archive_server(instance_path, DICOM_DUPLICATE_POLICY="overwrite") as (archive, running):
        first = make_ct(InstanceNumber=1)
        second = make_ct(sop_uid=first.SOPInstanceUID, study_uid=first.StudyInstanceUID,
                         series_uid=first.SeriesInstanceUID, InstanceNumber=7)
        assoc = associate_ct_modality(running.port)
        assert assoc.send_c_store(first).Status == 0x0000
        assert assoc.send_c_store(second).Status == 0x0000
        assoc.release()
        with archive.sessions() as s:
            assert s.scalar(select(Instance.instance_number)) == 7
        assert _count(archive, Instance) == 1


# The test itself writes deliberately invalid UIDs, which pydicom warns about.
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")
@pytest.mark.parametrize(
    "attribute, value",
    [
        ("StudyInstanceUID", None),  # missing
        ("SeriesInstanceUID", "1.2.3/../../etc"),  # path characters
        ("StudyInstanceUID", "1.2.abc"),  # letters
        ("SeriesInstanceUID", "1." + "2" * 70),  # longer than 64
    ],
)
def test_invalid_identifying_uids_are_refused_and_nothing_is_written(scp, archive, attribute, value):
    ds = make_ct()
    if value is None:
        delattr(ds, attribute)
    else:
        setattr(ds, attribute, value)
    assoc = associate_ct_modality(scp.port)
    status = assoc.send_c_store(ds)
    # The server keeps serving the same association afterwards.
    assert assoc.send_c_store(make_ct()).Status == 0x0000
    assoc.release()
    assert status.Status == 0xA900
    assert _count(archive, Instance) == 1
    assert archive.store.incoming() == []


def test_full_disk_answers_out_of_resources_and_keeps_what_is_stored(scp, archive):
    assoc = associate_ct_modality(scp.port)
    kept = make_ct()
    assert assoc.send_c_store(kept).Status == 0x0000
    archive.store.min_free_bytes = archive.store.free_bytes() + 10**15  # the floor is now above what is free
    archive.store._space_checked_at = 0.0
    status = assoc.send_c_store(make_ct())
    assoc.release()
    assert status.Status == 0xA700
    assert _count(archive, Instance) == 1
    with archive.sessions() as s:
        key = s.scalar(select(Instance.storage_key))
    assert archive.store.exists(key)


def test_unknown_calling_ae_is_refused_when_storage_is_closed_to_strangers(instance_path):
    """Query/retrieve opened to unknown AEs, storage not: the association is accepted and each
    C-STORE refused (with both closed, the default, the association itself is rejected:
    tests/integration/test_peer_access.py)."""
    from archive_core.peers import add_peer

    with archive_server(instance_path, DICOM_STORE_FROM_UNKNOWN_AES=False, DICOM_QR_FROM_UNKNOWN_AES=True) as (
            archive, running):
        with archive.sessions() as s:
            add_peer(s, "KNOWNCT", "127.0.0.1", 104)
            s.commit()
        stranger = associate_ct_modality(running.port, "STRANGER")
        refused = stranger.send_c_store(make_ct())
        stranger.release()
        known = associate_ct_modality(running.port, "KNOWNCT")
        accepted = known.send_c_store(make_ct())
        known.release()
    assert refused.Status == 0x0124
    assert accepted.Status == 0x0000


def test_series_and_study_counts_cover_several_series(scp, archive):
    study = "1.2.826.0.1.3680043.8.498.77"
    assoc = associate_ct_modality(scp.port)
    for series, modality, n in (("1", "CT", 3), ("2", "CT", 2), ("3", "SR", 1)):
        for i in range(n):
            ds = make_ct(study_uid=study, series_uid=f"{study}.{series}", modality=modality, InstanceNumber=i + 1)
            assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    with archive.sessions() as s:
        st = s.scalar(select(Study).where(Study.study_uid == study))
        assert (st.num_series, st.num_instances, st.modalities_in_study) == (3, 6, "CT\\SR")
        counts = sorted(s.scalars(select(Series.num_instances).where(Series.study_pk == st.id)))
    assert counts == [1, 2, 3]


def test_overwrite_under_other_study_and_series_leaves_no_stray_file(instance_path):
    from archive_core.maintenance import fsck

    with archive_server(instance_path, DICOM_DUPLICATE_POLICY="overwrite") as (archive, running):
        first = make_ct()
        corrected = make_ct(sop_uid=first.SOPInstanceUID)  # re-sent by the modality under a new study
        assoc = associate_ct_modality(running.port)
        assert assoc.send_c_store(first).Status == 0x0000
        assoc.release()
        assoc = associate_ct_modality(running.port)
        assert assoc.send_c_store(corrected).Status == 0x0000
        assoc.release()
        with archive.sessions() as s:
            counts = dict(s.execute(select(Study.study_uid, Study.num_instances)).all())
        assert counts == {first.StudyInstanceUID: 0, corrected.StudyInstanceUID: 1}
        assert len(list(archive.store.keys())) == 1
        assert fsck(archive).problems == 0


def test_concurrent_associations_into_one_study_are_all_indexed(scp, archive):
    import threading

    study = "1.2.826.0.1.3680043.8.498.4242"
    seen_after_release: dict[int, int] = {}
    errors: list[BaseException] = []

    def modality(n: int) -> None:
        try:
            assoc = associate_ct_modality(scp.port, f"CT{n}")
            uids = []
            for i in range(20):
                ds = make_ct(study_uid=study, series_uid=f"{study}.{n}", InstanceNumber=i + 1)
                assert assoc.send_c_store(ds).Status == 0x0000
                uids.append(ds.SOPInstanceUID)
            assoc.release()
            with archive.sessions() as s:
                seen_after_release[n] = s.scalar(
                    select(func.count(Instance.id)).where(Instance.sop_instance_uid.in_(uids))
                )
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=modality, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert seen_after_release == {0: 20, 1: 20, 2: 20, 3: 20}
    with archive.sessions() as s:
        st = s.scalar(select(Study).where(Study.study_uid == study))
        assert (st.num_series, st.num_instances) == (4, 80)
    assert _count(archive, Patient) == 1


def test_store_and_fsck_on_each_database(database_url, instance_path):
    """The same server on SQLite and on PostgreSQL (ARCHIVAGE_DATABASE_URL)."""
    from archive_core.maintenance import fsck

    with archive_server(instance_path, DATABASE_URL=database_url) as (archive, running):
        study = "1.2.826.0.1.3680043.8.498.555"
        for n in range(2):
            assoc = associate_ct_modality(running.port)
            for i in range(5):
                ds = make_ct(study_uid=study, series_uid=f"{study}.{n}", InstanceNumber=i + 1)
                assert assoc.send_c_store(ds).Status == 0x0000
            assert assoc.send_c_store(ds).Status == 0x0000  # identical duplicate
            assoc.release()
        with archive.sessions() as s:
            st = s.scalar(select(Study).where(Study.study_uid == study))
            assert (st.num_series, st.num_instances, st.modalities_in_study) == (2, 10, "CT")
        assert fsck(archive).problems == 0


def test_storage_is_audited_per_study_with_the_calling_ae(scp, archive):
    import time

    from archive_core.audit import AuditEvent

    study = "1.2.826.0.1.3680043.8.498.99"
    assoc = associate_ct_modality(scp.port, "CT_SALLE1")
    for _ in range(3):
        assert assoc.send_c_store(make_ct(study_uid=study, patient_id="PAT-AUD")).Status == 0x0000
    assoc.release()
    deadline = time.monotonic() + 5  # written when the connection closes, after the release
    while time.monotonic() < deadline:
        with archive.sessions() as s:
            event = s.scalar(select(AuditEvent).where(AuditEvent.action == "dicom.store"))
        if event is not None:
            break
        time.sleep(0.02)
    assert (event.actor, event.actor_kind, event.patient_id, event.study_uid) == ("CT_SALLE1", "ae", "PAT-AUD", study)
    assert '"instances": 3' in event.detail


@pytest.mark.parametrize("accept_unknown", [True, False])
def test_private_sop_classes_are_stored_only_when_configured(instance_path, accept_unknown):
    from pynetdicom import _config

    private_class = "1.2.826.0.1.3680043.8.498.77777.1"  # a vendor's private storage SOP class
    try:
        with archive_server(instance_path, DICOM_ACCEPT_UNKNOWN_SOP_CLASSES=accept_unknown) as (archive, running):
            ds = make_ct()
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = private_class
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context(private_class, ExplicitVRLittleEndian)
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", running.port, ae_title="ARCHIVAGE")
            assert assoc.is_established
            accepted = [cx.abstract_syntax for cx in assoc.accepted_contexts]
            if accept_unknown:
                assert private_class in accepted
                assert assoc.send_c_store(ds).Status == 0x0000
            else:
                assert private_class not in accepted  # the context is rejected at association time
            assoc.release()
            assert _count(archive, Instance) == (1 if accept_unknown else 0)
    finally:
        _config.UNRESTRICTED_STORAGE_SERVICE = False  # library-wide: leave it as found