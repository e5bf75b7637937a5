"""C-FIND answers come from the database cursor as they are sent, on SQLite and PostgreSQL.

The index is filled directly (thousands of studies in a second) with more matches than one
cursor batch (500 rows), so that answers from every batch are checked: all of them, in index
order, with the keys computed per batch (SOP Classes in Study); cancel and the match limit stop
the stream where they should; and the rows are never all held in memory at once.
"""

from __future__ import annotations

import gc
import tracemalloc
from dataclasses import replace
from types import SimpleNamespace

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind
from sqlalchemy import insert

from archive_core.db import write_session
from archive_core.index.models import Instance, Patient, Series, Study
from archive_core.index.query import STUDY_ROOT, parse_identifier, stream
from archive_core.net.qr import handle_find
from archive_core.peers import add_peer

CALLING = "WORKSTATION"
CT, MR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"


def _study_uid(n: int) -> str:
    return f"1.2.826.0.1.3680043.8.498.77.{n}"


def _fill(archive, studies: int) -> list[int]:
    """*studies* studies, one patient each; every fourth patient is named Zola (not matched by ``A*``).

    Returns the numbers of the studies ``PatientName=A*`` matches, in index order. Study *n* holds
    one CT image, and one MR image too when *n* is odd.
    """
    with archive.sessions.begin() as s:
        conn = s.connection()
        conn.execute(insert(Patient), [
            {"id": n + 1, "patient_id": f"P{n:05d}", "issuer_of_patient_id": "",
             "patient_name": "Zola^Emile" if n % 4 == 3 else f"Aubert^N{n}",
             "patient_name_search": "ZOLA^EMILE" if n % 4 == 3 else f"AUBERT^N{n}"}
            for n in range(studies)
        ])
        conn.execute(insert(Study), [
            {"id": n + 1, "study_uid": _study_uid(n), "patient_pk": n + 1, "study_date": "20240115",
             "modalities_in_study": "CT\\MR" if n % 2 else "CT", "num_series": 1 + n % 2,
             "num_instances": 1 + n % 2, "external": False}
            for n in range(studies)
        ])
        series = [{"id": 2 * n + 1, "series_uid": f"{_study_uid(n)}.1", "study_pk": n + 1, "modality": "CT",
                   "num_instances": 1} for n in range(studies)]
        series += [{"id": 2 * n + 2, "series_uid": f"{_study_uid(n)}.2", "study_pk": n + 1, "modality": "MR",
                    "num_instances": 1} for n in range(1, studies, 2)]
        conn.execute(insert(Series), series)
        conn.execute(insert(Instance), [
            {"sop_instance_uid": f"{se['series_uid']}.1", "series_pk": se["id"],
             "sop_class_uid": CT if se["modality"] == "CT" else MR, "transfer_syntax_uid": "1.2.840.10008.1.2.1",
             "size_bytes": 1, "checksum_sha256": "0" * 64, "storage_key": f"k/{se['series_uid']}"}
            for se in series
        ])
    with write_session(archive.sessions) as s:
        add_peer(s, CALLING, "127.0.0.1", 104)
    return [n for n in range(studies) if n % 4 != 3]


