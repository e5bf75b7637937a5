"""C-FIND, C-MOVE and C-GET against the in-process server, with DCMTK and pynetdicom as the peers."""

from __future__ import annotations

import json
from dataclasses import replace
import socket
import subprocess
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless
from pynetdicom import AE
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy import select, text

from archive_core import audit
from archive_core.audit import AuditEvent
from archive_core.db import write_session
from archive_core.index.models import Instance
from archive_core.part10 import dataset_offset
from archive_core.peers import add_peer
from tests.helpers import STORAGE_BACKENDS, free_port, make_ct, require_tool, tool_env

CALLING = "WORKSTATION"
STUDY_A = "1.2.826.0.1.3680043.8.498.9001"
STUDY_B = "1.2.826.0.1.3680043.8.498.9002"
TIMEOUT_S = 60


def _store(port: int, datasets: list[Dataset]) -> None:
    ae = AE(ae_title="MODALITY")
    for ts in (ExplicitVRLittleEndian, RLELossless):
        ae.add_requested_context(CTImageStorage, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVAGE")
    assert assoc.is_established
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()


def _register(archive, ae_title: str, port: int = 104) -> None:
    with write_session(archive.sessions) as s:
        add_peer(s, ae_title, "127.0.0.1", port)


@pytest.fixture
def stored(scp, archive):
    """Two studies: an accented name in UTF-8 (3 CT, one of them RLE-compressed), and an ASCII one (2 CT)."""
    a = [
        make_ct(patient_id="PAT1", patient_name="Dupré^Zoé", charset="ISO_IR 192", study_uid=STUDY_A,
                series_uid=STUDY_A + ".1", sop_uid=f"{STUDY_A}.1.{n}", InstanceNumber=n)
        for n in (1, 2, 3)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a[2].compress(RLELossless, generate_instance_uid=False)
    b = [
        make_ct(patient_id="PAT2", patient_name="Dupont^Jean", study_uid=STUDY_B, study_date="20240301",
                series_uid=STUDY_B + ".1", sop_uid=f"{STUDY_B}.1.{n}", InstanceNumber=n)
        for n in (1, 2)
    ]
    _store(scp.port, a + b)
    _register(archive, CALLING)
    return {ds.SOPInstanceUID: ds for ds in a + b}


def _stored_dataset_bytes(archive, sop_uid: str) -> bytes:
    with archive.sessions() as s:
        key = s.scalar(Instance.__table__.select().with_only_columns(Instance.storage_key)
                       .where(Instance.sop_instance_uid == sop_uid))
    data = archive.store.read_bytes(key)
    return data[dataset_offset(data):]


def _file_dataset_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return data[dataset_offset(data):]


# -- C-FIND with findscu ----------------------------------------------------------------------------


def _findscu(port: int, query_file: Path, outdir: Path, *extra: str) -> list[Dataset]:
    findscu = require_tool("findscu")
    outdir.mkdir(exist_ok=True)
    run = subprocess.run(
        [findscu, "-S", "-aet", CALLING, "-aec", "ARCHIVAGE", "-X", "-od", str(outdir), *extra,
         "127.0.0.1", str(port), str(query_file)],
        capture_output=True, text=True, timeout=TIMEOUT_S, env=tool_env(),
    )
    assert run.returncode == 0, run.stderr
    return [dcmread(p) for p in sorted(outdir.glob("rsp*.dcm"))]


def _query_file(tmp_path: Path, charset: str | None, **keys) -> Path:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = "STUDY"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
    path = tmp_path / f"query-{charset or 'ascii'}.dcm"
    ds.save_as(path, implicit_vr=False, little_endian=True)
    return path


@pytest.mark.parametrize("charset", ["ISO_IR 100", "ISO_IR 192"])
def test_findscu_gets_accented_names_back_in_either_character_set(stored, scp, tmp_path, charset):
    query = _query_file(tmp_path, charset, PatientName="dupré*", StudyInstanceUID="", PatientID="",
                        ModalitiesInStudy="", NumberOfStudyRelatedInstances="")
    answers = _findscu(scp.port, query, tmp_path / "out")
    assert len(answers) == 1
    (ds,) = answers
    assert ds.StudyInstanceUID == STUDY_A
    assert str(ds.PatientName) == "Dupré^Zoé"
    assert ds.NumberOfStudyRelatedInstances == 3
    assert ds.ModalitiesInStudy == "CT"
    assert {e.keyword for e in ds} == {
        "SpecificCharacterSet", "QueryRetrieveLevel", "PatientName", "StudyInstanceUID", "PatientID",
        "ModalitiesInStudy", "NumberOfStudyRelatedInstances",
    }


def test_findscu_study_root_exact_answer_set(stored, scp, tmp_path):
    query = _query_file(tmp_path, None, StudyInstanceUID="", StudyDate="20240101-", PatientName="")
    answers = _findscu(scp.port, query, tmp_path / "out")
    assert sorted(ds.StudyInstanceUID for ds in answers) == sorted([STUDY_A, STUDY_B])
    ascii_answer = next(ds for ds in answers if ds.StudyInstanceUID == STUDY_B)
    assert "SpecificCharacterSet" not in ascii_answer


def test_findscu_image_level_patient_root(stored, scp, tmp_path):
    findscu_args = ["-P", "-k", "QueryRetrieveLevel=IMAGE", "-k", "PatientID=PAT1", "-k", f"StudyInstanceUID={STUDY_A}",
                    "-k", f"SeriesInstanceUID={STUDY_A}.1", "-k", "SOPInstanceUID", "-k", "InstanceNumber"]
    findscu = require_tool("findscu")
    out = tmp_path / "out"
    out.mkdir()
    run = subprocess.run([findscu, "-aet", CALLING, "-aec", "ARCHIVAGE", "-X", "-od", str(out), *findscu_args,
                          "127.0.0.1", str(scp.port)],
                         capture_output=True, text=True, timeout=TIMEOUT_S, env=tool_env())
    assert run.returncode == 0, run.stderr
    answers = [dcmread(p) for p in out.glob("rsp*.dcm")]
    assert sorted(ds.SOPInstanceUID for ds in answers) == [f"{STUDY_A}.1.{n}" for n in (1, 2, 3)]


# -- C-FIND statuses with a pynetdicom SCU ---------------------------------------------------------


def _find_statuses(port: int, identifier: Dataset, model=StudyRootQueryRetrieveInformationModelFind, ae_title=CALLING):
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVAGE")
    assert assoc.is_established
    try:
        responses = assoc.send_c_find(identifier, model)
        return [(status.Status, status.get("ErrorComment"), ident) for status, ident in responses]
    finally:
        assoc.release()


def _identifier(level: str, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_key_below_the_level_is_an_identifier_error(stored, scp):
    responses = _find_statuses(scp.port, _identifier("STUDY", StudyInstanceUID="", SeriesInstanceUID=""))
    assert [r[0] for r in responses] == [0xA900]
    assert "below" in responses[0][1]


def test_missing_unique_key_above_the_level_is_an_identifier_error(stored, scp):
    ident = _identifier("STUDY", StudyInstanceUID="")
    responses = _find_statuses(scp.port, ident, PatientRootQueryRetrieveInformationModelFind)
    assert [r[0] for r in responses] == [0xA900]


def test_a_key_we_cannot_match_on_gives_ff01_and_comes_back_empty(stored, scp):
    ident = _identifier("STUDY", StudyInstanceUID=STUDY_A, PerformingPhysicianName="House")
    responses = _find_statuses(scp.port, ident)
    assert [r[0] for r in responses] == [0xFF01, 0x0000]
    assert responses[0][2]["PerformingPhysicianName"].is_empty


def test_unknown_calling_ae_may_not_query(stored, scp):
    responses = _find_statuses(scp.port, _identifier("STUDY", StudyInstanceUID=""), ae_title="STRANGER")
    assert [r[0] for r in responses] == [0x0124]


def test_too_many_matches_ends_with_a_clear_failure(stored, scp, archive):
    import dataclasses

    scp.context.settings = dataclasses.replace(scp.context.settings, DICOM_MAX_FIND_RESULTS=1)
    responses = _find_statuses(scp.port, _identifier("STUDY", StudyInstanceUID=""))
    assert [r[0] for r in responses] == [0xFF00, 0xA700]
    assert "more than 1" in responses[-1][1]


def test_cancelled_find_stops_with_fe00(stored, scp):
    from archive_core.net.qr import handle_find

    class Event:
        """A C-FIND event whose SCU cancels after the first answer."""

        assoc = SimpleNamespace(requestor=SimpleNamespace(ae_title=CALLING, address="127.0.0.1"))
        identifier = _identifier("IMAGE", StudyInstanceUID=STUDY_A, SeriesInstanceUID=STUDY_A + ".1", SOPInstanceUID="")
        request = SimpleNamespace(AffectedSOPClassUID=StudyRootQueryRetrieveInformationModelFind)
        _checks = iter([False, True])

        @property
        def is_cancelled(self) -> bool:
            return next(self._checks)

    event = Event()
    statuses = [status if isinstance(status, int) else status.Status for status, _ in handle_find(event, scp.context)]
    assert statuses == [0xFF00, 0xFE00]  # three matches, one answer sent


def test_c_cancel_from_a_pynetdicom_scu_is_honoured(stored, scp):
    ae = AE(ae_title=CALLING)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="ARCHIVAGE")
    ident = _identifier("STUDY", StudyInstanceUID="")
    responses = assoc.send_c_find(ident, StudyRootQueryRetrieveInformationModelFind, msg_id=7)
    assoc.send_c_cancel(7, query_model=StudyRootQueryRetrieveInformationModelFind)
    statuses = [status.Status for status, _ in responses]
    assoc.release()
    # The cancel may arrive after the two answers were sent; it must never break the exchange.
    assert statuses in ([0xFF00, 0xFF00, 0x0000], [0xFE00], [0xFF00, 0xFE00], [0xFF00, 0xFF00, 0xFE00])


# -- C-MOVE ---------------------------------------------------------------------------------------


def _wait_listening(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, "storescp exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.02)  # polling a port: no event to await
    raise TimeoutError("storescp did not start")


@pytest.fixture
def storescp(tmp_path):
    tool = require_tool("storescp")
    port = free_port()
    out = tmp_path / "received"
    out.mkdir()
    proc = subprocess.Popen([tool, "-aet", "DEST", "+B", "-od", str(out), str(port)], env=tool_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, proc)
        yield SimpleNamespace(port=port, out=out)
    finally:
        proc.terminate()
        proc.wait(TIMEOUT_S)


def _movescu(port: int, destination: str, *keys: str) -> subprocess.CompletedProcess:
    movescu = require_tool("movescu")
    args = [movescu, "-S", "-aet", CALLING, "-aec", "ARCHIVAGE", "-aem", destination]
    for key in keys:
        args += ["-k", key]
    return subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True, text=True, timeout=TIMEOUT_S,
                          env=tool_env())


@STORAGE_BACKENDS
def test_movescu_to_a_registered_peer_sends_the_stored_bytes(stored, scp, archive, storescp):
    _register(archive, "DEST", storescp.port)
    run = _movescu(scp.port, "DEST", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={STUDY_B}")
    assert run.returncode == 0, run.stderr
    received = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in storescp.out.iterdir()}
    assert set(received) == {f"{STUDY_B}.1.1", f"{STUDY_B}.1.2"}
    for uid, path in received.items():
        assert _file_dataset_bytes(path) == _stored_dataset_bytes(archive, uid)


def test_movescu_of_a_study_list_audits_each_study_with_its_count_in_the_chain(stored, scp, archive, storescp):
    """DCMTK movescu with a UID list of two studies (3 and 2 instances): everything reaches the
    destination, and the audit trail holds one ``study.retrieved`` per study (not one for the list,
    not a count of the whole move), linked into a chain that still verifies."""
    _register(archive, "DEST", storescp.port)
    run = _movescu(scp.port, "DEST", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={STUDY_A}\\{STUDY_B}")
    assert run.returncode == 0, run.stderr
    assert len(list(storescp.out.iterdir())) == 5
    with archive.sessions() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "study.retrieved")
                           .order_by(AuditEvent.id)).all()
        assert [(e.actor, e.study_uid, json.loads(e.detail)) for e in events] == [
            (CALLING, STUDY_A, {"service": "C-MOVE", "instances": 3, "address": "127.0.0.1"}),
            (CALLING, STUDY_B, {"service": "C-MOVE", "instances": 2, "address": "127.0.0.1"}),
        ]
        assert audit.verify(s).ok


def test_a_move_that_cannot_be_audited_sends_nothing_and_fails(stored, scp, archive, storescp):
    """The audit trail refuses the retrieve's event (bad state: a trigger aborts the insert, as a
    full disk or a locked database would): the C-MOVE answers a processing failure (0xCxxx) and
    the destination receives nothing, because a retrieve is audited before anything is sent."""
    _register(archive, "DEST", storescp.port)
    with write_session(archive.sessions) as s:
        s.execute(text("CREATE TRIGGER refuse_retrieve BEFORE INSERT ON audit_event "
                       "WHEN NEW.action = 'study.retrieved' BEGIN SELECT RAISE(ABORT, 'audit refused'); END"))
    responses = _move_statuses(scp.port, "DEST", _identifier("STUDY", StudyInstanceUID=STUDY_B))
    assert responses[-1][0] & 0xF000 == 0xC000
    assert list(storescp.out.iterdir()) == []
    with archive.sessions() as s:
        assert s.scalars(select(AuditEvent).where(AuditEvent.action == "study.retrieved")).all() == []


@STORAGE_BACKENDS
def test_move_decompresses_for_a_destination_without_the_stored_syntax(stored, scp, archive, storescp):
    _register(archive, "DEST", storescp.port)
    run = _movescu(scp.port, "DEST", "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={STUDY_A}",
                   f"SeriesInstanceUID={STUDY_A}.1", f"SOPInstanceUID={STUDY_A}.1.3")
    assert run.returncode == 0, run.stderr
    (path,) = storescp.out.iterdir()
    got = dcmread(path)
    assert got.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")
    original = make_ct(rows=16)
    assert got.PixelData == original.PixelData


def _move_statuses(port: int, destination: str, identifier: Dataset):
    ae = AE(ae_title=CALLING)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVAGE")
    try:
        responses = assoc.send_c_move(identifier, destination, StudyRootQueryRetrieveInformationModelMove)
        return [(s.Status, s, i) for s, i in responses]
    finally:
        assoc.release()


def test_unknown_calling_ae_may_not_retrieve(stored, scp, storescp, archive):
    _register(archive, "DEST", storescp.port)
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="ARCHIVAGE")
    responses = [s.Status for s, _ in assoc.send_c_move(_identifier("STUDY", StudyInstanceUID=STUDY_B), "DEST",
                                                        StudyRootQueryRetrieveInformationModelMove)]
    assoc.release()
    assert responses == [0x0124]
    assert list(storescp.out.iterdir()) == []


