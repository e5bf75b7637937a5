"""One patient per study, one study per series: contradicting objects are refused, audited, never filed.

The modality is pynetdicom (in-process server), DCMTK's storescu (the ``archive serve`` process) and
``archive import``. Each refusal must leave the index, the store and the journal as they were.
"""

from __future__ import annotations

import json
import subprocess
import threading
from datetime import datetime, timezone

import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select

from archive_core.audit import AuditEvent
from archive_core.errors import IdentityConflict
from archive_core.index.identity import Identity
from archive_core.index.models import Instance, Patient, Series, Study
from tests.helpers import associate_ct_modality, make_ct, require_tool, tool_env
from tests.integration.test_bad_input import _encoded, _part10

SERIES_CONFLICT = "Series Instance UID belongs to another study"
STUDY_CONFLICT = "Study Instance UID is filed under another Patient ID"


def _store(port: int, *datasets, ae_title: str = "CT_SALLE1") -> list:
    assoc = associate_ct_modality(port, ae_title)
    try:
        return [assoc.send_c_store(ds) for ds in datasets]
    finally:
        assoc.release()


def _filed(archive) -> dict[str, tuple[str, str, str]]:
    """SOP Instance UID -> (Series UID, Study UID, Patient ID) as the index files it."""
    with archive.sessions() as s:
        rows = s.execute(
            select(Instance.sop_instance_uid, Series.series_uid, Study.study_uid, Patient.patient_id)
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
            .join(Patient, Study.patient_pk == Patient.id)
        ).all()
    return {sop: (series, study, patient) for sop, series, study, patient in rows}


def _refusals(archive) -> list[AuditEvent]:
    with archive.sessions() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == "dicom.store.refused")))


def _nothing_half_written(archive, stored: int) -> None:
    assert archive.store.incoming() == []
    assert list(archive.store.incoming_dir.glob("*.tmp")) == []
    assert len(list(archive.store.keys())) == stored


def test_series_of_another_patient_is_refused_not_filed_under_them(scp, archive):
    """The reported case: PAT009, a new Study UID, but PAT001's Series UID (was 0x0000 and filed under PAT001)."""
    first = make_ct(patient_id="PAT001")
    intruder = make_ct(patient_id="PAT009", patient_name="Autre^Patiente", series_uid=first.SeriesInstanceUID)
    assert [s.Status for s in _store(scp.port, first)] == [0x0000]
    (status,) = _store(scp.port, intruder)
    assert (status.Status, status.ErrorComment) == (0xC409, SERIES_CONFLICT)
    assert _filed(archive) == {
        first.SOPInstanceUID: (first.SeriesInstanceUID, first.StudyInstanceUID, "PAT001")
    }
    with archive.sessions() as s:  # no study, no patient row left behind for the refused object
        assert s.scalar(select(func.count(Study.id))) == 1
        assert s.scalar(select(func.count(Patient.id))) == 1
    _nothing_half_written(archive, stored=1)
    (event,) = _refusals(archive)
    detail = json.loads(event.detail)
    assert (event.actor, event.actor_kind, event.patient_id, event.study_uid) == (
        "CT_SALLE1", "ae", "PAT009", intruder.StudyInstanceUID
    )
    assert detail == {"via": "C-STORE", "reason": SERIES_CONFLICT, "sop_instance_uid": intruder.SOPInstanceUID,
                      "series_uid": first.SeriesInstanceUID}
    assert "Autre" not in event.detail  # no patient name in the trail's detail


def test_another_patient_inside_an_existing_study_is_refused(scp, archive):
    """An object of PAT002 in PAT001's study, in a new series (was accepted silently)."""
    first = make_ct(patient_id="PAT001")
    other = make_ct(patient_id="PAT002", study_uid=first.StudyInstanceUID)
    same_patient = make_ct(patient_id="PAT001", study_uid=first.StudyInstanceUID)
    statuses = _store(scp.port, first, other, same_patient)
    assert [s.Status for s in statuses] == [0x0000, 0xC409, 0x0000]
    assert statuses[1].ErrorComment == STUDY_CONFLICT
    assert set(_filed(archive)) == {first.SOPInstanceUID, same_patient.SOPInstanceUID}
    _nothing_half_written(archive, stored=2)
    (event,) = _refusals(archive)
    assert (event.patient_id, event.study_uid, json.loads(event.detail)["reason"]) == (
        "PAT002", first.StudyInstanceUID, STUDY_CONFLICT
    )