def _identifier(**keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword, value in {"StudyInstanceUID": "", "PatientName": "A*", **keys}.items():
        setattr(ds, keyword, value)
    return ds


class _Event:
    """A C-FIND event as pynetdicom hands it to the handler; the SCU cancels at the *cancel_at*-th check."""

    def __init__(self, identifier: Dataset, cancel_at: int | None = None) -> None:
        self.assoc = SimpleNamespace(requestor=SimpleNamespace(ae_title=CALLING, address="127.0.0.1"))
        self.identifier = identifier
        self.request = SimpleNamespace(AffectedSOPClassUID=StudyRootQueryRetrieveInformationModelFind)
        self.checks = 0
        self._cancel_at = cancel_at

    @property
    def is_cancelled(self) -> bool:
        self.checks += 1
        return self.checks == self._cancel_at


def _values(value) -> list[str]:
    return sorted(str(v) for v in value) if isinstance(value, (list, MultiValue)) else [str(value)]


def _statuses(responses) -> list[int]:
    return [status if isinstance(status, int) else status.Status for status, _ in responses]


def test_every_match_comes_back_in_index_order_across_cursor_batches(server):
    """1,400 matches (three cursor batches) to a pynetdicom SCU: each one once, in order, with its own
    SOP classes; the Zola studies interleaved with them (bad input: they must not match) never come back."""
    archive, running = server
    matched = _fill(archive, 1_866)
    assert len(matched) == 1_400
    ae = AE(ae_title=CALLING)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", running.port, ae_title="ARCHIVAGE")
    assert assoc.is_established
    try:
        identifier = _identifier(SOPClassesInStudy="", NumberOfStudyRelatedInstances="")
        responses = [(s.Status, i) for s, i in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)]
    finally:
        assoc.release()
    assert [s for s, _ in responses] == [0xFF00] * 1_400 + [0x0000]
    answers = [i for s, i in responses if s == 0xFF00]
    assert [a.StudyInstanceUID for a in answers] == [_study_uid(n) for n in matched]
    assert {str(a.PatientName) for a in answers[-100:]} == {f"Aubert^N{n}" for n in matched[-100:]}
    assert [_values(a.SOPClassesInStudy) for a in answers] == [[CT, MR] if n % 2 else [CT] for n in matched]
    assert [int(a.NumberOfStudyRelatedInstances) for a in answers] == [1 + n % 2 for n in matched]


def test_cancel_in_the_middle_of_the_stream_stops_after_the_answers_already_given(server):
    """The SCU cancels before the 700th answer (in the second cursor batch): 699 answers, the first
    699 matches in order, then 0xFE00; nothing after the cancel is sent."""
    archive, running = server
    matched = _fill(archive, 1_866)
    event = _Event(_identifier(), cancel_at=700)
    responses = list(handle_find(event, running.context))
    assert _statuses(responses) == [0xFF00] * 699 + [0xFE00]
    assert [i.StudyInstanceUID for _, i in responses[:-1]] == [_study_uid(n) for n in matched[:699]]
    assert event.checks == 700


def test_more_matches_than_the_limit_send_the_first_ones_then_a700(server):
    """DICOM_MAX_FIND_RESULTS=600 against 1,400 matches: the first 600 in order, then 0xA700 naming the limit."""
    archive, running = server
    matched = _fill(archive, 1_866)
    running.context.settings = replace(running.context.settings, DICOM_MAX_FIND_RESULTS=600)
    responses = list(handle_find(_Event(_identifier()), running.context))
    assert _statuses(responses) == [0xFF00] * 600 + [0xA700]
    assert [i.StudyInstanceUID for _, i in responses[:-1]] == [_study_uid(n) for n in matched[:600]]
    assert "more than 600" in responses[-1][0].ErrorComment


def _peak_bytes(consume) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        consume()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_answers_are_not_all_held_in_memory_at_once(server):
    """Answering 6,000 matches must take much less memory than holding their 6,000 rows: the handler
    reads rows batch by batch from the cursor. A handler that first read every row into a list (what
    C-FIND did before) peaks above the rows' own size and fails this."""
    archive, running = server
    _fill(archive, 8_000)
    identifier = _identifier(PatientID="", StudyDate="", ModalitiesInStudy="", NumberOfStudyRelatedInstances="")
    query = parse_identifier(identifier, STUDY_ROOT)

    def rows_held() -> None:
        with archive.sessions() as s:
            rows = list(stream(s, query))
            assert len(rows) == 6_000

    def answers_sent() -> None:
        count = 0
        for status, _ in handle_find(_Event(identifier), running.context):
            count += status == 0xFF00
        assert count == 6_000

    answers_sent()  # SQL compiled and cached, pydicom's dictionaries loaded: only the rows count below
    rows_held()
    held, streamed = _peak_bytes(rows_held), _peak_bytes(answers_sent)
    assert streamed < held / 2, (streamed, held)
