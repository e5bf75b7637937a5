"""Modality Worklist C-FIND (PS3.4 Annex K): a modality's query parsed, matched against the worklist
items (:mod:`archive_core.worklist`) and answered with the keys it asked for.

Matching (PS3.4 K.6.1.2.2 and C.2.2.2) uses the functions C-FIND uses on the index
(:mod:`archive_core.index.matching`): the same person-name rule (case and accents ignored,
components, wildcards), single values, wildcards, date and time ranges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from archive_core.errors import InvalidQuery
from archive_core.index.matching import is_universal, key_condition, values_of
from archive_core.values import normalize_tm
from archive_core.worklist import OPEN, WorklistItem

SPS = "ScheduledProcedureStepSequence"
# Keys a modality may match on (PS3.4 Table K.6-1), with their VR and column. Others given a value
# are not matched on: the answers then carry status 0xFF01 (PS3.4 C.4.1.1.4, K.4.1.1.4).
TOP_KEYS = {
    "PatientName": ("PN", WorklistItem.patient_name_search),
    "PatientID": ("LO", WorklistItem.patient_id),
    "AccessionNumber": ("SH", WorklistItem.accession_number),
    "RequestedProcedureID": ("SH", WorklistItem.requested_procedure_id),
    "StudyInstanceUID": ("UI", WorklistItem.study_uid),
    "PatientBirthDate": ("DA", WorklistItem.patient_birth_date),
    "PatientSex": ("CS", WorklistItem.patient_sex),
}
SPS_KEYS = {
    "ScheduledStationAETitle": ("AE", WorklistItem.station_ae_title),
    "Modality": ("CS", WorklistItem.modality),
    "ScheduledProcedureStepStartDate": ("DA", WorklistItem.start_date),
    "ScheduledProcedureStepStartTime": ("TM", WorklistItem.start_time),
    "ScheduledProcedureStepID": ("SH", WorklistItem.step_id),
    "ScheduledProcedureStepStatus": ("CS", WorklistItem.status),
}
_NOT_KEYS = {0x00080005}  # Specific Character Set


@dataclass
class WorklistQuery:
    conditions: list[Any]
    top_requested: list[str]  # keywords (or hex tags) of the top-level return keys, in order
    sps_requested: list[str] | None  # keys of the sequence item, None when the sequence was not asked
    unmatched: list[str]
    # What was matched on, by keyword (for the audit trail; the application log gets counts only).
    keys: dict[str, str]
    asked_status: bool


def _keyword(elem) -> str:
    return elem.keyword or f"{int(elem.tag):08X}"


def _value(elem) -> Any:
    value = elem.value
    if elem.VR == "PN" and value is not None:
        return str(value)
    return value


def parse_query(identifier: Dataset, dialect: str) -> WorklistQuery:
    """The matching conditions and the return keys of a worklist query identifier."""
    conditions: list[Any] = []
    unmatched: list[str] = []
    keys: dict[str, str] = {}
    top: list[str] = []
    sps: list[str] | None = None
    asked_status = False

    def match(keyword: str, value, table: dict) -> None:
        nonlocal asked_status
        vr, column = table[keyword]
        if is_universal(value, vr):
            return
        if vr == "TM":
            vals = values_of(value)
            if len(vals) != 1:
                raise InvalidQuery("several values are only allowed for UIDs")
            cond = _time_condition(column, vals[0])
        else:
            cond = key_condition(column, column, value, vr, dialect)
        if cond is not None:
            conditions.append(cond)
            keys[keyword] = "\\".join(values_of(value))
            asked_status = asked_status or keyword == "ScheduledProcedureStepStatus"

    for elem in identifier:
        if int(elem.tag) in _NOT_KEYS or elem.tag.is_private or elem.tag.element == 0:
            continue
        keyword = _keyword(elem)
        if keyword == SPS:
            if elem.VR != "SQ":
                raise InvalidQuery("Scheduled Procedure Step Sequence must be a sequence")
            items = list(elem.value or [])
            if len(items) > 1:
                raise InvalidQuery("Scheduled Procedure Step Sequence takes one item at most")
            sps = []
            for sub in (items[0] if items else []):
                if int(sub.tag) in _NOT_KEYS or sub.tag.is_private:
                    continue
                sub_kw = _keyword(sub)
                sps.append(sub_kw)
                if sub_kw in SPS_KEYS:
                    match(sub_kw, _value(sub), SPS_KEYS)
                elif sub.VR != "SQ" and not is_universal(_value(sub), sub.VR):
                    unmatched.append(sub_kw)
            top.append(keyword)
            continue
        top.append(keyword)
        if keyword in TOP_KEYS:
            match(keyword, _value(elem), TOP_KEYS)
        elif keyword in SPS_KEYS:
            # Outside its sequence (some consoles put Modality at the top level): matched all the same.
            match(keyword, _value(elem), SPS_KEYS)
        elif elem.VR != "SQ" and not is_universal(_value(elem), elem.VR):
            unmatched.append(keyword)
    return WorklistQuery(conditions, top, sps, unmatched, keys, asked_status)


def _time_condition(column, value: str):
    low, dash, high = value.partition("-")
    low, high = low.strip(), high.strip()
    if not dash:
        high = low
    lo = normalize_tm(low) if low else None
    hi = normalize_tm(high, upper=True) if high else None
    if (low and lo is None) or (high and hi is None):
        raise InvalidQuery(f"not a time range: {value!r}")
    parts = [c for c in ((column >= lo) if lo else None, (column <= hi) if hi else None) if c is not None]
    return and_(*parts) if parts else None


def find(session: Session, query: WorklistQuery, *, limit: int) -> list[WorklistItem]:
    """The matching items, by start date and time (*limit* + 1 at most: the caller sees the overflow)."""
    stmt = select(WorklistItem).where(*query.conditions)
    if not query.asked_status:
        stmt = stmt.where(WorklistItem.status.in_(OPEN))
    stmt = stmt.order_by(WorklistItem.start_date, WorklistItem.start_time, WorklistItem.id).limit(limit + 1)
    return list(session.scalars(stmt))


def _top_values(item: WorklistItem, ae_title: str) -> dict[str, Any]:
    return {
        "PatientName": item.patient_name or "",
        "PatientID": item.patient_id,
        "IssuerOfPatientID": "",
        "PatientBirthDate": item.patient_birth_date or "",
        "PatientSex": item.patient_sex or "",
        "AccessionNumber": item.accession_number,
        "RequestedProcedureID": item.requested_procedure_id,
        "RequestedProcedureDescription": item.requested_procedure_description or "",
        "StudyInstanceUID": item.study_uid,
        "RetrieveAETitle": ae_title,
    }


def _sps_values(item: WorklistItem) -> dict[str, Any]:
    return {
        "ScheduledStationAETitle": item.station_ae_title or "",
        "Modality": item.modality,
        "ScheduledProcedureStepStartDate": item.start_date,
        "ScheduledProcedureStepStartTime": item.start_time[:6],
        "ScheduledProcedureStepID": item.step_id,
        "ScheduledProcedureStepDescription": item.step_description or "",
        "ScheduledProcedureStepStatus": item.status,
    }


def _put(ds: Dataset, keyword: str, values: dict[str, Any]) -> None:
    if keyword in values:
        setattr(ds, keyword, values[keyword])
        return
    try:
        tag = int(keyword, 16) if not keyword.isalpha() else None
    except ValueError:
        tag = None
    if tag is None:
        from pydicom.datadict import tag_for_keyword

        tag = tag_for_keyword(keyword)
    if tag is None:
        return
    from pydicom.datadict import dictionary_VR

    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return
    ds.add_new(tag, vr, Sequence() if vr == "SQ" else None)  # a key we do not hold: returned empty


def answer(query: WorklistQuery, item: WorklistItem, *, ae_title: str) -> Dataset:
    """One pending answer: the requested keys only, the sequence with its requested keys only."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    top = _top_values(item, ae_title)
    for keyword in query.top_requested:
        if keyword == SPS:
            step = Dataset()
            values = _sps_values(item)
            for sub in query.sps_requested or ():
                _put(step, sub, values)
            ds.ScheduledProcedureStepSequence = Sequence([step])
        else:
            _put(ds, keyword, top)
    return ds
