"""The fast DIMSE encoder writes exactly what pydicom's writer writes, or hands over to it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import encode as pydicom_encode

from archive_core.net.encoding import encode, encode_flat

ascii_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\\"), max_size=20)
french_text = st.text(alphabet="abcdeéèêàçôùÉÀ ^'-", max_size=20)
# A person name has at most three component groups (``=``): pydicom warns on a fourth, which a
# modality never sends (Hypothesis found "===").
person_name = ascii_text.filter(lambda name: name.count("=") <= 2)


def _answer(patient_name: str, patient_id: str, count: int, modalities: list[str], charset: str | None) -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = "STUDY"
    ds.RetrieveAETitle = "ARCHIVAGE"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.StudyDate = "20240115"
    ds.StudyTime = ""
    ds.ModalitiesInStudy = modalities
    ds.NumberOfStudyRelatedInstances = count
    return ds


@pytest.mark.parametrize("implicit", [True, False])
@given(name=person_name, pid=ascii_text, count=st.integers(0, 99999), mods=st.lists(st.sampled_from(["CT", "MR", "SR"]), max_size=3))
def test_ascii_answers_encode_like_pydicom(implicit, name, pid, count, mods):
    ds = _answer(name, pid, count, mods, None)
    assert encode_flat(ds, implicit, True) == pydicom_encode(ds, implicit, True)


@pytest.mark.parametrize("charset", ["ISO_IR 192", "ISO_IR 100"])
@given(name=french_text)
def test_accented_answers_encode_like_pydicom(charset, name):
    ds = _answer(name, "P1", 3, ["CT"], charset)
    assert encode_flat(ds, False, True) == pydicom_encode(ds, False, True)


def test_command_sets_encode_like_pydicom():
    cmd = Dataset()
    cmd.CommandGroupLength = 80
    cmd.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    cmd.CommandField = 0x8020
    cmd.MessageIDBeingRespondedTo = 7
    cmd.CommandDataSetType = 0x0001
    cmd.Status = 0xFF00
    assert encode_flat(cmd, True, True) == pydicom_encode(cmd, True, True)


def test_what_is_not_flat_goes_to_pydicom():
    ds = _answer("Dupont^Jean", "P1", 1, ["CT"], None)
    ds.ReferencedStudySequence = Sequence([Dataset()])
    ds.SpecificCharacterSet = "ISO 2022 IR 87"
    with pytest.raises(Exception):
        encode_flat(ds, False, True)  # a sequence and a multi-byte character set: not flat
    assert encode(ds, False, True) == pydicom_encode(ds, False, True)