def test_unknown_move_destination_is_refused_and_nothing_is_sent(stored, scp, storescp):
    responses = _move_statuses(scp.port, "NOBODY", _identifier("STUDY", StudyInstanceUID=STUDY_B))
    assert [r[0] for r in responses] == [0xA801]
    assert list(storescp.out.iterdir()) == []


@STORAGE_BACKENDS
def test_partial_failure_lists_the_failed_instances(stored, scp, archive, storescp):
    _register(archive, "DEST", storescp.port)
    with archive.sessions() as s:
        key = s.scalar(Instance.__table__.select().with_only_columns(Instance.storage_key)
                       .where(Instance.sop_instance_uid == f"{STUDY_B}.1.2"))
    archive.store.delete(key)  # the blob is gone: that sub-operation fails
    responses = _move_statuses(scp.port, "DEST", _identifier("STUDY", StudyInstanceUID=STUDY_B))
    final = responses[-1]
    assert final[0] == 0xB000
    assert final[1].NumberOfCompletedSuboperations == 1 and final[1].NumberOfFailedSuboperations == 1
    assert final[2].FailedSOPInstanceUIDList == f"{STUDY_B}.1.2"
    assert [r[1].NumberOfRemainingSuboperations for r in responses[:-1]] == [1, 0]


@pytest.fixture
def storescp_with(tmp_path):
    """A DCMTK storescp started with extra options (bit-preserving, AE DEST): yields its port and folder."""
    procs = []

    def start(*options: str) -> SimpleNamespace:
        port = free_port()
        out = tmp_path / f"received-{port}"
        out.mkdir()
        proc = subprocess.Popen([require_tool("storescp"), "-aet", "DEST", "+B", *options, "-od", str(out), str(port)],
                                env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        _wait_listening(port, proc)
        return SimpleNamespace(port=port, out=out)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(TIMEOUT_S)


@pytest.mark.parametrize("abort", ["--abort-after", "--abort-during"])
def test_destination_aborting_mid_move_fails_every_sub_operation_left(stored, scp, archive, storescp_with, abort):
    """Bad case tried: the destination (storescp) aborts its association on the first C-STORE,
    before answering it or while receiving it. The archive reads that A-ABORT itself (not after
    its 30 s DIMSE timeout), counts that sub-operation and the one never sent as failed, lists
    both in the final response, and serves the next C-MOVE normally."""
    dest = storescp_with(abort)
    _register(archive, "DEST", dest.port)
    started = time.monotonic()
    responses = _move_statuses(scp.port, "DEST", _identifier("STUDY", StudyInstanceUID=STUDY_B))
    assert time.monotonic() - started < 20
    status, final, identifier = responses[-1]
    assert status == 0xA702  # every sub-operation failed
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations,
            final.NumberOfWarningSuboperations) == (0, 2, 0)
    assert sorted(identifier.FailedSOPInstanceUIDList) == [f"{STUDY_B}.1.1", f"{STUDY_B}.1.2"]

    good = storescp_with()
    _register(archive, "DEST", good.port)
    responses = _move_statuses(scp.port, "DEST", _identifier("STUDY", StudyInstanceUID=STUDY_B))
    assert responses[-1][0] == 0x0000
    assert len(list(good.out.iterdir())) == 2


