"""DICOMweb (PS3.18) without the web: QIDO-RS parameters to a C-FIND :class:`Query`, answers in the
DICOM JSON model (PS3.18 F.2), and the stored instances a WADO-RS request names.

The matching is C-FIND's (:mod:`archive_core.index.query`): one implementation of PN, dates, ranges,
wildcards and UID lists. The web edge (``backoffice/dicomweb``) reaches this through the facade.
STOW-RS is :mod:`archive_core.stow`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable

from pydicom import config
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.valuerep import ALLOW_BACKSLASH, AMBIGUOUS_VR, BYTES_VR, FLOAT_VR, INT_VR

from archive_core.errors import InvalidQuery
from archive_core.index.keywords import ATTRIBUTES, COMPUTED
from archive_core.index.answers import answer_value
from archive_core.index.query import LEVELS, STUDY_ROOT, Query, parse_identifier

# QIDO resource -> query level.
LEVEL_OF = {"studies": "STUDY", "series": "SERIES", "instances": "IMAGE"}

# The attributes answered without includefield (PS3.18 Tables 10.6.3-3 to -5, those the index holds).
_STUDY_DEFAULT = ("StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability", "ModalitiesInStudy",
                  "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                  "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
_SERIES_DEFAULT = ("Modality", "SeriesDescription", "SeriesNumber", "SeriesInstanceUID",
                   "NumberOfSeriesRelatedInstances")
_INSTANCE_DEFAULT = ("SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "InstanceNumber", "Rows", "Columns",
                     "NumberOfFrames")
# Parameters that are not attributes.
_CONTROL = {"includefield", "limit", "offset", "fuzzymatching"}
MAX_LIMIT = 10_000
_PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)  # Float, Double Float, Pixel Data


@dataclass
class QidoRequest:
    query: Query
    limit: int | None
    offset: int
    ignored: list[str]  # match keys given a value the index does not match on (a Warning header says so)
    study_uid: str | None = None
    series_uid: str | None = None
    # How qido_answer lays out an answer (_answer_plan), worked out at the first answer.
    answer_plan: tuple | None = field(default=None, repr=False, compare=False)


def _tag_of(name: str) -> int:
    """A QIDO attribute name: a keyword (``PatientName``) or eight hex digits (``00100010``)."""
    name = name.strip()
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        tag = int(name, 16)
        if keyword_for_tag(tag):
            return tag
    else:
        tag = tag_for_keyword(name)
        if tag is not None:
            return tag
    raise InvalidQuery(f"unknown attribute {name!r}")


def _levels_down_to(level: str, *, relational: bool, scope: str) -> list[str]:
    """The levels whose attributes an answer at *level* carries: its own, and those above it
    that the URL does not already fix (PS3.18 10.6.3.3.1)."""
    depth = LEVELS.index(level)
    top = {"STUDY": 1, "SERIES": 2, "IMAGE": 3}[scope] if not relational else 1
    return [LEVELS[i] for i in range(max(top, 1), depth + 1)]


def _default_keys(level: str, levels: list[str]) -> list[str]:
    keys: list[str] = []
    if "STUDY" in levels:
        keys += _STUDY_DEFAULT
    if "SERIES" in levels:
        keys += _SERIES_DEFAULT
    if "IMAGE" in levels:
        keys += _INSTANCE_DEFAULT
    return keys


# The level of each attribute the index answers (patient attributes are the study's in _below).
_KEY_LEVELS = {a.keyword: a.level for a in ATTRIBUTES} | {c.keyword: c.level for c in COMPUTED}


def _below(keyword: str, level: str) -> bool:
    """Whether *keyword* is an attribute of a level below *level* (patient attributes are the study's)."""
    key_level = _KEY_LEVELS.get(keyword)
    if key_level in (None, "ANY", "PATIENT"):
        return False
    return LEVELS.index(key_level) > LEVELS.index(level)


def _all_keys(level: str) -> list[str]:
    depth = LEVELS.index(level)
    keys = [a.keyword for a in ATTRIBUTES if LEVELS.index(a.level) <= depth]
    keys += [c.keyword for c in COMPUTED if c.level == "ANY" or (c.level != "PATIENT"
                                                                 and LEVELS.index(c.level) <= depth)]
    return [k for k in keys if k != "RetrieveAETitle"]


# Keyword -> (tag, dictionary VR), or None for a name that is no keyword. Filled as keywords come: only
# the defaults, the index's attributes and includefield names already checked by _tag_of get here, so
# it holds at most the data dictionary.
_KEYWORD_TAGS: dict[str, tuple[BaseTag, str] | None] = {}
_LEVEL_TAG = BaseTag(0x00080052)  # Query/Retrieve Level


def _tag_and_vr(keyword: str) -> tuple[BaseTag, str] | None:
    try:
        return _KEYWORD_TAGS[keyword]
    except KeyError:
        tag = tag_for_keyword(keyword)
        entry = _KEYWORD_TAGS[keyword] = None if tag is None else (BaseTag(tag), dictionary_VR(tag))
        return entry


def _return_key(tag: BaseTag, vr: str) -> DataElement:
    """A return key of the identifier (no value). Its value is None whatever the VR (what pydicom's
    conversion makes of None), set as is; a sequence gets pydicom's empty Sequence."""
    return DataElement(tag, vr, None, validation_mode=config.IGNORE, already_converted=vr != "SQ")


def parse_qido(resource: str, params: Iterable[tuple[str, str]], *, study_uid: str | None = None,
               series_uid: str | None = None) -> QidoRequest:
    """Read a QIDO-RS query string (as (name, value) pairs, names repeated) into a C-FIND query.

    Raises :class:`InvalidQuery` (a 400) for an unknown attribute, a malformed value or range,
    a bad ``limit``/``offset``/``fuzzymatching``, or a match key below the level searched. An
    ``includefield`` below the level (OHIF's study list asks for Modality, a series attribute) is left
    out and named in :attr:`QidoRequest.ignored`, as PS3.18 lets an origin server do.
    """
    level = LEVEL_OF[resource]
    scope = "IMAGE" if series_uid else "SERIES" if study_uid else "STUDY"
    relational = scope == "STUDY"
    levels = _levels_down_to(level, relational=relational, scope=scope)
    include: list[str] = []
    below: list[str] = []
    matches: list[tuple[int, str]] = []
    limit: int | None = None
    offset = 0
    for name, value in params:
        key = name.strip()
        low = key.lower()
        if low == "includefield":
            for field_name in value.split(","):
                if field_name.strip().lower() == "all":
                    include += _all_keys(level)
                elif field_name.strip():
                    keyword = keyword_for_tag(_tag_of(field_name)) or field_name.strip()
                    (below if _below(keyword, level) else include).append(keyword)
        elif low in ("limit", "offset"):
            try:
                number = int(value)
            except ValueError:
                raise InvalidQuery(f"{low} must be a whole number, not {value!r}") from None
            if number < 0:
                raise InvalidQuery(f"{low} must not be negative")
            if low == "limit":
                limit = min(number, MAX_LIMIT)
            else:
                offset = number
        elif low == "fuzzymatching":
            if value.strip().lower() not in ("true", "false"):
                raise InvalidQuery("fuzzymatching must be true or false")
            # true is accepted too: person names already match case- and accent-insensitively.
        else:
            matches.append((_tag_of(key), value))
    # The identifier's elements in the order they go in (the order of the query's keys, hence of the
    # answers' attributes): the return keys, each once, then the match values over them, the UIDs of
    # the URL, the level. A dict handed to Dataset() as its elements, as pydicom allows.
    elements: dict[BaseTag, DataElement] = {}
    for keyword in _default_keys(level, levels) + include:
        entry = _tag_and_vr(keyword)
        if entry is not None and entry[0] not in elements:
            elements[entry[0]] = _return_key(*entry)
    if matches:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for tag, value in matches:
                vr = dictionary_VR(tag)
                if vr == "SQ":
                    raise InvalidQuery(f"{keyword_for_tag(tag)}: no matching on sequences")
                if vr == "UI":
                    value = "\\".join(v.strip() for v in value.replace("\\", ",").split(","))
                elem = DataElement(tag, vr, value, validation_mode=config.IGNORE)
                elements[elem.tag] = elem
    for tag, value in ((0x0020000D, study_uid), (0x0020000E, series_uid)):
        if value:
            elem = DataElement(tag, "UI", value, validation_mode=config.IGNORE)
            elements[elem.tag] = elem
    elements[_LEVEL_TAG] = DataElement(_LEVEL_TAG, "CS", level, validation_mode=config.IGNORE, already_converted=True)
    query = parse_identifier(Dataset(elements), STUDY_ROOT, relational=True)
    return QidoRequest(query=query, limit=limit, offset=offset, ignored=list(query.unmatched_keys) + below,
                       study_uid=study_uid, series_uid=series_uid)


def qido_answer(request: QidoRequest, row: dict[str, Any], base_url: str) -> dict[str, Any]:
    """One match in the DICOM JSON model: every requested attribute, empty ones as ``{"vr": ..}``,
    and the Retrieve URL (0008,1190) of the entity on this server.

    The dict is the one pydicom's ``Dataset.to_json_dict()`` makes of these attributes (same keys in
    the same order, same values), built without a Dataset: see :func:`_json_element`.
    """
    plan = request.answer_plan
    if plan is None:
        plan = request.answer_plan = _answer_plan(request.query)
    answer: dict[str, Any] = {}
    for json_key, tag, vr, keyword, kind in plan:
        value = answer_value(keyword, row, ae_title="") if keyword else None
        if kind == _PYDICOM:
            answer[json_key] = _pydicom_json(tag, vr, value if value not in (None, "") else None)
        elif value in (None, ""):
            answer[json_key] = {"vr": vr}
        else:
            answer[json_key] = _json_element(tag, vr, kind, value)
    url = f"{base_url}/studies/{row.get('StudyInstanceUID') or request.study_uid}"
    if request.query.depth >= 2:
        url += f"/series/{row.get('SeriesInstanceUID') or request.series_uid}"
    if request.query.depth >= 3:
        url += f"/instances/{row.get('SOPInstanceUID')}"
    # Requested too (includefield=00081190), the URL takes that attribute's place, as in a Dataset.
    answer["00081190"] = _json_element(0x00081190, "UR", _TEXT, url)
    return answer


# How an answer's value becomes its DICOM JSON "Value" (PS3.18 F.2), as pydicom converts it for its VR
# (DataElement with validation_mode=IGNORE, then to_json_dict): a str is split at backslashes (not
# in LT, ST, UT), a list of one value is that value, a list of none is empty; IS and the binary
# integer VRs are ints, DS, FL and FD floats; a UI is stripped; a PN is {"Alphabetic", "Ideographic",
# "Phonetic"} from its "=" groups, empty trailing groups dropped. Anything else (binary and AT values,
# bytes, values that are neither str nor numbers nor lists of them, pydicom's value errors in a
# person name) goes through pydicom itself.
_TEXT, _INT, _FLOAT, _IS, _DS, _UI, _PN, _PYDICOM = range(8)
_BINARY_VRS = frozenset((BYTES_VR | AMBIGUOUS_VR) - {"US or SS"})
_INT_VRS = frozenset((INT_VR - {"AT"}) | {"US or SS"})
_NO_SPLIT = frozenset(ALLOW_BACKSLASH)
_EMPTY = object()  # no Value: {"vr": ..} alone
_PYDICOM_ONLY = object()  # a value _json_element leaves to pydicom


def _value_kind(vr: str) -> int:
    if vr in _BINARY_VRS or vr in ("AT", "SQ"):
        return _PYDICOM
    if vr == "IS":
        return _IS
    if vr == "DS":
        return _PYDICOM if config.use_DS_decimal else _DS
    if vr in ("DA", "DT", "TM") and config.datetime_conversion:
        return _PYDICOM
    if vr == "UI":
        return _UI
    if vr == "PN":
        return _PN
    if vr in _INT_VRS:
        return _INT
    if vr in FLOAT_VR:
        return _FLOAT
    return _TEXT


def _answer_plan(query: Query) -> tuple[tuple[str, int, str, str, int], ...]:
    """(JSON key, tag, VR, keyword, value kind) of each attribute an answer gives, in the query's order:
    not the sequences (the index answers none) nor the Retrieve AE Title."""
    return tuple((f"{key.tag:08X}", int(key.tag), key.vr, key.keyword, _value_kind(key.vr))
                 for key in query.keys if key.vr != "SQ" and key.keyword != "RetrieveAETitle")


def _pydicom_json(tag: int, vr: str, value: Any) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DataElement(tag, vr, value, validation_mode=config.IGNORE).to_json_dict(None, 1024)


def _json_element(tag: int, vr: str, kind: int, value: Any) -> dict[str, Any]:
    """The DICOM JSON of a value that is neither None nor ""."""
    value_type = type(value)
    if value_type is str:
        if "\\" in value and vr not in _NO_SPLIT:
            json_value = _json_values(kind, value.split("\\"))
        else:
            json_value = _json_value(kind, value)
    elif value_type is list:
        if len(value) > 1:
            json_value = _json_values(kind, value)
        elif value:
            json_value = _json_value(kind, value[0])
        else:
            json_value = _EMPTY
    elif value_type is int or value_type is float or value_type is bool:
        json_value = _json_value(kind, value)
    else:
        json_value = _PYDICOM_ONLY
    if json_value is _EMPTY:
        return {"vr": vr}
    if json_value is _PYDICOM_ONLY:
        return _pydicom_json(tag, vr, value)
    return {"vr": vr, "Value": json_value}


def _json_value(kind: int, value: Any) -> Any:
    """The Value of one value: a list of one, _EMPTY, or _PYDICOM_ONLY."""
    if value is None:
        return _EMPTY
    value_type = type(value)
    if value_type is str:
        if kind == _TEXT:
            return [value] if value else _EMPTY
        if kind == _UI:
            value = value.strip()
            return [value] if value else _EMPTY
        if kind == _PN:
            name = _person_name(value)
            return _EMPTY if name is None else [name]
        if not value:
            return _EMPTY
        if kind == _IS:
            return [_integer_string(value)]
        return [int(value)] if kind == _INT else [float(value)]
    if value_type is int or value_type is float or value_type is bool:
        if kind == _TEXT:
            return [value]
        if kind == _INT or kind == _IS:
            return [int(value)]
        if kind == _FLOAT or kind == _DS:
            return [float(value)]
    return _PYDICOM_ONLY


def _json_values(kind: int, values: list) -> Any:
    """The Value of two values or more (None ones stay None): a list, or _PYDICOM_ONLY."""
    json_values = []
    for value in values:
        value_type = type(value)
        if value is None:
            if kind == _PN:
                return _PYDICOM_ONLY
            json_values.append(None)
        elif value_type is str:
            if kind == _TEXT:
                json_values.append(value)
            elif kind == _UI:
                json_values.append(value.strip())
            elif kind == _PN:
                name = _person_name(value)
                if name is None:
                    return _PYDICOM_ONLY
                json_values.append(name)
            elif kind == _IS:
                json_values.append(_integer_string(value))
            elif kind == _INT:
                json_values.append(int(value))
            else:
                json_values.append(float(value))
        elif value_type is int or value_type is float or value_type is bool:
            if kind == _TEXT:
                json_values.append(value)
            elif kind == _INT or kind == _IS:
                json_values.append(int(value))
            elif kind == _FLOAT or kind == _DS:
                json_values.append(float(value))
            else:
                return _PYDICOM_ONLY
        else:
            return _PYDICOM_ONLY
    return json_values


def _person_name(value: str) -> dict[str, str] | None:
    """A PN value's component groups, or None for a name without any (``""``, ``"=="``)."""
    groups = value.split("=")
    while groups and not groups[-1]:
        groups.pop()
    if not groups:
        return None
    name = {"Alphabetic": groups[0]}
    if len(groups) > 1:
        name["Ideographic"] = groups[1]
    if len(groups) > 2:
        name["Phonetic"] = groups[2]
    return name


def _integer_string(text: str) -> int:
    """An IS value as pydicom's IS and JSON conversion read it: an int, else a float's int part (a float
    past 2**53 rounded first); a blank, unparsable or infinite value raises as there."""
    if not text.strip():
        return int(text)
    try:
        number = int(text)
    except ValueError:
        number = int(float(text))
    real = float(text)
    return number if number == real else int(real)


def retrieve_query(study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None) -> Query:
    """The retrieve query of a WADO-RS URL (the unique keys down to the level named)."""
    conditions = {"StudyInstanceUID": study_uid}
    level = "STUDY"
    if series_uid:
        conditions["SeriesInstanceUID"] = series_uid
        level = "SERIES"
    if sop_instance_uid:
        conditions["SOPInstanceUID"] = sop_instance_uid
        level = "IMAGE"
    for value in conditions.values():
        if not value or not set(value) <= set("0123456789.") or len(value) > 64:
            raise InvalidQuery(f"not a UID: {value[:80]!r}")
    return Query(root=STUDY_ROOT, level=level, conditions=conditions)


def metadata(fileobj, stored, base_url: str) -> dict[str, Any]:
    """The DICOM JSON of a stored instance without its bulk data: binary values over 1 KiB, and pixel
    data of any size, are a BulkDataURI on this server."""
    from pydicom import dcmread

    url = f"{base_url}/studies/{stored.study_uid}/series/{stored.series_uid}/instances/{stored.sop_instance_uid}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(fileobj, defer_size=1024)

        def bulk(elem) -> str:
            return f"{url}/bulkdata/{int(elem.tag):08X}"

        pixels = {tag: ds[tag].VR for tag in _PIXEL_TAGS if tag in ds}
        for tag in pixels:  # pixel data is bulk data whatever its size
            del ds[tag]
        answer = ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=bulk)
        for tag, vr in pixels.items():
            answer[f"{tag:08X}"] = {"vr": vr, "BulkDataURI": f"{url}/bulkdata/{tag:08X}"}
        return answer


