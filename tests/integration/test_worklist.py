"""The modality worklist as the CT and ultrasound consoles use it: the desk checks a patient in through
the web API, the console fetches the scheduled step (DCMTK ``findscu -W``, pynetdicom) from
``flask --app wsgi archive serve``, reports it with MPPS (pynetdicom N-CREATE/N-SET), and its images
(``storescu``) join the desk's exam group by the accession number they carry.
"""

from __future__ import annotations

import json
import sqlite3
import time
import warnings

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from tests.helpers import dcmtk, make_ct, worklist_find
from tests.retention_support import bearer, make_user

VISIT = "2026-03-10"  # every check-in names its day: nothing here depends on today


@pytest.fixture
def desk(archive_process):
    """The web app on the archive process's instance (same database), and a front-desk token."""
    from backoffice import create_app

    for ae in ("CT_SALLE1", "US_SALLE2"):
        done = archive_process.cli("peers", "add", ae, "127.0.0.1", "104")
        assert done.returncode == 0, done.stderr
    app = create_app({"TESTING": True, "INSTANCE_PATH": str(archive_process.instance_path),
                      "STORAGE_MIN_FREE_BYTES": 0})
    client = app.test_client()
    headers = bearer(make_user(app, "accueil", "front_desk"))
    yield app, client, headers
    app.extensions["archivage"].archive.close()


def _check_in(client, headers, **body) -> dict:
    response = client.post("/api/v1/exam-groups", headers=headers, json={"visit_date": VISIT, **body})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


@pytest.fixture
def booked(desk):
    """Two patients checked in as the desk types them: a CT at 09:30 the 10th, an ultrasound the 11th."""
    app, client, headers = desk
    ct = _check_in(client, headers, patient_id="PAT-CT1", patient_name="DUPRÉ Jean-François",
                   patient_birth_date="1961-03-12", patient_sex="M", exam_group="scanner",
                   station_ae_title="CT_SALLE1", scheduled_time="09:30")
    us = _check_in(client, headers, patient_id="PAT-US2", patient_name="Martin Lucie", patient_birth_date="1990-07-01",
                   patient_sex="F", exam_group="echographie", station_ae_title="US_SALLE2",
                   visit_date="2026-03-11", scheduled_time="14:00")
    return ct, us