@pytest.mark.parametrize("dul_delay", [0.0, 0.001])
def test_destination_statuses_are_counted_as_it_gave_them(stored, scp, archive, dul_delay):
    """Bad cases tried: a warning (0xB000) counted as completed or as failed, a refusal (0xA700)
    counted as completed. A destination (pynetdicom storage SCP) warns on one object, refuses
    another and stores the third: the final C-MOVE response says 1 completed, 1 warning, 1 failed
    (0xB000), and lists only the refused object; each pending response counts down. Both ways of
    reading the answers: by the sending thread (tuned) and by pynetdicom (DICOM_DUL_LOOP_DELAY set)."""
    from tests.helpers import answering_store_scp

    scp.context.settings = replace(scp.context.settings, DICOM_DUL_LOOP_DELAY=dul_delay)
    answers = {f"{STUDY_A}.1.1": (0xB000, "as the test says"), f"{STUDY_A}.1.2": (0xA700, "as the test says")}
    with answering_store_scp("WS9", answers) as port:
        _register(archive, "WS9", port)
        responses = _move_statuses(scp.port, "WS9", _identifier("STUDY", StudyInstanceUID=STUDY_A))
    status, final, identifier = responses[-1]
    assert status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfWarningSuboperations,
            final.NumberOfFailedSuboperations) == (1, 1, 1)
    assert identifier.FailedSOPInstanceUIDList == f"{STUDY_A}.1.2"
    assert [r[1].NumberOfRemainingSuboperations for r in responses[:-1]] == [2, 1, 0]


