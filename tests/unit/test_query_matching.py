"""C-FIND matching (PS3.4 C.2.2.2) on the query layer, one table of cases, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from archive_core.errors import InvalidQuery
from archive_core.index.answers import answer
from archive_core.index.entries import Job
from archive_core.index.identity import Identity
from archive_core.index.upsert import index_jobs
from archive_core.index.query import PATIENT_ROOT, STUDY_ROOT, find, instances_to_retrieve, parse_identifier
from tests.helpers import make_ct, qr_identifier

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.11"

# study key -> (patient id, patient name, study date, study time, description, modalities)
STUDIES = {
    "S1": ("PAT15", "Dupont^Jean", "20240115", "101532.25", "Thorax", ["CT"]),
    "S2": ("PATA3", "Dupré^Zoé", "20240201", "0815", "IRM 100%_genou", ["MR"]),
    "S3": ("PAT_3", "O'Brien^Anne", "20231231", "235959", "Abdo_pelvis", ["US"]),
    "S4": ("PAT_3", "O'Brien^Anne", "20240301", "120001", "AbdoXpelvis", ["CT", "SR"]),
    "S5": ("PAT%5", "Müller^Hans", "20220505", "07", "Genou", ["CR"]),
    "S6": ("pat4", "dupont^jean", "20240116", "1200", "Crâne", ["CT"]),
}


def study_uid(key: str) -> str:
    return f"1.2.826.0.1.3680043.8.498.7{key[1:]}"


def series_uid(key: str, modality: str) -> str:
    return f"{study_uid(key)}.{ord(modality[0])}{ord(modality[1])}"


def sop_uid(key: str, modality: str, n: int) -> str:
    return f"{series_uid(key, modality)}.{n}"


@pytest.fixture
def sessions(database_url, tmp_path):
    from archive_core.db import make_engine, session_factory
    from tests.helpers import migrate

    migrate(database_url)
    engine = make_engine(database_url)
    factory = session_factory(engine)
    jobs = []
    for key, (pid, name, date, time, desc, modalities) in STUDIES.items():
        for modality in modalities:
            for n in (1, 2):
                ds = make_ct(
                    patient_id=pid,
                    patient_name=name,
                    charset="ISO_IR 192" if not name.isascii() else None,
                    study_uid=study_uid(key),
                    series_uid=series_uid(key, modality),
                    sop_uid=sop_uid(key, modality, n),
                    study_date=date,
                    modality=modality,
                    StudyTime=time,
                    StudyDescription=desc,
                    AccessionNumber=f"ACC{key[1:]}",
                    ReferringPhysicianName="Martin^Paul" if key == "S1" else "",
                    InstanceNumber=n,
                )
                if modality == "SR":
                    ds.SOPClassUID = SR_CLASS
                ident = Identity.of(ds)
                jobs.append(Job(0, Path("unused"), ident, ds, "0" * 64, 1, "1.2.840.10008.1.2.1", None, None))
    index_jobs(factory, jobs)
    yield factory
    engine.dispose()


def matched(sessions, root: str, level: str, unique: str, **keys) -> set[str]:
    ident = qr_identifier(level, **{unique: ""}, **keys) if unique not in keys else qr_identifier(level, **keys)
    with sessions() as s:
        return {row[unique] for row in find(s, parse_identifier(ident, root))}


S = study_uid

STUDY_CASES = [
    # single value, case-sensitive outside PN
    ({"PatientID": "PAT15"}, {"S1"}),
    ({"AccessionNumber": "ACC1"}, {"S1"}),
    ({"AccessionNumber": "acc1"}, set()),
    # SQL LIKE specials match literally
    ({"PatientID": "PAT%5"}, {"S5"}),
    ({"PatientID": "PAT_3"}, {"S3", "S4"}),
    ({"StudyDescription": "*%*"}, {"S2"}),
    ({"StudyDescription": "Abdo_*"}, {"S3"}),
    ({"StudyDescription": "IRM 100%_genou"}, {"S2"}),
    # wildcards
    ({"PatientID": "PAT*"}, {"S1", "S2", "S3", "S4", "S5"}),
    ({"PatientID": "pat*"}, {"S6"}),
    ({"PatientID": "PAT?3"}, {"S2", "S3", "S4"}),
    ({"StudyDescription": "Cr?ne"}, {"S6"}),
    # universal matching
    ({"PatientID": "*"}, set(STUDIES)),
    ({"PatientName": ""}, set(STUDIES)),
    ({"StudyInstanceUID": ""}, set(STUDIES)),
    # PN: component-aware, case- and accent-insensitive
    ({"PatientName": "Dupont"}, {"S1", "S6"}),
    ({"PatientName": "DUPONT^JEAN"}, {"S1", "S6"}),
    ({"PatientName": "^Jean"}, {"S1", "S6"}),
    ({"PatientName": "dupre"}, {"S2"}),
    ({"PatientName": "Dupré^Zoé"}, {"S2"}),
    ({"PatientName": "D*"}, {"S1", "S2", "S6"}),
    ({"PatientName": "O'Brien*"}, {"S3", "S4"}),
    ({"PatientName": "O'Brien^Anne"}, {"S3", "S4"}),
    ({"PatientName": "MÜLLER"}, {"S5"}),
    ({"PatientName": "Dupon"}, set()),
    ({"ReferringPhysicianName": "Martin"}, {"S1"}),
    # date ranges
    ({"StudyDate": "20240101-20240228"}, {"S1", "S2", "S6"}),
    ({"StudyDate": "-20231231"}, {"S3", "S5"}),
    ({"StudyDate": "20240301-"}, {"S4"}),
    ({"StudyDate": "20240115"}, {"S1"}),
    # time ranges at mixed precision
    ({"StudyTime": "080000-120000"}, {"S1", "S2", "S6"}),
    ({"StudyTime": "-0800"}, {"S5"}),
    ({"StudyTime": "101532"}, {"S1"}),
    ({"StudyTime": "1015-1016"}, {"S1"}),
    ({"StudyTime": "235959-"}, {"S3"}),
    # UID lists
    ({"StudyInstanceUID": f"{S('S1')}\\{S('S3')}"}, {"S1", "S3"}),
    ({"StudyInstanceUID": S("S4")}, {"S4"}),
    # computed keys used for matching
    ({"ModalitiesInStudy": "SR"}, {"S4"}),
    ({"ModalitiesInStudy": "CT\\MR"}, {"S1", "S2", "S4", "S6"}),
    ({"ModalitiesInStudy": "C?"}, {"S1", "S4", "S5", "S6"}),
    ({"SOPClassesInStudy": SR_CLASS}, {"S4"}),
    # several keys: AND
    ({"PatientName": "O'Brien", "StudyDate": "2024*"}, "invalid"),
    ({"PatientName": "O'Brien", "StudyDate": "2024-"}, "invalid"),
    ({"PatientName": "O'Brien", "StudyDate": "20240101-"}, {"S4"}),
]


@pytest.mark.parametrize("keys, expected", STUDY_CASES, ids=[str(k) for k, _ in STUDY_CASES])
def test_study_level_matching(sessions, keys, expected):
    if expected == "invalid":
        with pytest.raises(InvalidQuery):
            matched(sessions, STUDY_ROOT, "STUDY", "StudyInstanceUID", **keys)
        return
    got = matched(sessions, STUDY_ROOT, "STUDY", "StudyInstanceUID", **keys)
    assert got == {study_uid(k) for k in expected}


def test_patient_level_matching_returns_each_patient_once(sessions):
    got = matched(sessions, PATIENT_ROOT, "PATIENT", "PatientID", PatientName="O*")
    assert got == {"PAT_3"}
    with sessions() as s:
        rows = find(s, parse_identifier(qr_identifier("PATIENT", PatientID="", PatientName="*"), PATIENT_ROOT))
    assert sorted(r["PatientID"] for r in rows) == sorted({v[0] for v in STUDIES.values()})


def test_series_and_image_levels_with_uid_lists(sessions):
    got = matched(sessions, STUDY_ROOT, "SERIES", "SeriesInstanceUID", StudyInstanceUID=S("S4"), Modality="SR")
    assert got == {series_uid("S4", "SR")}
    uids = f"{sop_uid('S4', 'CT', 1)}\\{sop_uid('S4', 'SR', 2)}"
    got = matched(
        sessions, PATIENT_ROOT, "IMAGE", "SOPInstanceUID",
        PatientID="PAT_3", StudyInstanceUID=S("S4"),
        SeriesInstanceUID=f"{series_uid('S4', 'CT')}\\{series_uid('S4', 'SR')}",
        SOPInstanceUID=uids,
    )
    assert got == {sop_uid("S4", "CT", 1), sop_uid("S4", "SR", 2)}


IDENTIFIER_ERRORS = [
    (STUDY_ROOT, "STUDY", {"SeriesInstanceUID": ""}),  # key below the level
    (STUDY_ROOT, "STUDY", {"Modality": "CT"}),
    (STUDY_ROOT, "SERIES", {"SOPInstanceUID": ""}),
    (STUDY_ROOT, "SERIES", {"Modality": "CT"}),  # unique key above the level missing
    (STUDY_ROOT, "IMAGE", {"StudyInstanceUID": S("S1")}),
    (PATIENT_ROOT, "STUDY", {"StudyDate": ""}),  # PatientID missing
    (STUDY_ROOT, "PATIENT", {"PatientID": ""}),  # no such level in Study Root
    (STUDY_ROOT, "", {"PatientID": ""}),
    (STUDY_ROOT, "STUDY", {"StudyTime": "25h-"}),
]


@pytest.mark.parametrize("root, level, keys", IDENTIFIER_ERRORS)
def test_identifier_errors(root, level, keys):
    with pytest.raises(InvalidQuery):
        parse_identifier(qr_identifier(level, **keys), root)


def test_answer_has_every_requested_key_and_computed_counts(sessions):
    ident = qr_identifier(
        "STUDY", StudyInstanceUID=S("S4"), PatientName="", StudyDescription="", ModalitiesInStudy="",
        SOPClassesInStudy="", NumberOfStudyRelatedSeries="", NumberOfStudyRelatedInstances="",
        NumberOfPatientRelatedStudies="", NumberOfPatientRelatedInstances="", PerformingPhysicianName="",
    )
    query = parse_identifier(ident, STUDY_ROOT)
    with sessions() as s:
        (row,) = find(s, query)
    ds = answer(query, row, ae_title="ARCHIVAGE")
    requested = {e.keyword for e in ident} - {"QueryRetrieveLevel"}
    assert {e.keyword for e in ds} == requested | {"QueryRetrieveLevel"}
    assert list(ds.ModalitiesInStudy) == ["CT", "SR"]
    assert set(ds.SOPClassesInStudy) == {SR_CLASS, "1.2.840.10008.5.1.4.1.1.2"}
    assert (ds.NumberOfStudyRelatedSeries, ds.NumberOfStudyRelatedInstances) == (2, 4)
    assert (ds.NumberOfPatientRelatedStudies, ds.NumberOfPatientRelatedInstances) == (2, 6)
    assert ds["PerformingPhysicianName"].is_empty
    assert "SpecificCharacterSet" not in ds


def test_answer_in_utf8_when_the_name_is_not_ascii(sessions):
    query = parse_identifier(qr_identifier("STUDY", StudyInstanceUID=S("S2"), PatientName=""), STUDY_ROOT)
    with sessions() as s:
        (row,) = find(s, query)
    ds = answer(query, row, ae_title="ARCHIVAGE")
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Dupré^Zoé"


def test_limit_and_retrieve_lists(sessions):
    query = parse_identifier(qr_identifier("STUDY", StudyInstanceUID=""), STUDY_ROOT)
    with sessions() as s:
        assert len(find(s, query, limit=3)) == 3
        both = qr_identifier("STUDY", StudyInstanceUID=f"{S('S1')}\\{S('S4')}")
        move = parse_identifier(both, STUDY_ROOT, retrieve=True)
        got = instances_to_retrieve(s, move)
    assert {i.sop_instance_uid for i in got} == {
        sop_uid("S1", "CT", 1), sop_uid("S1", "CT", 2), sop_uid("S4", "CT", 1), sop_uid("S4", "CT", 2),
        sop_uid("S4", "SR", 1), sop_uid("S4", "SR", 2),
    }
    with pytest.raises(InvalidQuery):
        parse_identifier(qr_identifier("STUDY", StudyInstanceUID=""), STUDY_ROOT, retrieve=True)


def test_queries_of_one_shape_in_a_row_each_get_their_own_answers(sessions):
    """The statement of a query whose keys are all equalities is built once and reused, its values bound; other
    queries extend a shared base statement. Tried: the same shape with other values (UID, patient ID, date,
    series number), other limits and offsets, in one session and in the next; a wildcard, a UID list and a
    retrieve of the same key between them, and the requested keys only (C-FIND) after every attribute (QIDO).
    A cache that kept the first call's values or conditions answers the later calls with the first one's
    studies."""
    from archive_core.index.query import stream

    def uids(s, level="STUDY", unique="StudyInstanceUID", limit=None, offset=0, streamed=False, **keys):
        query = parse_identifier(qr_identifier(level, **{unique: "", **keys}), STUDY_ROOT)
        rows = stream(s, query, limit=limit) if streamed else find(s, query, limit=limit, offset=offset)
        return [row[unique] for row in rows]

    for _ in range(2):  # the second round reuses what the first built, in another session
        with sessions() as s:
            assert uids(s, StudyInstanceUID=S("S1")) == [S("S1")]
            assert uids(s, StudyInstanceUID=S("S4")) == [S("S4")]
            assert uids(s, StudyInstanceUID=f"{S('S2')}\\{S('S6')}") == [S("S2"), S("S6")]
            assert uids(s, StudyInstanceUID=S("S3"), streamed=True) == [S("S3")]
            assert uids(s, PatientID="PAT15") == [S("S1")]
            assert uids(s, PatientID="PAT_3") == [S("S3"), S("S4")]
            assert uids(s, PatientID="PAT*") == [S(k) for k in ("S1", "S2", "S3", "S4", "S5")]
            assert uids(s, PatientID="PAT_3", limit=1) == [S("S3")]
            assert uids(s, PatientID="PAT_3", limit=1, offset=1) == [S("S4")]
            assert uids(s, PatientID="pat4", limit=5) == [S("S6")]
            assert uids(s, PatientID="PAT_3", offset=1) == [S("S4")]
            assert uids(s, StudyDate="20240115") == [S("S1")]
            assert uids(s, StudyDate="20240116") == [S("S6")]
            assert uids(s, PatientID="PAT_3", StudyDate="20240301") == [S("S4")]
            assert uids(s, PatientID="PAT15", StudyDate="20240301") == []
            move = parse_identifier(qr_identifier("STUDY", StudyInstanceUID=S("S2")), STUDY_ROOT, retrieve=True)
            assert {i.study_uid for i in instances_to_retrieve(s, move)} == {S("S2")}
            move = parse_identifier(qr_identifier("STUDY", StudyInstanceUID=S("S6")), STUDY_ROOT, retrieve=True)
            assert {i.study_uid for i in instances_to_retrieve(s, move)} == {S("S6")}
            series = dict(level="SERIES", unique="SeriesInstanceUID", StudyInstanceUID=S("S4"))
            assert uids(s, **series, Modality="SR") == [series_uid("S4", "SR")]
            assert uids(s, **series, Modality="CT", streamed=True) == [series_uid("S4", "CT")]
            assert uids(s, **series, SeriesNumber="1") == [series_uid("S4", "CT"), series_uid("S4", "SR")]
            assert uids(s, **series, SeriesNumber="2") == []


def test_tombstoned_rows_are_invisible_to_queries_and_retrieves(sessions):
    from datetime import datetime, timezone

    from sqlalchemy import update

    from archive_core.index.models import Instance, Study

    with sessions() as s:
        s.execute(update(Study).where(Study.study_uid == S("S5")).values(deleted_at=datetime.now(timezone.utc)))
        s.execute(update(Instance).where(Instance.sop_instance_uid == sop_uid("S4", "SR", 1))
                  .values(deleted_at=datetime.now(timezone.utc)))
        s.commit()
    visible = matched(sessions, STUDY_ROOT, "STUDY", "StudyInstanceUID", PatientID="PAT*")
    assert visible == {S(k) for k in ("S1", "S2", "S3", "S4")}
    with sessions() as s:
        move = parse_identifier(qr_identifier("STUDY", StudyInstanceUID=S("S4")), STUDY_ROOT, retrieve=True)
        assert sop_uid("S4", "SR", 1) not in {i.sop_instance_uid for i in instances_to_retrieve(s, move)}


@pytest.mark.parametrize("charset, name", [
    ("ISO_IR 100", "Dupré^Zoé"),
    ("ISO_IR 192", "Dupré^Zoé"),
    ("ISO 2022 IR 100", "Dupré^Zoé"),
    ("GB18030", "Dupré^Zoé"),
])
def test_query_identifier_is_decoded_with_its_character_set(sessions, charset, name):
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pynetdicom.dsutils import decode

    ident = qr_identifier("STUDY", StudyInstanceUID="")
    ident.SpecificCharacterSet = charset
    ident.PatientName = name
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_dataset(buf, ident)  # encoded in *charset*, as a workstation sends it
    assert name.encode("utf-8") not in buf.getvalue() or charset == "ISO_IR 192"
    received = decode(io.BytesIO(buf.getvalue()), True, True)
    with sessions() as s:
        rows = find(s, parse_identifier(received, STUDY_ROOT))
    assert {r["StudyInstanceUID"] for r in rows} == {S("S2")}


# -- issue 9, section 6: C-FIND corrections ------------------------------------------------------------

JAPANESE = {  # study key -> (patient id, name in three component groups, study date as the object has it)
    "J7": ("JP1", "Yamada^Tarou=山田^太郎=やまだ^たろう", "1997.04.24"),  # ACR-NEMA date
    "J8": ("JP2", "Yamamoto^Hanako=山本^花子=やまもと^はなこ", "19970425"),
    "J9": ("JP3", "Yamada^Jirou", "19970426"),  # alphabetic group only
}


@pytest.fixture
def japanese(sessions):
    """Three more patients, indexed in the same database as STUDIES."""
    jobs = []
    for key, (pid, name, date) in JAPANESE.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about the ACR-NEMA date, as it should
            ds = make_ct(patient_id=pid, patient_name=name, charset="ISO_IR 192", study_uid=study_uid(key),
                         series_uid=series_uid(key, "CT"), sop_uid=sop_uid(key, "CT", 1), study_date=date,
                         InstanceNumber=1)
        jobs.append(Job(0, Path("unused"), Identity.of(ds), ds, "0" * 64, 1, "1.2.840.10008.1.2.1", None, None))
    index_jobs(sessions, jobs)
    return sessions


PN_GROUP_CASES = [
    # Bad input once: "=山田*" (ideographic group only) matched every patient.
    ("=山田*", {"J7"}),
    ("=山*", {"J7", "J8"}),
    ("=山田^太郎", {"J7"}),
    ("=山田", {"J7"}),  # components left out match anything
    ("=^花子", {"J8"}),
    ("==やまだ*", {"J7"}),
    ("Yamada=山田*", {"J7"}),  # every group given must match
    ("Yamada=山本*", set()),
    ("山田*", {"J7"}),  # one group: any group of the name may match
    ("やまもと", {"J8"}),
    ("Yamada", {"J7", "J9"}),
    ("=", set(STUDIES) | set(JAPANESE)),  # every group empty: universal
]


@pytest.mark.parametrize("name, expected", PN_GROUP_CASES, ids=[c[0] for c in PN_GROUP_CASES])
def test_person_name_groups_are_matched_each_on_its_own(japanese, name, expected):
    ident = qr_identifier("STUDY", StudyInstanceUID="", PatientName=name)
    ident.SpecificCharacterSet = "ISO_IR 192"
    with japanese() as s:
        got = {r["StudyInstanceUID"] for r in find(s, parse_identifier(ident, STUDY_ROOT))}
    assert got == {study_uid(k) for k in expected}


def test_acr_nema_dates_are_indexed_as_dicom_dates(japanese):
    """Bad input: the ACR-NEMA form 1997.04.24 was indexed as "1997.04." and never matched."""
    for value in ("19970424", "1997.04.24", "19970424-19970424", "-19970424"):
        got = matched(japanese, STUDY_ROOT, "STUDY", "StudyInstanceUID", StudyDate=value)
        assert S("J7") in got, value
    assert matched(japanese, STUDY_ROOT, "STUDY", "StudyInstanceUID", StudyDate="19970424-19970425") == {
        S("J7"), S("J8")}
    query = parse_identifier(qr_identifier("STUDY", StudyInstanceUID=S("J7"), StudyDate=""), STUDY_ROOT)
    with japanese() as s:
        (row,) = find(s, query)
    assert answer(query, row, ae_title="ARCHIVAGE").StudyDate == "19970424"


@pytest.mark.parametrize("value, says", [
    ("2024*", "no wildcards in a date"),  # PS3.4 C.2.2.2.4: no wildcard matching for DA
    ("2024????", "no wildcards in a date"),
    ("20241301-", "not a date"),  # month 13: once answered success with no match
    ("20240230", "not a date"),
    ("20240101-20241332", "not a date"),
    ("2024", "not a date"),
])
def test_a_date_key_that_is_no_date_or_range_is_an_identifier_error(value, says):
    with pytest.raises(InvalidQuery, match=says):
        parse_identifier(qr_identifier("STUDY", StudyInstanceUID="", StudyDate=value), STUDY_ROOT)


def test_a_sequence_key_with_an_empty_item_is_universal_matching(sessions):
    """Bad input: ProcedureCodeSequence with one item of zero-length keys answered 0xFF01."""
    item = Dataset()
    item.CodeValue = ""
    item.CodingSchemeDesignator = ""
    ident = qr_identifier("STUDY", StudyInstanceUID=S("S1"))
    ident.ProcedureCodeSequence = [item]
    query = parse_identifier(ident, STUDY_ROOT)
    assert query.unmatched_keys == []  # pending answers are 0xFF00
    with sessions() as s:
        (row,) = find(s, query)
    assert "ProcedureCodeSequence" in answer(query, row, ae_title="ARCHIVAGE")
    valued = Dataset()
    valued.CodeValue = "ZT-1"
    ident.ProcedureCodeSequence = [valued]
    assert parse_identifier(ident, STUDY_ROOT).unmatched_keys == ["ProcedureCodeSequence"]  # a value: 0xFF01


def test_rows_columns_and_frames_come_back_at_image_level(sessions):
    """Bad input: viewers ask Rows, Columns, NumberOfFrames at IMAGE level; they came back empty."""
    ds = make_ct(rows=16, study_uid=study_uid("M10"), series_uid=series_uid("M10", "CT"), sop_uid=sop_uid("M10", "CT", 1),
                 patient_id="MF1", InstanceNumber=1)
    ds.Columns = 24
    ds.NumberOfFrames = 3
    index_jobs(sessions, [Job(0, Path("unused"), Identity.of(ds), ds, "0" * 64, 1, "1.2.840.10008.1.2.1", None, None)])
    ident = qr_identifier("IMAGE", StudyInstanceUID=S("M10"), SeriesInstanceUID=series_uid("M10", "CT"),
                       SOPInstanceUID="", Rows="", Columns="", NumberOfFrames="")
    query = parse_identifier(ident, STUDY_ROOT)
    with sessions() as s:
        (row,) = find(s, query)
    got = answer(query, row, ae_title="ARCHIVAGE")
    assert (got.Rows, got.Columns, got.NumberOfFrames) == (16, 24, 3)
    assert matched(sessions, STUDY_ROOT, "IMAGE", "SOPInstanceUID", StudyInstanceUID=S("M10"),
                   SeriesInstanceUID=series_uid("M10", "CT"), Columns=24) == {sop_uid("M10", "CT", 1)}
    assert matched(sessions, STUDY_ROOT, "IMAGE", "SOPInstanceUID", StudyInstanceUID=S("M10"),
                   SeriesInstanceUID=series_uid("M10", "CT"), Columns=25) == set()


def test_wildcards_outside_their_vrs(sessions):
    """PS3.4 C.2.2.2.4: `*`/`?` are no wildcards in UI (plain characters) nor in IS (not a number: 0xA900)."""
    assert matched(sessions, STUDY_ROOT, "STUDY", "StudyInstanceUID", StudyInstanceUID=S("S1")[:-1] + "*") == set()
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pynetdicom.dsutils import decode

    ident = qr_identifier("SERIES", StudyInstanceUID=S("S1"), SeriesInstanceUID="")
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_dataset(buf, ident)
    raw = buf.getvalue() + struct.pack("<HHI", 0x0020, 0x0011, 2) + b"1*"  # SeriesNumber "1*", as sent on the wire
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the value: what the test sends on purpose
        with pytest.raises(InvalidQuery, match="not an integer|not a valid value"):
            parse_identifier(decode(io.BytesIO(raw), True, True), STUDY_ROOT)


def test_a_stored_date_that_is_no_date_is_indexed_empty():
    """Bad input: a stored StudyDate 20241301 (month 13); the index keeps no value, matching never sees it."""
    from archive_core.index.keywords import extract

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = make_ct(study_date="20241301", PatientBirthDate="1970.01.02")
    assert extract(ds, "STUDY")["study_date"] is None
    assert extract(ds, "PATIENT")["patient_birth_date"] == "19700102"