def test_issuer_of_patient_id_is_part_of_the_patient(scp, archive):
    """Same Patient ID from another issuer (another hospital's numbering) is another patient."""
    first = make_ct(patient_id="12345", IssuerOfPatientID="HOPITAL_A")
    other = make_ct(patient_id="12345", IssuerOfPatientID="HOPITAL_B", study_uid=first.StudyInstanceUID)
    assert [s.Status for s in _store(scp.port, first, other)] == [0x0000, 0xC409]


def test_conflict_with_an_object_acknowledged_but_not_yet_indexed(archive):
    """The check sees the journal's pending objects: here the indexer has not run at all (not started)."""
    ingestor = archive.ingestor
    first = make_ct(patient_id="PAT001")
    intruder = make_ct(patient_id="PAT009", series_uid=first.SeriesInstanceUID)
    other_patient = make_ct(patient_id="PAT002", study_uid=first.StudyInstanceUID)
    ingestor.receive(_encoded(first), first, transfer_syntax_uid=ExplicitVRLittleEndian, identity=Identity.of(first))
    for ds, message in ((intruder, SERIES_CONFLICT), (other_patient, STUDY_CONFLICT)):
        with pytest.raises(IdentityConflict, match=message):
            ingestor.receive(_encoded(ds), ds, transfer_syntax_uid=ExplicitVRLittleEndian, identity=Identity.of(ds))
    assert len(archive.store.incoming()) == 1  # only the first was written to the journal
    ingestor.start(replay=False)  # the queued entry is indexed by the thread, as in a running server
    assert ingestor.wait_indexed()
    assert set(_filed(archive)) == {first.SOPInstanceUID}
    # Once indexed, the held maps are emptied and the index answers the same.
    with pytest.raises(IdentityConflict, match=SERIES_CONFLICT):
        ingestor.receive(_encoded(intruder), intruder, transfer_syntax_uid=ExplicitVRLittleEndian,
                         identity=Identity.of(intruder))
    assert ingestor._series_held == {} and ingestor._studies_held == {}