def test_destination_with_the_smallest_pdu_gets_the_stored_bytes(stored, scp, archive, storescp_with):
    """Bad case tried: a destination whose maximum PDU (4096, storescp's least) is far below the
    object size, so every object goes out in many PDUs: it still receives the stored bytes."""
    dest = storescp_with("-pdu", "4096")
    _register(archive, "DEST", dest.port)
    run = _movescu(scp.port, "DEST", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={STUDY_B}")
    assert run.returncode == 0, run.stderr
    received = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in dest.out.iterdir()}
    assert set(received) == {f"{STUDY_B}.1.1", f"{STUDY_B}.1.2"}
    for uid, path in received.items():
        assert _file_dataset_bytes(path) == _stored_dataset_bytes(archive, uid)


# -- C-GET ----------------------------------------------------------------------------------------


@STORAGE_BACKENDS
def test_getscu_receives_the_study_over_its_own_association(stored, scp, archive, tmp_path):
    getscu = require_tool("getscu")
    out = tmp_path / "got"
    out.mkdir()
    run = subprocess.run(
        [getscu, "-S", "-aet", CALLING, "-aec", "ARCHIVAGE", "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
         "-k", f"StudyInstanceUID={STUDY_B}", "127.0.0.1", str(scp.port)],
        capture_output=True, text=True, timeout=TIMEOUT_S, env=tool_env(),
    )
    assert run.returncode == 0, run.stderr
    received = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in out.iterdir()}
    assert set(received) == {f"{STUDY_B}.1.1", f"{STUDY_B}.1.2"}
    for uid, path in received.items():
        # getscu re-encodes what it writes (no bit-preserving mode): compare element by element;
        # byte identity on the wire is checked through storescp +B in the C-MOVE tests.
        with archive.store.open(_key(archive, uid)) as stored_file:
            assert dcmread(path) == dcmread(stored_file)