def _findscu(port: int, tmp_path, *keys: str, aet: str = "CT_SALLE1") -> list[Dataset]:
    out = tmp_path / f"rsp-{time.monotonic_ns()}"
    out.mkdir()
    args = ["-W", "-aet", aet, "-aec", "ARCHIVAGE", "-X", "-od", str(out), "127.0.0.1", str(port)]
    for key in keys:
        args += ["-k", key]
    done = dcmtk("findscu", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


SPS_KEYS = ("ScheduledProcedureStepSequence[0].Modality", "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID")


def test_findscu_fetches_the_checked_in_patient_with_name_birth_date_id_and_accession(archive_process, booked,
                                                                                      tmp_path):
    """The CT console asks for its day (date range, modality, its AE title): only the CT patient comes,
    with what the desk typed as DICOM carries it. Bad inputs tried: a day with nothing scheduled, the
    other modality, another station, a name that is not the patient's."""
    ct, us = booked
    found = _findscu(archive_process.port, tmp_path, "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                     "AccessionNumber", "StudyInstanceUID", "RequestedProcedureDescription",
                     "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20260310-20260310",
                     "ScheduledProcedureStepSequence[0].Modality=CT",
                     "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=CT_SALLE1",
                     "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
                     "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
                     "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus")
    assert len(found) == 1
    item = found[0]
    assert str(item.PatientName) == "DUPRÉ^Jean-François"  # FAMILY^Given, typed without any ^
    assert (item.PatientID, item.PatientBirthDate, item.PatientSex) == ("PAT-CT1", "19610312", "M")
    assert item.AccessionNumber == ct["accession_number"] and len(ct["accession_number"]) <= 16
    assert item.RequestedProcedureDescription == "Scanner"
    step = item.ScheduledProcedureStepSequence[0]
    assert (step.Modality, step.ScheduledStationAETitle, step.ScheduledProcedureStepStartDate,
            step.ScheduledProcedureStepStartTime, step.ScheduledProcedureStepStatus) == (
        "CT", "CT_SALLE1", "20260310", "093000", "SCHEDULED")
    # Only the keys asked: nothing else travels.
    assert "PatientAddress" not in item and "ScheduledProcedureStepDescription" not in step
    assert us["accession_number"] != ct["accession_number"]

    assert _findscu(archive_process.port, tmp_path, "PatientID",
                    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20260312-") == []
    assert [d.PatientID for d in _findscu(archive_process.port, tmp_path, "PatientID",
                                          "ScheduledProcedureStepSequence[0].Modality=US")] == ["PAT-US2"]
    assert [d.PatientID for d in _findscu(archive_process.port, tmp_path, "PatientID",
                                          "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=US_*")] == [
        "PAT-US2"]
    both = _findscu(archive_process.port, tmp_path, "PatientID",
                    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20260310-20260311")
    assert sorted(d.PatientID for d in both) == ["PAT-CT1", "PAT-US2"]
    assert _findscu(archive_process.port, tmp_path, "PatientID", "PatientName=DURAND*") == []


def _mwl(port: int, identifier: Dataset, *, aet: str = "US_SALLE2") -> tuple[list[int], list[Dataset]]:
    return worklist_find(port, identifier, aet)


def _query(**top) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = top.pop("PatientName", "")
    ds.PatientID = top.pop("PatientID", "")
    ds.AccessionNumber = top.pop("AccessionNumber", "")
    step = Dataset()
    step.Modality = top.pop("Modality", "")
    step.ScheduledProcedureStepStartDate = top.pop("date", "")
    step.ScheduledStationAETitle = top.pop("station", "")
    ds.ScheduledProcedureStepSequence = Sequence([step])
    for k, v in top.items():
        setattr(ds, k, v)
    return ds


def test_pynetdicom_matches_names_as_c_find_does_and_by_id_and_accession(archive_process, booked):
    """Patient's Name matches case- and accent-insensitively with wildcards (the C-FIND PN rule); Patient ID
    and Accession Number single values. Bad inputs tried: a wrong ID, an unknown accession, an invalid
    date range (answered 0xA900, nothing else)."""
    ct, _us = booked
    for typed in ("dupre*", "DUPRÉ^Jean*", "Dupre^jean-françois"):
        statuses, answers = _mwl(archive_process.port, _query(PatientName=typed))
        assert [str(a.PatientName) for a in answers] == ["DUPRÉ^Jean-François"], typed
        assert statuses[-1] == 0x0000
    assert [a.PatientID for a in _mwl(archive_process.port, _query(PatientID="PAT-US2"))[1]] == ["PAT-US2"]
    assert [a.PatientID for a in _mwl(archive_process.port, _query(AccessionNumber=ct["accession_number"]))[1]] == [
        "PAT-CT1"]
    assert _mwl(archive_process.port, _query(PatientID="PAT-XX"))[1] == []
    assert _mwl(archive_process.port, _query(AccessionNumber="NOPE"))[1] == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the bad date it is asked to send
        statuses, answers = _mwl(archive_process.port, _query(date="2026-03-aa"))
    assert (statuses, answers) == ([0xA900], [])


def test_an_unregistered_console_gets_no_worklist(archive_process, booked, tmp_path):
    """Names travel only to registered peers. Bad input tried: an AE title nobody registered (storage
    from unknown AEs is open in this instance: the worklist stays closed all the same)."""
    statuses, answers = _mwl(archive_process.port, _query(), aet="INCONNU")
    assert answers == [] and statuses == [0x0124]


def _audit(server, action: str) -> list[tuple[str, dict]]:
    with sqlite3.connect(server.instance_path / "archivage.sqlite3") as db:
        rows = db.execute("SELECT actor, detail FROM audit_event WHERE action = ? ORDER BY id", (action,)).fetchall()
    return [(actor, json.loads(detail)) for actor, detail in rows]


def test_worklist_queries_are_audited_by_ae_and_count_without_names_in_the_log(archive_process, booked):
    """Each worklist query is in the audit trail (AE title, answers, keys matched); the log of the archive
    process names the AE and the count, never the patient. Bad input tried: a query by patient name."""
    _mwl(archive_process.port, _query(PatientName="dupre*", Modality="CT"))
    rows = _audit(archive_process, "dicom.worklist.find")
    assert rows[-1][0] == "US_SALLE2"
    assert rows[-1][1]["answers"] == 1
    assert rows[-1][1]["keys"] == ["Modality", "PatientName"] and rows[-1][1]["filters"] == {"Modality": "CT"}
    assert "DUPR" not in json.dumps(rows[-1][1]).upper()
    log = archive_process.log_path.read_text(errors="replace")
    assert "worklist C-FIND from US_SALLE2: 1 answers" in log
    assert "DUPR" not in log.upper() and "PAT-CT1" not in log


def _mpps(port: int, *, aet: str = "CT_SALLE1"):
    ae = AE(ae_title=aet)
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVAGE")
    assert assoc.is_established
    return assoc


def _started(item_accession: str, study_uid: str) -> Dataset:
    ds = Dataset()
    ref = Dataset()
    ref.AccessionNumber = item_accession
    ref.StudyInstanceUID = study_uid
    ds.ScheduledStepAttributesSequence = Sequence([ref])
    ds.PatientID = "PAT-CT1"
    ds.Modality = "CT"
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedProcedureStepStartDate = "20260310"
    ds.PerformedProcedureStepStartTime = "093500"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    return ds


def _status_of(ds: Dataset) -> int:
    return int(ds.Status)


def test_mpps_moves_the_group_to_in_progress_then_done_and_the_images_join_it(archive_process, desk, booked,
                                                                              tmp_path):
    """The console reports the step: the desk sees "in progress", then "completed"; the images it sends
    with the accession number join the exam group. Bad inputs tried: N-CREATE with a status other than
    IN PROGRESS (0x0106), the same instance twice (0x0111), N-SET of an unknown instance (0x0112),
    N-SET of a completed step (0x0110, the step stays completed)."""
    app, client, headers = desk
    ct, _us = booked
    answers = _mwl(archive_process.port, _query(AccessionNumber=ct["accession_number"], StudyInstanceUID=""))[1]
    study_uid = answers[0].StudyInstanceUID

    def group_state():
        items = client.get(f"/api/v1/exam-groups?date={VISIT}", headers=headers).get_json()["items"]
        return next(i for i in items if i["id"] == ct["id"])

    assert group_state()["procedure_status"] == "scheduled"
    mpps_uid = generate_uid()
    assoc = _mpps(archive_process.port)
    try:
        wrong = _started(ct["accession_number"], study_uid)
        wrong.PerformedProcedureStepStatus = "COMPLETED"
        status, _ = assoc.send_n_create(wrong, ModalityPerformedProcedureStep, generate_uid())
        assert _status_of(status) == 0x0106
        assert group_state()["procedure_status"] == "scheduled"

        status, _ = assoc.send_n_create(_started(ct["accession_number"], study_uid), ModalityPerformedProcedureStep,
                                        mpps_uid)
        assert _status_of(status) == 0x0000
        assert group_state()["procedure_status"] == "in_progress"
        status, _ = assoc.send_n_create(_started(ct["accession_number"], study_uid), ModalityPerformedProcedureStep,
                                        mpps_uid)
        assert _status_of(status) == 0x0111

        done = Dataset()
        done.PerformedProcedureStepStatus = "COMPLETED"
        done.PerformedProcedureStepEndDate = "20260310"
        done.PerformedProcedureStepEndTime = "094500"
        status, _ = assoc.send_n_set(done, ModalityPerformedProcedureStep, generate_uid())
        assert _status_of(status) == 0x0112
        status, _ = assoc.send_n_set(done, ModalityPerformedProcedureStep, mpps_uid)
        assert _status_of(status) == 0x0000
        assert group_state()["procedure_status"] == "completed"
        again = Dataset()
        again.PerformedProcedureStepStatus = "DISCONTINUED"
        status, _ = assoc.send_n_set(again, ModalityPerformedProcedureStep, mpps_uid)
        assert _status_of(status) == 0x0110
    finally:
        assoc.release()
    assert group_state()["procedure_status"] == "completed"
    # A completed step leaves the console's worklist (a status can still be asked for).
    assert _mwl(archive_process.port, _query(AccessionNumber=ct["accession_number"]))[1] == []
    asked = _query(AccessionNumber=ct["accession_number"])
    asked.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus = "COMPLETED"
    assert len(_mwl(archive_process.port, asked)[1]) == 1
    page_client = app.test_client()
    from tests.retention_support import sign_in

    sign_in(page_client, app, "accueil2", "front_desk")
    page = page_client.get(f"/billing/groups/{ct['id']}").get_data(as_text=True)
    assert "examen terminé" in page

    # The console's images carry what the worklist gave: they join the desk's group.
    image = make_ct(patient_id="PAT-CT1", patient_name="DUPRÉ^Jean-François", charset="ISO_IR 192",
                    study_uid=study_uid, study_date="20260310", AccessionNumber=ct["accession_number"])
    path = tmp_path / "ct.dcm"
    image.save_as(path, enforce_file_format=True)
    sent = dcmtk("storescu", "-aet", "CT_SALLE1", "-aec", "ARCHIVAGE", "127.0.0.1", str(archive_process.port),
                 str(path))
    assert sent.returncode == 0, sent.stderr
    assert group_state()["study_uids"] == [study_uid]


def test_mpps_from_an_unregistered_ae_changes_nothing(archive_process, desk, booked):
    """Bad input tried: an N-CREATE from an AE nobody registered: 0x0124, the group stays scheduled."""
    _app, client, headers = desk
    ct, _us = booked
    assoc = _mpps(archive_process.port, aet="INCONNU")
    try:
        status, _ = assoc.send_n_create(_started(ct["accession_number"], generate_uid()),
                                        ModalityPerformedProcedureStep, generate_uid())
    finally:
        assoc.release()
    assert _status_of(status) == 0x0124
    items = client.get(f"/api/v1/exam-groups?date={VISIT}", headers=headers).get_json()["items"]
    assert [i["procedure_status"] for i in items if i["id"] == ct["id"]] == ["scheduled"]
