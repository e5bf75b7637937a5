"""C-FIND answers from index rows: the requested keys and nothing else (PS3.4 C.4.1.1.3.2), as a
Dataset or, for the fast encoder, as (tag, VR, value) triples; QIDO-RS takes its values from here too.

Parsing identifiers and the SQL that finds the rows are :mod:`archive_core.index.query`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from archive_core.index.query import Query


def answer_value(keyword: str, row: dict[str, Any], ae_title: str) -> Any:
    """The value an answer gives *keyword* from an index row (computed keys included); C-FIND and QIDO-RS."""
    if keyword == "RetrieveAETitle":
        return ae_title
    if keyword == "InstanceAvailability":
        return "ONLINE"
    value = row.get(keyword)
    if keyword == "ModalitiesInStudy":
        return [m for m in (value or "").split("\\") if m] or None
    return value


def answer_elements(query: Query, row: dict[str, Any], *, ae_title: str) -> list[tuple[int, str, Any]] | None:
    """What :func:`answer` holds for *row*, as (tag, VR, value) triples in ascending tag order, without
    building a Dataset (the C-FIND answer loop encodes them directly); None when the answer has a
    sequence, which only :func:`answer` builds."""
    plan = query.answer_plan
    if plan is None:
        plan = query.answer_plan = _AnswerPlan.of(query)
    if plan.has_sequence:
        return None
    elements = []
    non_ascii = False
    for tag, vr, keyword in plan.keys:
        value = answer_value(keyword, row, ae_title) if keyword else None
        if isinstance(value, str) and not value.isascii():
            non_ascii = True
        elements.append((tag, vr, value if value not in (None, "") else None))
    elements.insert(plan.level_at, (0x00080052, "CS", query.level))
    if non_ascii:
        elements.insert(plan.charset_at, (0x00080005, "CS", "ISO_IR 192"))
    return elements


@dataclass(frozen=True)
class _AnswerPlan:
    """The requested keys of a query in tag order, and where (0008,0005) and (0008,0052) go among them."""

    keys: tuple[tuple[int, str, str], ...]
    charset_at: int
    level_at: int
    has_sequence: bool

    @classmethod
    def of(cls, query: Query) -> "_AnswerPlan":
        keys = tuple(sorted((int(k.tag), k.vr, k.keyword) for k in query.keys))
        return cls(
            keys=keys,
            charset_at=sum(1 for tag, _, _ in keys if tag < 0x00080005),
            level_at=sum(1 for tag, _, _ in keys if tag < 0x00080052),
            has_sequence=query.has_sequence_keys,
        )


def answer(query: Query, row: dict[str, Any], *, ae_title: str) -> Dataset:
    """The C-FIND response identifier for *row*: every requested key, no other besides (0008,0005/0052).

    Unknown values are zero length. Text that is not ASCII is sent in ISO_IR 192 (UTF-8).
    """
    ds = Dataset()
    non_ascii = False
    # Values come from the index, checked when they were indexed: no validation per answer. Without
    # a sequence key the answer is flat and the fast encoder (net/encoding.py) writes the plain
    # values as they are, so pydicom's conversion to its value types is skipped too.
    flat = not query.has_sequence_keys
    for key in query.keys:
        if key.vr == "SQ":
            ds.add_new(key.tag, "SQ", Sequence())
            continue
        value = answer_value(key.keyword, row, ae_title) if key.keyword else None
        if isinstance(value, str) and not value.isascii():
            non_ascii = True
        ds[key.tag] = DataElement(key.tag, key.vr, value if value not in (None, "") else None,
                                  validation_mode=config.IGNORE, already_converted=flat)
    if non_ascii:
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = query.level
    return ds