@pytest.mark.parametrize("dul_delay", [0.0, 0.001])
def test_c_cancel_during_c_get_stops_after_the_object_in_progress(stored, scp, dul_delay):
    """Bad case tried: a C-CANCEL that arrives while the archive awaits a C-STORE response (the
    requestor sends it from its C-STORE handler, before its answer) lost or taken for the
    answer. The archive stops after that object: final status 0xFE00 with one completed and two
    remaining, one object received; the association then still answers a C-ECHO. With the
    answers read by the sending thread (tuned) and by pynetdicom (DICOM_DUL_LOOP_DELAY set)."""
    from pynetdicom import build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet, Verification

    scp.context.settings = replace(scp.context.settings, DICOM_DUL_LOOP_DELAY=dul_delay)

    received = []

    def on_store(event):
        received.append(str(event.request.AffectedSOPInstanceUID))
        if len(received) == 1:
            event.assoc.send_c_cancel(7, query_model=StudyRootQueryRetrieveInformationModelGet)
        return 0x0000

    ae = AE(ae_title=CALLING)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, RLELossless])
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="ARCHIVAGE", ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    try:
        responses = [(s.Status, s) for s, _ in assoc.send_c_get(
            _identifier("STUDY", StudyInstanceUID=STUDY_A), StudyRootQueryRetrieveInformationModelGet, msg_id=7)]
        echo = assoc.send_c_echo()
    finally:
        assoc.release()
    status, final = responses[-1]
    assert status == 0xFE00
    assert (final.NumberOfCompletedSuboperations, final.NumberOfRemainingSuboperations) == (1, 2)
    assert len(received) == 1
    assert echo.Status == 0x0000