def test_two_associations_racing_into_the_same_series_file_each_under_one_patient(scp, archive):
    """Two modalities send objects of two patients under the same ten Series UIDs at the same time."""
    series_uids = [generate_uid() for _ in range(10)]
    barrier = threading.Barrier(2)
    answers: dict[str, list[tuple[str, str, int]]] = {}

    def modality(patient_id: str) -> None:
        study_uid = generate_uid()
        datasets = [make_ct(patient_id=patient_id, study_uid=study_uid, series_uid=se) for se in series_uids]
        assoc = associate_ct_modality(scp.port, f"CT_{patient_id}")
        barrier.wait()
        answers[patient_id] = [(ds.SOPInstanceUID, ds.SeriesInstanceUID, int(assoc.send_c_store(ds).Status))
                               for ds in datasets]
        assoc.release()

    threads = [threading.Thread(target=modality, args=(p,)) for p in ("PAT001", "PAT002")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    filed = _filed(archive)
    for series_uid in series_uids:
        sent = [(p, sop, status) for p, rows in answers.items() for sop, se, status in rows if se == series_uid]
        accepted = [(p, sop) for p, sop, status in sent if status == 0x0000]
        assert sorted(status for _, _, status in sent) == [0x0000, 0xC409]  # exactly one wins each series
        ((patient_id, sop),) = accepted
        assert filed[sop][2] == patient_id  # filed under the patient its object names
    assert len(filed) == 10
    _nothing_half_written(archive, stored=10)


def test_merged_patient_id_is_accepted_into_the_survivors_study(scp, archive):
    """After PAT-B was merged into PAT-A, a late image still saying PAT-B joins its study; PAT-C does not."""
    from archive_core.corrections import merge_patients
    from archive_core.db import write_session

    study_b = make_ct(patient_id="PAT-B")
    assert [s.Status for s in _store(scp.port, make_ct(patient_id="PAT-A"), study_b)] == [0x0000, 0x0000]
    with write_session(archive.sessions) as s:
        merge_patients(s, archive, "PAT-B", "PAT-A", at=datetime(2026, 3, 2, tzinfo=timezone.utc))
    late = make_ct(patient_id="PAT-B", study_uid=study_b.StudyInstanceUID, series_uid=study_b.SeriesInstanceUID)
    stranger = make_ct(patient_id="PAT-C", study_uid=study_b.StudyInstanceUID)
    assert [s.Status for s in _store(scp.port, late, stranger)] == [0x0000, 0xC409]
    assert _filed(archive)[late.SOPInstanceUID][2] == "PAT-A"


def test_dataset_without_sop_instance_uid_is_refused_and_audited(scp, archive, chunked_send, tmp_path):
    """The request names a SOP Instance UID, the dataset carries none (was acknowledged, then broke the CD)."""
    ds = make_ct()
    bare = make_ct(sop_uid=ds.SOPInstanceUID, study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID)
    del bare.SOPInstanceUID
    (status,) = _store(scp.port, _part10(tmp_path / "bare.dcm", ds, _encoded(bare)))
    assert (status.Status, status.ErrorComment) == (0xA900, "dataset has no SOP Instance UID")
    _nothing_half_written(archive, stored=0)
    (event,) = _refusals(archive)
    assert json.loads(event.detail)["sop_instance_uid"] == ds.SOPInstanceUID  # the request's, for the record


def test_import_skips_contradicting_files_with_the_reason(app, runner, tmp_path):
    """`archive import` of a folder whose second file reuses the first one's series for another patient."""
    archive = app.extensions["archivage"].archive
    folder = tmp_path / "cd"
    folder.mkdir()
    first = make_ct(patient_id="PAT001")
    intruder = make_ct(patient_id="PAT009", series_uid=first.SeriesInstanceUID)
    bare = make_ct(patient_id="PAT001", study_uid=first.StudyInstanceUID)
    first.save_as(folder / "a.dcm", enforce_file_format=True)
    intruder.save_as(folder / "b.dcm", enforce_file_format=True)
    del bare.SOPInstanceUID  # the file meta still names one
    bare.save_as(folder / "c.dcm", enforce_file_format=False)
    result = runner.invoke(args=["archive", "import", str(folder)])
    assert result.exit_code == 0, result.output
    assert f"skipped: {folder / 'b.dcm'}: {SERIES_CONFLICT}\n" in result.output
    assert f"skipped: {folder / 'c.dcm'}: dataset has no SOP Instance UID\n" in result.output
    assert "stored 1, duplicates 0, skipped 2" in result.output
    assert set(_filed(archive)) == {first.SOPInstanceUID}
    _nothing_half_written(archive, stored=1)
    events = _refusals(archive)
    assert [(e.actor, e.actor_kind, json.loads(e.detail)["via"]) for e in events] == [
        ("archive import", "system", "import")
    ] * 2


@pytest.mark.dcmtk
def test_storescu_sees_the_refusal_and_its_error_comment(archive_process, tmp_path):
    """DCMTK storescu sends an object into another patient's series: status and Error Comment it prints."""
    first = make_ct(patient_id="PAT001")
    intruder = make_ct(patient_id="PAT009", series_uid=first.SeriesInstanceUID)
    paths = []
    for name, ds in (("first.dcm", first), ("intruder.dcm", intruder)):
        ds.save_as(tmp_path / name, enforce_file_format=True)
        paths.append(str(tmp_path / name))
    done = subprocess.run(
        [require_tool("storescu"), "-d", "--no-halt", "-aet", "CT_SALLE1", "-aec", "ARCHIVAGE", "127.0.0.1",
         str(archive_process.port), *paths],
        env=tool_env(), capture_output=True, text=True, timeout=120,
    )
    output = done.stdout + done.stderr
    assert "DIMSE Status                  : 0xc409: Error: Cannot understand" in output, output
    assert f"(0000,0902) LO [{SERIES_CONFLICT}]" in output, output
    fsck = archive_process.cli("archive", "fsck")
    assert "checked 1 instances, 0 problems" in fsck.stdout, fsck.stdout + fsck.stderr


def test_contradiction_acknowledged_by_another_process_is_quarantined_not_filed(archive):
    """Two ingestors on one storage (a server and `archive import` beside it) cannot see each other's
    pending objects: the second's contradicting object is caught when indexed and kept aside."""
    from archive_core.index.ingest import Ingestor

    server, importer = archive.ingestor, Ingestor(archive.store, archive.sessions)
    first = make_ct(patient_id="PAT001")
    intruder = make_ct(patient_id="PAT009", series_uid=first.SeriesInstanceUID)
    server.receive(_encoded(first), first, transfer_syntax_uid=ExplicitVRLittleEndian, identity=Identity.of(first))
    importer.receive(_encoded(intruder), intruder, transfer_syntax_uid=ExplicitVRLittleEndian,
                     source_ae=None, identity=Identity.of(intruder))
    server.start(replay=False)
    assert server.wait_indexed()
    importer.start(replay=False)
    try:
        assert importer.wait_indexed()
    finally:
        importer.stop()
    assert _filed(archive) == {first.SOPInstanceUID: (first.SeriesInstanceUID, first.StudyInstanceUID, "PAT001")}
    assert [p.name.endswith(f"-{intruder.SOPInstanceUID}.dcm")
            for p in (archive.store.root / "quarantine").iterdir()] == [True]
    _nothing_half_written(archive, stored=1)
    (event,) = _refusals(archive)
    assert (event.actor, json.loads(event.detail)["via"], event.patient_id) == ("archive", "index", "PAT009")


def test_conflicts_are_refused_on_each_database(database_url, instance_path):
    """The same two refusals with the index on SQLite and on PostgreSQL (one statement, scalar subqueries)."""
    from tests.helpers import archive_server

    with archive_server(instance_path, DATABASE_URL=database_url) as (archive, running):
        first = make_ct(patient_id="PAT001")
        intruder = make_ct(patient_id="PAT009", series_uid=first.SeriesInstanceUID)
        other = make_ct(patient_id="PAT002", study_uid=first.StudyInstanceUID)
        assert [s.Status for s in _store(running.port, first)] == [0x0000]
        statuses = _store(running.port, intruder, other)
        assert [(s.Status, s.ErrorComment) for s in statuses] == [(0xC409, SERIES_CONFLICT), (0xC409, STUDY_CONFLICT)]
        assert set(_filed(archive)) == {first.SOPInstanceUID}
        assert len(_refusals(archive)) == 2


def test_fsck_repair_does_not_file_a_contradicting_orphan(archive):
    """An orphan file (say, restored from a backup by hand) whose series is another patient's study's."""
    import io

    from archive_core.index.identity import storage_key
    from archive_core.maintenance import fsck

    first = make_ct(patient_id="PAT001")
    archive.ingestor.start()
    archive.ingestor.receive(_encoded(first), first, transfer_syntax_uid=ExplicitVRLittleEndian,
                             identity=Identity.of(first))
    assert archive.ingestor.wait_indexed()
    intruder = make_ct(patient_id="PAT009", series_uid=first.SeriesInstanceUID)
    buf = io.BytesIO()
    intruder.save_as(buf, enforce_file_format=True)
    key = storage_key(intruder.StudyInstanceUID, intruder.SeriesInstanceUID, intruder.SOPInstanceUID)
    archive.store.put_bytes(key, buf.getvalue())
    report = fsck(archive, repair=True)
    assert f"quarantined contradicting {key}" in report.repaired
    assert set(_filed(archive)) == {first.SOPInstanceUID}
    assert fsck(archive).problems == 0
