"""C-FIND answers encoded straight from index rows are byte for byte the answers sent before.

The C-FIND loop no longer builds a pydicom Dataset per match: answer_elements() lists the
requested keys' values and encode_elements() writes them. Both must agree with answer() encoded
by encode_flat() (itself checked against pydicom's writer in test_fast_encoding.py) for every row,
whatever the values (accents switch the answer to ISO_IR 192, empty values stay zero length).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from archive_core.index.answers import answer, answer_elements
from archive_core.index.query import PATIENT_ROOT, STUDY_ROOT, parse_identifier
from archive_core.net.encoding import encode_elements, encode_flat

text = st.one_of(st.none(), st.just(""), st.text(alphabet="abcXYZ019 ^-.éèçÉàü", max_size=24))
uid = st.one_of(st.none(), st.from_regex(r"1\.2\.[0-9]{1,12}(\.[0-9]{1,5}){0,3}", fullmatch=True))
date = st.one_of(st.none(), st.from_regex(r"(19|20)[0-9]{2}(0[1-9]|1[0-2])(0[1-9]|1[0-9]|2[0-8])", fullmatch=True))
count = st.one_of(st.none(), st.integers(0, 99_999))
modalities = st.one_of(st.none(), st.just(""), st.lists(st.sampled_from(["CT", "MR", "SR", "US"]), min_size=1,
                                                       max_size=3).map("\\".join))

STUDY_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "StudyDate", "StudyTime",
              "AccessionNumber", "StudyDescription", "ReferringPhysicianName", "ModalitiesInStudy",
              "NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries", "RetrieveAETitle",
              "InstanceAvailability")


def _query(keys, root=STUDY_ROOT, level="STUDY"):
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword in keys:
        setattr(ds, keyword, "")
    if level == "SERIES":
        ds.StudyInstanceUID = "1.2.3"
    return parse_identifier(ds, root)


@pytest.mark.parametrize("implicit", [True, False])
@given(
    keys=st.lists(st.sampled_from(STUDY_KEYS), min_size=1, unique=True),
    name=text, pid=text, birth=date, study_uid=uid, study_date=date, accession=text, description=text,
    physician=text, mods=modalities, instances=count, series=count,
)
def test_answers_from_rows_are_the_bytes_sent_before(implicit, keys, name, pid, birth, study_uid, study_date,
                                                        accession, description, physician, mods, instances, series):
    query = _query(keys)
    row = {"PatientName": name, "PatientID": pid, "PatientBirthDate": birth, "StudyInstanceUID": study_uid,
           "StudyDate": study_date, "StudyTime": "101500", "AccessionNumber": accession,
           "StudyDescription": description, "ReferringPhysicianName": physician, "ModalitiesInStudy": mods,
           "NumberOfStudyRelatedInstances": instances, "NumberOfStudyRelatedSeries": series}
    elements = answer_elements(query, row, ae_title="ARCHIVAGE")
    expected = answer(query, row, ae_title="ARCHIVAGE")
    assert encode_elements(elements, implicit, True) == encode_flat(expected, implicit, True)


def test_series_level_answers_with_a_key_we_do_not_know_are_the_same_too():
    """A private key and an unknown one come back empty, in tag order, at the SERIES level of Patient Root."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.PatientID = "P1"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = ""
    ds.Modality = ""
    ds.SeriesNumber = ""
    ds.add_new(0x00091010, "LO", "")
    ds.NumberOfSeriesRelatedInstances = ""
    query = parse_identifier(ds, PATIENT_ROOT)
    row = {"PatientID": "P1", "StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4", "Modality": "CT",
           "SeriesNumber": 3, "NumberOfSeriesRelatedInstances": 12}
    elements = answer_elements(query, row, ae_title="ARCHIVAGE")
    assert [tag for tag, _, _ in elements] == sorted(tag for tag, _, _ in elements)
    for implicit in (True, False):
        assert encode_elements(elements, implicit, True) == encode_flat(answer(query, row, ae_title="ARCHIVAGE"),
                                                                       implicit, True)


def test_a_sequence_key_leaves_the_answer_to_pydicom():
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.ProcedureCodeSequence = []
    query = parse_identifier(ds, STUDY_ROOT)
    assert answer_elements(query, {"StudyInstanceUID": "1.2.3"}, ae_title="ARCHIVAGE") is None