def _key(archive, uid: str) -> str:
    with archive.sessions() as s:
        return s.scalar(Instance.__table__.select().with_only_columns(Instance.storage_key)
                        .where(Instance.sop_instance_uid == uid))


# -- the facade's retrieve-to-peer ----------------------------------------------------------------


def test_facade_retrieve_to_peer_sends_the_stored_bytes(stored, archive, storescp):
    from archive_core.api import ArchiveFacade
    from archive_core.errors import UnknownPeer

    _register(archive, "DEST", storescp.port)
    facade = ArchiveFacade(archive)
    result = facade.retrieve_to_peer([STUDY_B], "DEST", actor="dr.house", actor_kind="user")
    assert (result.completed, result.failed) == (2, 0)
    for path in storescp.out.iterdir():
        uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert _file_dataset_bytes(path) == _stored_dataset_bytes(archive, uid)
    with pytest.raises(UnknownPeer):
        facade.retrieve_to_peer([STUDY_B], "NOBODY")


def test_move_after_the_patient_went_to_the_archive_tier_sends_the_same_bytes(stored, scp, archive, storescp):
    """Retention's intermediate archive (second storage tier) stays retrievable over DICOM."""
    from sqlalchemy import select

    from archive_core.index.models import Patient
    from archive_core.tiers import move_patient_to_archive

    before = {uid: _stored_dataset_bytes(archive, uid) for uid in (f"{STUDY_B}.1.1", f"{STUDY_B}.1.2")}
    with archive.sessions() as s:
        patient_pk = s.scalar(select(Patient.id).where(Patient.patient_id == "PAT2"))
        keys = list(s.scalars(select(Instance.storage_key).where(Instance.sop_instance_uid.in_(before))))
    move_patient_to_archive(archive, patient_pk)
    with archive.sessions() as s:
        assert set(s.scalars(select(Instance.tier).where(Instance.sop_instance_uid.in_(before)))) == {"archive"}
    assert not any(archive.store.exists(k) for k in keys)  # the active copies are gone

    _register(archive, "DEST", storescp.port)
    run = _movescu(scp.port, "DEST", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={STUDY_B}")
    assert run.returncode == 0, run.stderr
    received = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in storescp.out.iterdir()}
    assert {uid: _file_dataset_bytes(p) for uid, p in received.items()} == before


