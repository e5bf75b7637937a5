"""The one table mapping DICOM attributes to index columns, per query/retrieve level."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attribute:
    keyword: str
    level: str  # PATIENT, STUDY, SERIES or IMAGE
    column: str
    vr: str
    # The normalized column matching compares with, when it is not *column* (filled by extract()).
    match_column: str | None = None
    # PN: the columns of the folded ideographic and phonetic component groups (filled by extract()).
    group_columns: tuple[str, str] | None = None


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("PatientID", "PATIENT", "patient_id", "LO"),
    Attribute("IssuerOfPatientID", "PATIENT", "issuer_of_patient_id", "LO"),
    Attribute("PatientName", "PATIENT", "patient_name", "PN", "patient_name_search",
              ("patient_name_ideographic", "patient_name_phonetic")),
    Attribute("PatientBirthDate", "PATIENT", "patient_birth_date", "DA"),
    Attribute("PatientSex", "PATIENT", "patient_sex", "CS"),
    Attribute("StudyInstanceUID", "STUDY", "study_uid", "UI"),
    Attribute("StudyDate", "STUDY", "study_date", "DA"),
    Attribute("StudyTime", "STUDY", "study_time", "TM", "study_time_norm"),
    Attribute("AccessionNumber", "STUDY", "accession_number", "SH"),
    Attribute("StudyID", "STUDY", "study_id", "SH"),
    Attribute("StudyDescription", "STUDY", "study_description", "LO"),
    Attribute("ReferringPhysicianName", "STUDY", "referring_physician_name", "PN", "referring_physician_name_search",
              ("referring_physician_name_ideographic", "referring_physician_name_phonetic")),
    Attribute("SeriesInstanceUID", "SERIES", "series_uid", "UI"),
    Attribute("Modality", "SERIES", "modality", "CS"),
    Attribute("SeriesNumber", "SERIES", "series_number", "IS"),
    Attribute("SeriesDescription", "SERIES", "series_description", "LO"),
    Attribute("BodyPartExamined", "SERIES", "body_part_examined", "CS"),
    Attribute("SOPInstanceUID", "IMAGE", "sop_instance_uid", "UI"),
    Attribute("SOPClassUID", "IMAGE", "sop_class_uid", "UI"),
    Attribute("InstanceNumber", "IMAGE", "instance_number", "IS"),
    Attribute("Rows", "IMAGE", "image_rows", "US"),
    Attribute("Columns", "IMAGE", "image_columns", "US"),
    Attribute("NumberOfFrames", "IMAGE", "number_of_frames", "IS"),
)

BY_KEYWORD: dict[str, Attribute] = {a.keyword: a for a in ATTRIBUTES}


@dataclass(frozen=True)
class Computed:
    """A key answered from the index's counters or constants, not from one column."""

    keyword: str
    level: str  # the lowest level it may be asked at; "ANY" for every level
    vr: str


COMPUTED: tuple[Computed, ...] = (
    Computed("NumberOfPatientRelatedStudies", "PATIENT", "IS"),
    Computed("NumberOfPatientRelatedSeries", "PATIENT", "IS"),
    Computed("NumberOfPatientRelatedInstances", "PATIENT", "IS"),
    Computed("ModalitiesInStudy", "STUDY", "CS"),
    Computed("SOPClassesInStudy", "STUDY", "UI"),
    Computed("NumberOfStudyRelatedSeries", "STUDY", "IS"),
    Computed("NumberOfStudyRelatedInstances", "STUDY", "IS"),
    Computed("NumberOfSeriesRelatedInstances", "SERIES", "IS"),
    Computed("RetrieveAETitle", "ANY", "AE"),
    Computed("InstanceAvailability", "ANY", "CS"),
)

COMPUTED_BY_KEYWORD: dict[str, Computed] = {c.keyword: c for c in COMPUTED}

BY_LEVEL: dict[str, tuple[Attribute, ...]] = {
    level: tuple(a for a in ATTRIBUTES if a.level == level) for level in ("PATIENT", "STUDY", "SERIES", "IMAGE")
}

# Column widths of the index (the VR's maximum, in characters); longer values are cut, never refused.
_MAX_CHARS = {"LO": 64, "SH": 16, "CS": 16, "DA": 8, "TM": 16, "UI": 64, "PN": 324}


def _as_index_value(attr: Attribute, value: Any) -> Any:
    if value is None or value == "":
        return None
    if attr.vr == "DA":
        from archive_core.values import normalize_da

        # ACR-NEMA 1997.04.24 is indexed as 19970424; a value that is no date is not indexed.
        return normalize_da(value)
    if attr.vr in ("IS", "US"):
        try:
            return int(value)
        except (TypeError, ValueError, OverflowError):
            return None
    if attr.vr == "CS" and not isinstance(value, str):
        # Multi-valued CS (e.g. BodyPartExamined rarely, Modality never): keep the first.
        value = next(iter(value), "")
    text = str(value).strip().strip("\x00")
    return text[: _MAX_CHARS.get(attr.vr, 64)] or None


_TAGS = {a.keyword: tag_for_keyword(a.keyword) for a in ATTRIBUTES}


def extract(ds: Dataset, level: str) -> dict[str, Any]:
    """The index columns of *level* read from *ds*, decoded with its Specific Character Set.

    A value that cannot be decoded is indexed as empty and logged (by keyword and SOP Instance
    UID, never by value): an archive stores what it is sent.
    """
    row: dict[str, Any] = {}
    # One warnings scope for the whole row: entering one per attribute cost a tenth of the extraction.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for attr in BY_LEVEL[level]:
            try:
                # By tag: the same element as ds.get(keyword), without the keyword lookup.
                element = ds.get(_TAGS[attr.keyword])
                row[attr.column] = _as_index_value(attr, element.value if element is not None else None)
            except Exception as exc:  # pydicom raises many kinds on odd data
                # The exception's text may quote the value (a PatientName, a PatientID): its kind only.
                log.warning("cannot index %s of %s: %s", attr.keyword, ds.get("SOPInstanceUID", "?"),
                            exc.__class__.__name__)
                row[attr.column] = None
            if attr.match_column:
                row[attr.match_column] = _match_value(attr, row[attr.column])
            if attr.group_columns:
                from archive_core.index.matching import fold_name_group, name_groups

                _alpha, ideographic, phonetic = name_groups(row[attr.column])
                row[attr.group_columns[0]] = fold_name_group(ideographic)
                row[attr.group_columns[1]] = fold_name_group(phonetic)
    return row


def _match_value(attr: Attribute, value: Any) -> Any:
    from archive_core.index.matching import fold_person_name
    from archive_core.values import normalize_tm

    if value is None:
        return None
    if attr.vr == "PN":
        return fold_person_name(value)
    if attr.vr == "TM":
        return normalize_tm(value)
    return value


def patient_key(ds: Dataset) -> tuple[str, str]:
    """(Patient ID, Issuer of Patient ID) of *ds* exactly as the index files it ('' when absent or unreadable)."""
    key = []
    for keyword in ("PatientID", "IssuerOfPatientID"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                key.append(_as_index_value(BY_KEYWORD[keyword], ds.get(keyword)) or "")
        except Exception:  # undecodable: indexed as empty by extract() too
            key.append("")
    return key[0], key[1]