def bulk_value(fileobj, tag: str) -> bytes:
    """The raw value of the top-level element *tag* (eight hex digits) of a stored instance."""
    from pydicom import dcmread

    if len(tag) != 8 or not all(c in "0123456789abcdefABCDEF" for c in tag):
        raise InvalidQuery(f"not a tag: {tag[:16]!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(fileobj, defer_size=1024)
        value = ds[int(tag, 16)].value
    if not isinstance(value, (bytes, bytearray)):
        raise KeyError(tag)
    return bytes(value)


def parse_frame_list(text: str) -> list[int]:
    """``1,3,5`` -> [1, 3, 5] (frame numbers start at 1); InvalidQuery otherwise."""
    try:
        numbers = [int(n) for n in text.split(",")]
    except ValueError:
        raise InvalidQuery(f"not a frame list: {text[:40]!r}") from None
    if not numbers or any(n < 1 for n in numbers) or len(numbers) > 10_000:
        raise InvalidQuery("frame numbers start at 1")
    return numbers


def frames(fileobj, numbers: list[int], *, syntaxes: frozenset[str]) -> tuple[list[bytes], str]:
    """The pixel data of frames *numbers* of a stored image, and the transfer syntax they are in.

    Uncompressed objects give their native frame bytes (little endian). Compressed ones give their
    encoded frames when their syntax is among *syntaxes* (``*``: any), else frames decoded to native
    bytes (explicit VR little endian). KeyError when the object has no pixel data; IndexError for a
    frame it does not have.
    """
    from pydicom import dcmread
    from pydicom.encaps import generate_frames
    from pydicom.pixels import pixel_array

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(fileobj)
        if "PixelData" not in ds:
            raise KeyError("PixelData")
        ts = ds.file_meta.TransferSyntaxUID
        keep_encoding = "*" in syntaxes or str(ts) in syntaxes
        count = int(ds.get("NumberOfFrames") or 1)
        if any(n > count for n in numbers):
            raise IndexError(f"the object has {count} frame(s)")
        if not ts.is_compressed:
            if not ts.is_little_endian:
                keep_encoding = False  # big endian: decoded below to little endian
            else:
                size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8
                data = ds.PixelData
                return [bytes(data[(n - 1) * size : n * size]) for n in numbers], str(ts)
        if keep_encoding and ts.is_compressed:
            encoded = list(generate_frames(ds.PixelData, number_of_frames=count))
            return [encoded[n - 1] for n in numbers], str(ts)
        decoded = []
        for n in numbers:
            array = pixel_array(ds, index=n - 1, raw=True)
            decoded.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
        return decoded, "1.2.840.10008.1.2.1"


__all__ = ["LEVEL_OF", "QidoRequest", "bulk_value", "frames", "metadata", "parse_frame_list", "parse_qido",
           "qido_answer", "retrieve_query"]