@pytest.mark.parametrize("fast", [True, False])
def test_pending_answers_are_the_same_with_and_without_the_one_pdu_path(stored, scp, tmp_path, fast):
    """DICOM_FAST_FIND_ANSWERS sends each pending answer as one PDU; what the SCU decodes is the same."""
    from pynetdicom import evt as pevt
    from pynetdicom.pdu import P_DATA_TF

    scp.context.settings = replace(scp.context.settings, DICOM_FAST_FIND_ANSWERS=fast)
    pdus: list[int] = []
    ae = AE(ae_title=CALLING)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="ARCHIVAGE",
                         evt_handlers=[(pevt.EVT_PDU_RECV, lambda e: pdus.append(isinstance(e.pdu, P_DATA_TF)))])
    assert assoc.is_established
    query = _identifier("STUDY", PatientName="Dup*", StudyInstanceUID="", PatientID="", ModalitiesInStudy="",
                        NumberOfStudyRelatedInstances="")
    responses = [(s.Status, i) for s, i in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)]
    assoc.release()
    answers = sorted((str(i.PatientName), i.PatientID, i.StudyInstanceUID, i.ModalitiesInStudy,
                      int(i.NumberOfStudyRelatedInstances)) for s, i in responses if s == 0xFF00)
    assert answers == [("Dupont^Jean", "PAT2", STUDY_B, "CT", 2), ("Dupré^Zoé", "PAT1", STUDY_A, "CT", 3)]
    assert responses[-1][0] == 0x0000
    # Two pending answers and the final status: 3 P-DATA PDUs on the fast path, 5 on pynetdicom's.
    assert sum(pdus) == (3 if fast else 5)
