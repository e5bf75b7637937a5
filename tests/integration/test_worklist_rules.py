"""The finer rules of the worklist and MPPS SCP (docs/conformance.md), with pynetdicom as the console
against the in-process DICOM server; items scheduled through the facade, as the back-office does."""

from __future__ import annotations

import warnings
from datetime import datetime

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from archive_core.api import ArchiveFacade
from archive_core.db import write_session
from archive_core.peers import add_peer
from tests.helpers import archive_server, worklist_find

CONSOLE = "CT_SALLE1"


@pytest.fixture
def archive(server):
    return server[0]


@pytest.fixture
def scp(server):
    return server[1]


@pytest.fixture
def facade(archive):
    return ArchiveFacade(archive)


@pytest.fixture
def steps(archive, facade, scp):
    """Three CT steps on the 10th (08:15, 11:40, 16:05) and an MR one on the 12th; the console registered."""
    with write_session(archive.sessions) as s:
        add_peer(s, CONSOLE, "127.0.0.1", 104)
    out = []
    with facade.new_session(write=True) as s:
        planned = [("CT", datetime(2026, 3, 10, 8, 15)), ("CT", datetime(2026, 3, 10, 11, 40)),
                   ("CT", datetime(2026, 3, 10, 16, 5)), ("MR", datetime(2026, 3, 12, 9))]
        for n, (modality, start) in enumerate(planned):
            out.append(facade.schedule_procedure_step(
                s, patient_id=f"P{n}", patient_name=f"PATIENT{n}^Anne", patient_birth_date="19800101",
                patient_sex="F", modality=modality, start=start, created_by="test", station_ae_title=CONSOLE))
        s.commit()
    return out


