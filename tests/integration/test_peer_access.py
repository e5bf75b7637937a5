"""Who may talk to the archive: a peer is its AE title and its address; retrieve keys are unique keys;
unknown AEs are refused storage by default with the command that registers them; C-FIND is audited.

Peers: DCMTK (echoscu, storescu, getscu, movescu, storescp) against ``flask --app wsgi archive serve``
and pynetdicom against the in-process server.
"""

from __future__ import annotations

import json
import shlex
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)
from sqlalchemy import select

from archive_core.audit import AuditEvent
from archive_core.db import write_session
from archive_core.peers import add_peer
from tests.helpers import dcmtk, free_port, make_ct, qr_identifier, require_tool, tool_env
from tests.servers import ArchiveProcess, _listening

STUDY_A = "1.2.826.0.1.3680043.8.498.9101"
STUDY_B = "1.2.826.0.1.3680043.8.498.9102"
TIMEOUT_S = 60


def _wait_for(condition, what: str, timeout: float = 10):
    """Events written when an association ends land just after the peer sees it released."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)  # no event to await across processes: poll the database
    raise AssertionError(f"timed out waiting for {what}")


def _audit_rows(db_path: Path, action: str) -> list[tuple[str, str | None, dict]]:
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT actor, patient_id, detail FROM audit_event WHERE action = ? ORDER BY id",
                          (action,)).fetchall()
    return [(actor, patient_id, json.loads(detail)) for actor, patient_id, detail in rows]


def _run_remedy(server: ArchiveProcess, remedy: str) -> None:
    """Run the logged command line as the operator would paste it."""
    command = shlex.split(remedy.split(": ", 1)[1])
    assert command[:3] == ["flask", "--app", "wsgi"]
    done = server.cli(*command[3:])
    assert done.returncode == 0, done.stderr


def _write_files(tmp_path: Path, *datasets) -> list[str]:
    paths = []
    for n, ds in enumerate(datasets):
        path = tmp_path / f"ct{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(str(path))
    return paths


# -- a registered peer is its AE title and its address -------------------------------------------


def test_registered_ae_title_from_another_address_is_rejected_audited_and_the_log_says_how_to_allow_it(tmp_path):
    """The README's CT_SALLE1 is registered at 192.0.2.10; someone at 127.0.0.1 uses its AE title
    (bad input: a borrowed AE title). Today's hole was a Patient Root C-GET ``PatientID=?*`` from
    any address returning every instance of every patient."""
    server = ArchiveProcess(tmp_path / "instance").start()
    try:
        secret = make_ct(patient_id="PAT-SECRET-42", patient_name="Secret^Patient")
        stored = dcmtk("storescu", "-aet", "MODALITY", "-aec", "ARCHIVAGE", "127.0.0.1", str(server.port),
                        *_write_files(tmp_path, secret))
        assert stored.returncode == 0, stored.stderr
        assert server.cli("peers", "add", "CT_SALLE1", "192.0.2.10", "104").returncode == 0

        echo = dcmtk("echoscu", "-aet", "CT_SALLE1", "-aec", "ARCHIVAGE", "127.0.0.1", str(server.port))
        assert echo.returncode != 0
        assert "Calling AE Title Not Recognized" in echo.stderr + echo.stdout
        out = tmp_path / "got"
        out.mkdir()
        get = dcmtk("getscu", "-P", "-aet", "CT_SALLE1", "-aec", "ARCHIVAGE", "-od", str(out),
                     "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=?*", "127.0.0.1", str(server.port))
        assert get.returncode != 0
        assert list(out.iterdir()) == []

        refused = _wait_for(lambda: _audit_rows(server.instance_path / "archivage.sqlite3", "dicom.refused"),
                            "the refusal in the audit trail")
        actor, _, detail = refused[0]
        assert actor == "CT_SALLE1"
        assert detail["address"] == "127.0.0.1" and detail["service"] == "association"
        assert detail["remedy"].endswith("flask --app wsgi peers add CT_SALLE1 192.0.2.10 104 --from 127.0.0.1")
        log = server.log()
        assert "association from AE CT_SALLE1 at 127.0.0.1 refused (registered for another address)" in log
        assert detail["remedy"] in log
        assert "PAT-SECRET-42" not in log and "Secret" not in log

        # The operator pastes the logged line: the same client is now let in.
        _run_remedy(server, detail["remedy"])
        assert server.cli("peers", "list").stdout.splitlines() == ["CT_SALLE1\t192.0.2.10\t104\tfrom 127.0.0.1"]
        echo = dcmtk("echoscu", "-aet", "CT_SALLE1", "-aec", "ARCHIVAGE", "127.0.0.1", str(server.port))
        assert echo.returncode == 0, echo.stderr
    finally:
        server.stop()


# -- unknown AEs ----------------------------------------------------------------------------------


def test_an_unknown_modality_is_refused_by_default_and_the_logged_line_registers_it(tmp_path):
    """A practice plugs in a new modality (bad input: an AE title nobody registered) on the default
    settings: its echo test and its send are rejected ("calling AE title not recognised"), nothing
    is stored; the log and the audit trail give, once per association, the one command line that
    registers it (once: the send that follows within the minute is counted, not repeated); after it,
    the same send works."""
    server = ArchiveProcess(tmp_path / "instance", open_storage=False).start()
    try:
        db = server.instance_path / "archivage.sqlite3"
        datasets = [make_ct(patient_id="PAT-NEW-7", patient_name="Nouveau^Patient", InstanceNumber=n)
                    for n in (1, 2)]
        files = _write_files(tmp_path, *datasets)
        echo = dcmtk("echoscu", "-aet", "CT_NEUF", "-aec", "ARCHIVAGE", "127.0.0.1", str(server.port))
        assert echo.returncode != 0 and "Calling AE Title Not Recognized" in echo.stderr + echo.stdout
        refused = dcmtk("storescu", "-aet", "CT_NEUF", "-aec", "ARCHIVAGE", "127.0.0.1", str(server.port), *files)
        assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stderr + refused.stdout
        with sqlite3.connect(db) as c:
            assert c.execute("SELECT count(*) FROM instance").fetchone() == (0,)

        rows = _wait_for(lambda: [r for r in _audit_rows(db, "dicom.refused") if r[0] == "CT_NEUF"],
                         "the refusals in the audit trail")
        assert len(rows) == 1  # the echo's association; the send's, within the minute, is not repeated
        _, _, detail = rows[0]
        assert (detail["address"], detail["service"]) == ("127.0.0.1", "association")
        assert detail["remedy"] == "to register it: flask --app wsgi peers add CT_NEUF 127.0.0.1 104"
        log = server.log()
        assert log.count("association from AE CT_NEUF at 127.0.0.1 refused (not a registered peer); "
                         "to register it: flask --app wsgi peers add CT_NEUF 127.0.0.1 104") == 1
        assert "PAT-NEW-7" not in log and "Nouveau" not in log
        # The refusal is a WARNING and nothing else: no handler that runs after it fails on the refused association.
        assert "Traceback" not in log and " ERROR " not in log, log

        _run_remedy(server, rows[0][2]["remedy"])
        stored = dcmtk("storescu", "-aet", "CT_NEUF", "-aec", "ARCHIVAGE", "127.0.0.1", str(server.port), *files)
        assert stored.returncode == 0, stored.stderr
        uids = {ds.SOPInstanceUID for ds in datasets}
        _wait_for(lambda: {r[0] for r in sqlite3.connect(db).execute("SELECT sop_instance_uid FROM instance")} == uids,
                  "the stored instances")
    finally:
        server.stop()


def test_a_modality_retrying_a_refused_send_is_recorded_once_a_minute_with_a_count(instance_path, monkeypatch,
                                                                                  caplog):
    """Bad input: an unknown AE that retries every few seconds (as modalities do). Each association is
    rejected, but the log and the audit trail get one record per minute, counting the others."""
    from archive_core.net import handlers
    from tests.helpers import archive_server

    with archive_server(instance_path, DICOM_STORE_FROM_UNKNOWN_AES=False) as (archive, running):
        for _ in range(4):
            echo = dcmtk("echoscu", "-aet", "CT_RETRY", "-aec", "ARCHIVAGE", "127.0.0.1", str(running.port))
            assert echo.returncode != 0
        monkeypatch.setattr(handlers, "REFUSAL_QUIET_S", 0.0)  # the minute has passed
        assert dcmtk("echoscu", "-aet", "CT_RETRY", "-aec", "ARCHIVAGE", "127.0.0.1", str(running.port)).returncode
        with archive.sessions() as s:
            details = [json.loads(e.detail) for e in s.scalars(
                select(AuditEvent).where(AuditEvent.action == "dicom.refused").order_by(AuditEvent.id))]
    assert [d["unrecorded_since_last"] for d in details] == [0, 3]
    logged = [r.getMessage() for r in caplog.records if "CT_RETRY" in r.getMessage()]
    assert len(logged) == 2 and logged[1].endswith("(3 more refusals since the last record)")


# -- retrieve keys are unique keys --------------------------------------------------------------------


@pytest.fixture
def two_patients(scp, archive):
    """PAT1 (study A, 2 CT) and PAT2 (study B, 1 CT), and CT_SALLE1 registered at 127.0.0.1."""
    datasets = [make_ct(patient_id="PAT1", study_uid=STUDY_A, series_uid=STUDY_A + ".1", sop_uid=f"{STUDY_A}.1.{n}",
                        InstanceNumber=n) for n in (1, 2)]
    datasets.append(make_ct(patient_id="PAT2", patient_name="Dupré^Zoé", charset="ISO_IR 192", study_uid=STUDY_B,
                            series_uid=STUDY_B + ".1", sop_uid=f"{STUDY_B}.1.1", study_date="20240301"))
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="ARCHIVAGE")
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    with write_session(archive.sessions) as s:
        add_peer(s, "CT_SALLE1", "127.0.0.1", 104)
    return datasets


def _c_get(port: int, identifier, model) -> tuple[list[tuple[int, str]], list[str]]:
    """(final and pending statuses with their Error Comment, SOP Instance UIDs received) of a C-GET by CT_SALLE1."""
    received: list[str] = []

    def on_store(event):
        received.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    ae = AE(ae_title="CT_SALLE1")
    ae.add_requested_context(model)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVAGE", ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    try:
        statuses = [(s.Status, str(s.get("ErrorComment", ""))) for s, _ in assoc.send_c_get(identifier, model)]
    finally:
        assoc.release()
    return statuses, received


PATIENT_GET = PatientRootQueryRetrieveInformationModelGet
STUDY_GET = StudyRootQueryRetrieveInformationModelGet


@pytest.mark.parametrize(
    "model, identifier, comment",
    [
        # The reproduced hole: every instance of every patient.
        (PATIENT_GET, qr_identifier("PATIENT", PatientID="?*"), "no wildcard in a retrieve key (PatientID)"),
        (PATIENT_GET, qr_identifier("PATIENT", PatientID="*"), "no wildcard in a retrieve key (PatientID)"),
        (PATIENT_GET, qr_identifier("PATIENT", PatientID="PAT?"), "no wildcard in a retrieve key (PatientID)"),
        (PATIENT_GET, qr_identifier("PATIENT", PatientID="PAT1\\PAT2"), "one PatientID per retrieve"),
        (STUDY_GET, qr_identifier("STUDY", StudyInstanceUID="1.2.826.*"),
         "no wildcard in a retrieve key (StudyInstanceUID)"),
        (STUDY_GET, qr_identifier("STUDY", StudyInstanceUID=f"{STUDY_A}-{STUDY_B}"),
         "StudyInstanceUID must be UIDs (no range in a retrieve key)"),
        (STUDY_GET, qr_identifier("SERIES", StudyInstanceUID=STUDY_A, SeriesInstanceUID=STUDY_A + ".?"),
         "no wildcard in a retrieve key (SeriesInstanceUID)"),
        # A unique key the level does not need still may not widen anything.
        (STUDY_GET, qr_identifier("STUDY", StudyInstanceUID=STUDY_A, PatientID="*"),
         "no wildcard in a retrieve key (PatientID)"),
    ],
    ids=["PatientID ?*", "PatientID *", "PatientID PAT?", "PatientID list", "Study UID wildcard", "Study UID range",
         "Series UID wildcard", "extra PatientID *"],
)
def test_retrieve_keys_with_wildcards_or_ranges_are_refused_and_nothing_is_sent(two_patients, scp, model, identifier,
                                                                                comment):
    statuses, received = _c_get(scp.port, identifier, model)
    assert statuses == [(0xA900, comment)]
    assert received == []


def test_exact_retrieve_keys_still_retrieve_exactly_their_entities(two_patients, scp, archive):
    """The control for the refusals above: the same peer, unique keys, gets what it names and no more."""
    statuses, received = _c_get(scp.port, qr_identifier("PATIENT", PatientID="PAT1"), PATIENT_GET)
    assert statuses[-1][0] == 0x0000
    assert sorted(received) == [f"{STUDY_A}.1.1", f"{STUDY_A}.1.2"]
    with archive.sessions() as s:
        (retrieved,) = s.scalars(select(AuditEvent).where(AuditEvent.action == "study.retrieved")).all()
    assert (retrieved.actor, retrieved.study_uid) == ("CT_SALLE1", STUDY_A)
    assert json.loads(retrieved.detail) == {"service": "C-GET", "instances": 2, "address": "127.0.0.1"}
    statuses, received = _c_get(scp.port, qr_identifier("STUDY", StudyInstanceUID=f"{STUDY_A}\\{STUDY_B}"), STUDY_GET)
    assert statuses[-1][0] == 0x0000 and len(received) == 3  # a UID list is a unique-key match


def test_movescu_with_a_wildcard_patient_id_sends_nothing(two_patients, scp, archive, tmp_path):
    """DCMTK movescu, Patient Root, ``PatientID=*`` (bad input) to a registered destination: refused, nothing moved."""
    storescp = require_tool("storescp")
    port = free_port()
    out = tmp_path / "received"
    out.mkdir()
    with write_session(archive.sessions) as s:
        add_peer(s, "DEST", "127.0.0.1", port)
    proc = subprocess.Popen([storescp, "-aet", "DEST", "-od", str(out), str(port)], env=tool_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not _listening(port):  # a destination not yet listening would make the answer 0xA801
            assert proc.poll() is None and time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.05)
        move = dcmtk("movescu", "-P", "-aet", "CT_SALLE1", "-aec", "ARCHIVAGE", "-aem", "DEST",
                      "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=*", "127.0.0.1", str(scp.port))
        assert move.returncode != 0
        assert "DataSetDoesNotMatchSOPClass" in move.stderr + move.stdout  # 0xA900
        assert list(out.iterdir()) == []
    finally:
        proc.terminate()
        proc.wait(TIMEOUT_S)


# -- C-FIND in the audit trail -----------------------------------------------------------------------


def _finds(archive) -> list[AuditEvent]:
    with archive.sessions() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == "dicom.find").order_by(AuditEvent.id)))


def test_each_c_find_is_audited_with_its_keys_and_answer_count_but_never_logged(two_patients, scp, archive, caplog):
    """Three queries on one association: three audit events (who, from where, which keys, how many
    answers); the patient name and ID asked for appear in the audit trail, not in the application log."""
    ae = AE(ae_title="CT_SALLE1")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    queries = [
        (StudyRootQueryRetrieveInformationModelFind,
         qr_identifier("STUDY", SpecificCharacterSet="ISO_IR 192", PatientName="Dupré*", StudyInstanceUID="")),
        (PatientRootQueryRetrieveInformationModelFind, qr_identifier("PATIENT", PatientID="PAT1", PatientName="")),
        (StudyRootQueryRetrieveInformationModelFind, qr_identifier("STUDY", StudyDate="20240101-", StudyInstanceUID="")),
    ]
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="ARCHIVAGE")
    answers = []
    for model, identifier in queries:
        answers.append(sum(1 for s, _ in assoc.send_c_find(identifier, model) if s.Status in (0xFF00, 0xFF01)))
    assoc.release()
    assert answers == [1, 1, 2]

    events = _wait_for(lambda: len(_finds(archive)) == 3 and _finds(archive), "three C-FIND audit events")
    details = [json.loads(e.detail) for e in events]
    assert [e.actor for e in events] == ["CT_SALLE1"] * 3
    assert [d["answers"] for d in details] == [1, 1, 2]
    assert [d["keys"] for d in details] == [{"PatientName": "Dupré*"}, {"PatientID": "PAT1"},
                                            {"StudyDate": "20240101-"}]
    assert {d["address"] for d in details} == {"127.0.0.1"}
    assert [(d["model"], d["level"]) for d in details] == [("STUDY", "STUDY"), ("PATIENT", "PATIENT"),
                                                           ("STUDY", "STUDY")]
    assert [e.patient_id for e in events] == [None, "PAT1", None]  # an exact Patient ID is filterable
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Dupré" not in logged and "PAT1" not in logged


def test_a_long_query_session_is_audited_while_it_lasts(two_patients, scp, archive):
    """A workstation that keeps its association open: the audit events are written every
    FIND_AUDIT_BATCH queries, not only when it lets go."""
    from archive_core.net.handlers import FIND_AUDIT_BATCH

    ae = AE(ae_title="CT_SALLE1")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="ARCHIVAGE")
    try:
        for _ in range(FIND_AUDIT_BATCH):
            list(assoc.send_c_find(qr_identifier("STUDY", StudyInstanceUID=STUDY_A), StudyRootQueryRetrieveInformationModelFind))
        # The association is still open: the batch is written meanwhile, off the answer path.
        _wait_for(lambda: len(_finds(archive)) == FIND_AUDIT_BATCH, "the batch of C-FIND audit events")
    finally:
        assoc.release()


def test_a_refused_query_is_audited_as_a_refusal_not_as_a_search(two_patients, scp, archive):
    """An unregistered AE's C-FIND (bad input: unknown calling AE) answers 0x0124 and discloses nothing."""
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="ARCHIVAGE")
    statuses = [s.Status for s, _ in assoc.send_c_find(qr_identifier("STUDY", PatientName="*", StudyInstanceUID=""),
                                                        StudyRootQueryRetrieveInformationModelFind)]
    assoc.release()
    assert statuses == [0x0124]
    with archive.sessions() as s:
        refused = s.scalars(select(AuditEvent).where(AuditEvent.action == "dicom.refused")).all()
    assert [(e.actor, json.loads(e.detail)["service"]) for e in refused] == [("STRANGER", "C-FIND")]
    assert _finds(archive) == []