def _find(port: int, identifier: Dataset, aet: str = CONSOLE) -> tuple[list[int], list[Dataset]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bad values some tests send on purpose
        return worklist_find(port, identifier, aet)


def _ident(**sps) -> Dataset:
    ds = Dataset()
    ds.PatientID = ""
    step = Dataset()
    for k, v in sps.items():
        setattr(step, k, v)
    ds.ScheduledProcedureStepSequence = Sequence([step])
    return ds


@pytest.mark.parametrize("key, value, expected", [
    ("PatientID", "P1", ["P1"]),
    ("PatientID", "P?", ["P0", "P1", "P2", "P3"]),
    ("RequestedProcedureID", "RP2", ["P1"]),
    ("PatientSex", "M", []),
    ("PatientBirthDate", "19790101-19801231", ["P0", "P1", "P2", "P3"]),
    ("PatientBirthDate", "19810101-", []),
    ("StudyInstanceUID", "uids:0,3", ["P0", "P3"]),
    ("ScheduledProcedureStepID", "SPS3", ["P2"]),
    ("ScheduledProcedureStepStatus", "SCHEDULED", ["P0", "P1", "P2", "P3"]),
    ("ScheduledProcedureStepStatus", "COMPLETED", []),
])
def test_every_matching_key(scp, steps, key, value, expected):
    """Each matching key of docs/conformance.md narrows the answers; bad inputs tried: a sex, a birth-date
    range and a status nobody has."""
    ds = Dataset()
    ds.PatientID = ""
    step = Dataset()
    step.ScheduledProcedureStepStatus = ""
    ds.ScheduledProcedureStepSequence = Sequence([step])
    if value.startswith("uids:"):
        value = [steps[int(i)].study_uid for i in value[5:].split(",")]
    if key.startswith("Scheduled"):
        setattr(step, key, value)
    else:
        setattr(ds, key, value)
    statuses, answers = _find(scp.port, ds)
    assert statuses[-1] == 0 and sorted(a.PatientID for a in answers) == expected


def test_generated_identifiers(steps):
    """Study Instance UIDs in 2.25 form, accession numbers YYMMDD + 7 digits, RP/SPS numbering."""
    assert all(s.study_uid.startswith("2.25.") for s in steps)
    assert steps[3].accession_number == "2603120000004" and steps[3].step_id == "SPS4"


def test_start_time_ranges_match_inside_the_sequence(scp, steps):
    """Start time as a TM range (the morning, the afternoon, an open end). Bad input tried: a time that is
    not one (0xA900)."""
    def ids(value):
        return sorted(a.PatientID for a in _find(scp.port, _ident(ScheduledProcedureStepStartTime=value))[1])

    assert ids("0800-1200") == ["P0", "P1", "P3"]
    assert ids("1200-") == ["P2"]
    assert ids("-0830") == ["P0"]
    assert _find(scp.port, _ident(ScheduledProcedureStepStartTime="25h"))[0] == [0xA900]


def test_modality_outside_the_sequence_is_matched_too_and_answers_carry_utf8(scp, steps):
    """Some consoles put Modality at the top level: matched all the same. Every answer says ISO_IR 192."""
    ds = Dataset()
    ds.PatientID = ""
    ds.Modality = "MR"
    statuses, answers = _find(scp.port, ds)
    assert [a.PatientID for a in answers] == ["P3"] and statuses[-1] == 0
    assert all(a.SpecificCharacterSet == "ISO_IR 192" for a in answers)


def test_keys_not_held_come_back_empty_and_unmatched_keys_answer_ff01(scp, steps):
    """A return key the archive does not hold (Referring Physician's Name) comes back empty; a key given a
    value it does not match on (Scheduled Performing Physician's Name) makes the answers 0xFF01."""
    ds = _ident(Modality="MR")
    ds.ReferringPhysicianName = ""
    statuses, answers = _find(scp.port, ds)
    assert statuses == [0xFF00, 0x0000]
    assert "ReferringPhysicianName" in answers[0] and answers[0].ReferringPhysicianName == ""
    ds = _ident(Modality="MR", ScheduledPerformingPhysicianName="HOUSE*")
    statuses, answers = _find(scp.port, ds)
    assert statuses == [0xFF01, 0x0000] and len(answers) == 1


def test_two_sequence_items_are_an_invalid_identifier(scp, steps):
    """Bad input tried: a Scheduled Procedure Step Sequence with two items (K.6.1.2.2 allows one)."""
    ds = _ident(Modality="CT")
    ds.ScheduledProcedureStepSequence.append(Dataset())
    assert _find(scp.port, ds) == ([0xA900], [])


def test_more_matches_than_the_limit_end_with_a700(tmp_path):
    """The C-FIND answer limit holds for the worklist: past DICOM_MAX_FIND_RESULTS, 0xA700 ends it."""
    from archive_core.archive import Archive
    from archive_core.config import Settings
    from archive_core.net.server import start_server
    from tests.helpers import migrate

    (tmp_path / "limited").mkdir()
    settings = Settings(instance_path=tmp_path / "limited", STORAGE_MIN_FREE_BYTES=0, DICOM_MAX_FIND_RESULTS=2)
    migrate(settings.database_url)
    archive = Archive.open(settings)
    facade = ArchiveFacade(archive)
    with write_session(archive.sessions) as s:
        add_peer(s, CONSOLE, "127.0.0.1", 104)
    with facade.new_session(write=True) as s:
        for n in range(3):
            facade.schedule_procedure_step(s, patient_id=f"L{n}", patient_name=None, patient_birth_date=None,
                                           patient_sex=None, modality="CT", start=datetime(2026, 3, 10, 9, n),
                                           created_by="test")
        s.commit()
    running = start_server(archive, host="127.0.0.1", port=0)
    try:
        statuses, answers = _find(running.port, _ident(Modality="CT"))
    finally:
        running.stop()
        archive.close()
    assert statuses == [0xFF00, 0xFF00, 0xA700] and len(answers) == 2


def _mpps():
    ae = AE(ae_title=CONSOLE)
    ae.add_requested_context(ModalityPerformedProcedureStep)
    return ae


def _create_ds(**ref) -> Dataset:
    ds = Dataset()
    item = Dataset()
    for k, v in ref.items():
        setattr(item, k, v)
    ds.ScheduledStepAttributesSequence = Sequence([item])
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    return ds


def test_mpps_assigns_an_instance_uid_finds_the_item_by_step_id_and_discontinues_it(scp, facade, steps):
    """An N-CREATE without an Affected SOP Instance UID gets one back; the item is found by its Scheduled
    Procedure Step ID; DISCONTINUED ends it. Bad input tried: an N-SET with a status that does not exist
    (0x0106, nothing changes)."""
    target = steps[1]
    received = []  # the N-CREATE-RSP command sets, where the assigned UID travels

    def on_recv(event):
        received.append(event.message.command_set)

    assoc = _mpps().associate("127.0.0.1", scp.port, ae_title="ARCHIVAGE",
                              evt_handlers=[(evt.EVT_DIMSE_RECV, on_recv)])
    assert assoc.is_established
    try:
        # pynetdicom sends no Affected SOP Instance UID when none is given.
        status, _ = assoc.send_n_create(_create_ds(ScheduledProcedureStepID=target.step_id),
                                        ModalityPerformedProcedureStep, None)
        assert int(status.Status) == 0
        uid = str(received[-1].AffectedSOPInstanceUID)
        assert uid.startswith("2.25.")
        bad = Dataset()
        bad.PerformedProcedureStepStatus = "FINISHED"
        assert int(assoc.send_n_set(bad, ModalityPerformedProcedureStep, uid)[0].Status) == 0x0106
        stop = Dataset()
        stop.PerformedProcedureStepStatus = "DISCONTINUED"
        assert int(assoc.send_n_set(stop, ModalityPerformedProcedureStep, uid)[0].Status) == 0
    finally:
        assoc.release()
    with facade.new_session() as s:
        got = facade.procedure_steps(s, [target.accession_number, steps[0].accession_number])
    assert got[target.accession_number].status == "DISCONTINUED"
    assert got[steps[0].accession_number].status == "SCHEDULED"  # the others untouched


def test_an_unscheduled_procedure_is_recorded_without_touching_the_worklist(scp, facade, steps):
    """A step performed without a worklist item (an emergency typed at the console): N-CREATE and N-SET
    succeed, no scheduled item changes."""
    assoc = _mpps().associate("127.0.0.1", scp.port, ae_title="ARCHIVAGE")
    uid = generate_uid()
    try:
        assert int(assoc.send_n_create(_create_ds(AccessionNumber="UNKNOWN"), ModalityPerformedProcedureStep,
                                       uid)[0].Status) == 0
        done = Dataset()
        done.PerformedProcedureStepStatus = "COMPLETED"
        assert int(assoc.send_n_set(done, ModalityPerformedProcedureStep, uid)[0].Status) == 0
    finally:
        assoc.release()
    with facade.new_session() as s:
        got = facade.procedure_steps(s, [st.accession_number for st in steps])
    assert {st.status for st in got.values()} == {"SCHEDULED"}


def test_open_query_retrieve_does_not_open_the_worklist(tmp_path):
    """Bad input tried: an unregistered AE on an archive that lets unknown AEs query and retrieve
    (DICOM_QR_FROM_UNKNOWN_AES true): the worklist and MPPS still answer 0x0124."""
    (tmp_path / "open").mkdir()
    with archive_server(tmp_path / "open", DICOM_QR_FROM_UNKNOWN_AES=True) as (archive, running):
        facade = ArchiveFacade(archive)
        with facade.new_session(write=True) as s:
            facade.schedule_procedure_step(s, patient_id="P1", patient_name="ROUX^Léa", patient_birth_date=None,
                                           patient_sex=None, modality="CT", start=datetime(2026, 3, 10, 9),
                                           created_by="test")
            s.commit()
        assert _find(running.port, _ident(Modality="CT"), aet="INCONNU") == ([0x0124], [])
        ae = AE(ae_title="INCONNU")
        ae.add_requested_context(ModalityPerformedProcedureStep)
        assoc = ae.associate("127.0.0.1", running.port, ae_title="ARCHIVAGE")
        try:
            status, _ = assoc.send_n_create(_create_ds(AccessionNumber="X"), ModalityPerformedProcedureStep,
                                            generate_uid())
        finally:
            assoc.release()
        assert int(status.Status) == 0x0124
