"""QIDO-RS answers built as DICOM JSON directly, and parse_qido's cheaper identifier, against the
pydicom constructions they replace (kept here as oracles: the DICOM JSON text must not change).

Bad input tried: values the index never holds but a row could carry (backslashes, ``=`` and ``^`` in
names, non-ASCII, blanks, None, lists, ints, floats, bools, bytes, "1.5e3", "abc", "nan" for IS/DS),
every VR pydicom knows, unknown attributes, sequences as match keys, bad limits and ranges.
"""

from __future__ import annotations

import json
import warnings

import pytest
from hypothesis import given, strategies as st
from pydicom import config
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from archive_core import dicomweb
from archive_core.dicomweb import parse_qido, qido_answer
from archive_core.errors import InvalidQuery
from archive_core.index.answers import answer_value
from archive_core.index.keywords import ATTRIBUTES, COMPUTED
from archive_core.index.query import LEVELS, STUDY_ROOT, parse_identifier

BASE = "https://pacs.example.fr/dicom-web"


def old_qido_answer(request, row, base_url):
    """ORACLE: qido_answer as it was, a pydicom Dataset of DataElements turned into JSON by
    to_json_dict(). Kept verbatim: the new construction must give the same JSON text."""
    ds = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key in request.query.keys:
            if key.vr == "SQ" or key.keyword == "RetrieveAETitle":
                continue
            value = answer_value(key.keyword, row, ae_title="") if key.keyword else None
            ds[key.tag] = DataElement(key.tag, key.vr, value if value not in (None, "") else None,
                                      validation_mode=config.IGNORE)
        url = f"{base_url}/studies/{row.get('StudyInstanceUID') or request.study_uid}"
        if request.query.depth >= 2:
            url += f"/series/{row.get('SeriesInstanceUID') or request.series_uid}"
        if request.query.depth >= 3:
            url += f"/instances/{row.get('SOPInstanceUID')}"
        ds[0x00081190] = DataElement(0x00081190, "UR", url, validation_mode=config.IGNORE)
        return ds.to_json_dict()


def _old_below(keyword, level):
    levels = {a.keyword: a.level for a in ATTRIBUTES} | {c.keyword: c.level for c in COMPUTED}
    key_level = levels.get(keyword)
    if key_level in (None, "ANY", "PATIENT"):
        return False
    return LEVELS.index(key_level) > LEVELS.index(level)


def old_parse_qido(resource, params, *, study_uid=None, series_uid=None):
    """ORACLE: parse_qido as it was (an identifier Dataset built element by element, with validation
    off and warnings caught), kept verbatim but for the helpers it shares with the new one."""
    level = dicomweb.LEVEL_OF[resource]
    scope = "IMAGE" if series_uid else "SERIES" if study_uid else "STUDY"
    relational = scope == "STUDY"
    levels = dicomweb._levels_down_to(level, relational=relational, scope=scope)
    include, below, matches = [], [], []
    limit, offset = None, 0
    for name, value in params:
        key = name.strip()
        low = key.lower()
        if low == "includefield":
            for field in value.split(","):
                if field.strip().lower() == "all":
                    include += dicomweb._all_keys(level)
                elif field.strip():
                    keyword = keyword_for_tag(dicomweb._tag_of(field)) or field.strip()
                    (below if _old_below(keyword, level) else include).append(keyword)
        elif low in ("limit", "offset"):
            try:
                number = int(value)
            except ValueError:
                raise InvalidQuery(f"{low} must be a whole number, not {value!r}") from None
            if number < 0:
                raise InvalidQuery(f"{low} must not be negative")
            if low == "limit":
                limit = min(number, dicomweb.MAX_LIMIT)
            else:
                offset = number
        elif low == "fuzzymatching":
            if value.strip().lower() not in ("true", "false"):
                raise InvalidQuery("fuzzymatching must be true or false")
        else:
            matches.append((dicomweb._tag_of(key), value))
    identifier = Dataset()
    keywords = dicomweb._default_keys(level, levels) + include
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword in keywords:
            tag = tag_for_keyword(keyword)
            if tag is not None and tag not in identifier:
                identifier[tag] = DataElement(tag, dictionary_VR(tag), None, validation_mode=config.IGNORE)
        for tag, value in matches:
            vr = dictionary_VR(tag)
            if vr == "SQ":
                raise InvalidQuery(f"{keyword_for_tag(tag)}: no matching on sequences")
            if vr == "UI":
                value = "\\".join(v.strip() for v in value.replace("\\", ",").split(","))
            identifier[tag] = DataElement(tag, vr, value, validation_mode=config.IGNORE)
        for tag, value in ((0x0020000D, study_uid), (0x0020000E, series_uid)):
            if value:
                identifier[tag] = DataElement(tag, "UI", value, validation_mode=config.IGNORE)
        identifier.QueryRetrieveLevel = level
    query = parse_identifier(identifier, STUDY_ROOT, relational=True)
    return dicomweb.QidoRequest(query=query, limit=limit, offset=offset, ignored=list(query.unmatched_keys) + below,
                                study_uid=study_uid, series_uid=series_uid)


def _outcome(call):
    try:
        return "ok", call()
    except Exception as exc:  # noqa: BLE001 - the two constructions must fail alike
        return "error", exc


# One attribute of every VR (the Selector*Value family), and the index's own.
_EVERY_VR = [k for k in (f"Selector{vr}Value" for vr in (
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV", "OW",
    "PN", "SH", "SL", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV")) if tag_for_keyword(k)]
_EXTRA_KEYS = _EVERY_VR + ["PatientWeight", "PixelSpacing", "ImageType", "PatientAge", "SmallestImagePixelValue",
                           "PixelData", "ReferencedSOPSequence", "RetrieveURL", "RetrieveAETitle", "ImageComments"]
_INDEX_KEYS = dicomweb._all_keys("IMAGE")

_text = st.text(alphabet=st.sampled_from(list("AZaz09^=\\ .-*?éÉ山田é\x1b")), max_size=12)
_numeric_text = st.sampled_from(["1", "-3", " 12 ", "1.5", "1.0", "1.5e3", "1e400", "abc", "nan", "inf", "", " ",
                                 "+4", "1_000", "9007199254740993", "0x10", "1\\2", "3\\", "\\", "2.5\\-1"])
_scalar = st.one_of(st.none(), _text, _numeric_text, st.integers(-2**40, 2**40), st.booleans(),
                    st.floats(allow_nan=True, allow_infinity=False), st.just(b"\x01\x02"))
_value = st.one_of(_scalar, st.lists(_scalar, max_size=3))


def _joined(values):
    """Lists of 2-3 values, and the same as one backslash-separated string when they are strings."""
    return st.one_of(st.lists(values, min_size=1, max_size=3),
                     st.lists(values.filter(lambda v: isinstance(v, str)), min_size=2, max_size=3).map("\\".join))


_integers = st.integers(-2**40, 2**40)
_INTEGER_STRINGS = st.one_of(_integers.map(str), st.sampled_from([" 12 ", "+4", "-0", "1_000"]))


def _plausible(vr):
    """Values a row could give an attribute of *vr* that pydicom converts: most answers succeed."""
    if vr == "IS":
        one = st.one_of(_integers, _INTEGER_STRINGS, st.floats(-1e15, 1e15),
                        st.sampled_from(["1.0", "1.5e3", "1.5", "-2.7", "9007199254740993"]))
    elif vr == "DS":
        one = st.one_of(_integers, st.floats(allow_nan=False, allow_infinity=False),
                        st.floats(allow_nan=False, allow_infinity=False).map(repr),
                        st.sampled_from([" 2.5 ", "1.5e3", "-0", "1", "72.50"]))
    elif vr in ("US", "UL", "SS", "SL", "SV", "UV", "US or SS"):
        one = st.one_of(_integers, _INTEGER_STRINGS, st.floats(-1e15, 1e15))
    elif vr in ("FL", "FD"):
        one = st.one_of(_integers, st.floats(), st.floats(allow_nan=False).map(repr))
    elif vr == "UI":
        one = st.text(alphabet=" 0123456789.", min_size=1, max_size=20)
    elif vr == "AT":
        one = st.integers(0, 2**32 - 1)
    elif vr in ("OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW", "US or SS or OW"):
        return st.one_of(st.none(), st.binary(max_size=8))
    else:  # text VRs, PN among them: backslashes, "=", "^", non-ASCII, blanks
        one = _text.filter(bool)
    return st.one_of(st.none(), st.just(""), st.just([]), one, _joined(one))


@st.composite
def _request_and_row(draw):
    resource = draw(st.sampled_from(["studies", "series", "instances"]))
    study_uid = series_uid = None
    if resource != "studies" and draw(st.booleans()):
        study_uid = "1.2.3"
        if resource == "instances" and draw(st.booleans()):
            series_uid = "1.2.3.4"
    extra = (draw(st.lists(st.sampled_from(_EXTRA_KEYS), max_size=12))
             + draw(st.lists(st.sampled_from(_INDEX_KEYS), max_size=3)))
    params = [("includefield", ",".join(extra))] if extra else []
    request = parse_qido(resource, params, study_uid=study_uid, series_uid=series_uid)
    # A value for most keys the request answers, plausible for its VR (ModalitiesInStudy as the index
    # holds it: one string), and sometimes one odd value of any kind in one of them.
    row = {}
    for key in request.query.keys:
        if draw(st.integers(0, 9)) > 0:
            if key.keyword == "ModalitiesInStudy":
                row[key.keyword] = draw(st.one_of(st.none(), _text))
            else:
                row[key.keyword] = draw(_plausible(key.vr))
    if draw(st.booleans()):
        row[draw(st.sampled_from([k.keyword for k in request.query.keys]))] = draw(_value)
    return request, row


@given(_request_and_row())
def test_a_qido_answer_is_the_json_pydicom_made_of_the_same_row(case):
    """Every VR and odd values a row could hold: the JSON text is the oracle's, and a value pydicom
    could not convert fails here too (a 500 either way, never a different answer)."""
    request, row = case
    old_kind, old = _outcome(lambda: json.dumps(old_qido_answer(request, row, BASE)))
    new_kind, new = _outcome(lambda: json.dumps(qido_answer(request, row, BASE)))
    if old_kind == "error":  # (bytes in a text VR cannot be written in JSON either)
        assert new_kind == "error", (old, new)
    else:
        assert new_kind == "ok", new
        assert new == old
        # The plan kept on the request serves the next answers too.
        assert request.answer_plan is not None
        assert json.dumps(qido_answer(request, row, BASE)) == old


@pytest.mark.parametrize("vr, value, expected", [
    ("IS", " 12 ", [12]), ("IS", "1.5e3", [1500]), ("IS", "1.5", [1]), ("IS", "9007199254740993", [9007199254740992]),
    ("DS", "1", [1.0]), ("DS", 7, [7.0]), ("DS", "2.5\\-1", [2.5, -1.0]), ("US", "512", [512]),
    ("UI", " 1.2.3 ", ["1.2.3"]), ("UI", " ", None), ("CS", ["CT"], ["CT"]), ("CS", [], None), ("CS", [""], None),
    ("PN", "==", None), ("PN", "=Yamada", [{"Alphabetic": "", "Ideographic": "Yamada"}]),
    ("LT", "a\\b", ["a\\b"]), ("LO", "a\\b", ["a", "b"]), ("OB", b"\x01\x02", "InlineBinary"),
])
def test_each_vrs_conversion_is_pydicoms(vr, value, expected):
    """The conversions one by one, against pydicom's, and what they give (an empty one: no Value)."""
    got = dicomweb._json_element(0x00720060, vr, dicomweb._value_kind(vr), value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oracle = DataElement(0x00720060, vr, value, validation_mode=config.IGNORE).to_json_dict(None, 1024)
    assert json.dumps(got) == json.dumps(oracle)
    if expected == "InlineBinary":
        assert got == {"vr": vr, "InlineBinary": "AQI="}
    elif expected is None:
        assert got == {"vr": vr}
    else:
        assert got == {"vr": vr, "Value": expected}


@pytest.mark.parametrize("vr, value", [("IS", "abc"), ("IS", " "), ("IS", "nan"), ("IS", "1e400"), ("DS", "abc"),
                                       ("DS", " "), ("US", "x"), ("IS", "1\\"), ("UI", 5), ("PN", "A\\"),
                                       ("PN", ["A", None])])
def test_a_value_pydicom_cannot_convert_fails_alike(vr, value):
    """An unparsable IS/DS, a blank in a list of numbers, a UID that is no string, an empty name among
    names: the same exception as pydicom's, not a made-up value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception) as old:
            DataElement(0x00720060, vr, value, validation_mode=config.IGNORE).to_json_dict(None, 1024)
    with pytest.raises(type(old.value)):
        dicomweb._json_element(0x00720060, vr, dicomweb._value_kind(vr), value)


def test_a_study_answer_in_dicom_json():
    """A real answer: a person name with its three groups, a DS, empty keys, the modalities, the
    counters, the Retrieve URL last; the exact JSON text."""
    request = parse_qido("studies", [("PatientID", "P00042"), ("includefield", "PatientWeight,StudyDescription")])
    row = {"PatientID": "P00042", "PatientName": "Yamada^Tarou=山田^太郎=やまだ^たろう",
           "PatientBirthDate": "19700101", "PatientSex": "M", "StudyInstanceUID": "1.2.3.4", "StudyDate": "20240115",
           "StudyTime": "101010", "AccessionNumber": "", "StudyID": None, "StudyDescription": "CT THORAX",
           "ReferringPhysicianName": "MARTIN^Paul",
           "NumberOfStudyRelatedSeries": 2, "NumberOfStudyRelatedInstances": 300, "ModalitiesInStudy": "CT\\SR",
           "PatientWeight": "72.5"}
    answer = qido_answer(request, row, BASE)
    assert json.dumps(answer, ensure_ascii=False) == (
        '{"00080020": {"vr": "DA", "Value": ["20240115"]}, "00080030": {"vr": "TM", "Value": ["101010"]}, '
        '"00080050": {"vr": "SH"}, "00080056": {"vr": "CS", "Value": ["ONLINE"]}, '
        '"00080061": {"vr": "CS", "Value": ["CT", "SR"]}, '
        '"00080090": {"vr": "PN", "Value": [{"Alphabetic": "MARTIN^Paul"}]}, '
        '"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", '
        '"Phonetic": "やまだ^たろう"}]}, '
        '"00100020": {"vr": "LO", "Value": ["P00042"]}, "00100030": {"vr": "DA", "Value": ["19700101"]}, '
        '"00100040": {"vr": "CS", "Value": ["M"]}, "0020000D": {"vr": "UI", "Value": ["1.2.3.4"]}, '
        '"00200010": {"vr": "SH"}, "00201206": {"vr": "IS", "Value": [2]}, "00201208": {"vr": "IS", "Value": [300]}, '
        '"00101030": {"vr": "DS", "Value": [72.5]}, "00081030": {"vr": "LO", "Value": ["CT THORAX"]}, '
        '"00081190": {"vr": "UR", "Value": ["https://pacs.example.fr/dicom-web/studies/1.2.3.4"]}}')
    assert json.dumps(answer) == json.dumps(old_qido_answer(request, row, BASE))


def test_a_requested_retrieve_url_keeps_its_place():
    """includefield=00081190 (Retrieve URL) first: the URL is answered there, once, as a Dataset did."""
    request = parse_qido("series", [("includefield", "00081190")], study_uid="1.2.3")
    row = {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.9", "Modality": "CT"}
    answer = qido_answer(request, row, BASE)
    keys = list(answer)
    assert keys.count("00081190") == 1 and keys[-1] != "00081190"
    assert answer["00081190"] == {"vr": "UR", "Value": [f"{BASE}/studies/1.2.3/series/1.2.3.9"]}
    assert json.dumps(answer) == json.dumps(old_qido_answer(request, row, BASE))


_names = st.sampled_from(["StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "Modality", "SeriesNumber",
                          "ModalitiesInStudy", "SOPInstanceUID", "00100010", "0020000d", "NoSuchKeyword", "12345678",
                          "ReferencedSOPSequence", "StudyDescription", "PatientWeight", "includefield", "IncludeField",
                          "limit", "offset", "fuzzymatching", " PatientID ", "InstanceNumber", "SeriesInstanceUID"])
_param_values = st.one_of(
    st.sampled_from(["1.2.3", "1.2.3, 1.2.4", "1.2.3\\1.2.5", "DUPONT*", "Dup?nt^J*", "20240101-20240131", "-2024",
                     "20241301", "CT", "CT\\MR", "1", "1*", "abc", "-1", "10001", "true", "maybe", "all",
                     "Modality,00100010", "SeriesNumber,all", "NoSuch", "PatientWeight", "", "*", "É*"]),
    _text)


@given(resource=st.sampled_from(["studies", "series", "instances"]), scope=st.integers(0, 2),
       params=st.lists(st.tuples(_names, _param_values), max_size=5))
def test_parse_qido_reads_what_it_read_before(resource, scope, params):
    """Random query strings (unknown names, bad ranges, sequences as match keys, keys below the level,
    bad limits): the same request (query keys in the same order, conditions, ignored keys, limit,
    offset) or the same error as the identifier built element by element."""
    study_uid = "1.2.3" if scope >= 1 and resource != "studies" else None
    series_uid = "1.2.3.4" if scope == 2 and resource == "instances" else None
    old_kind, old = _outcome(lambda: old_parse_qido(resource, params, study_uid=study_uid, series_uid=series_uid))
    new_kind, new = _outcome(lambda: parse_qido(resource, params, study_uid=study_uid, series_uid=series_uid))
    assert new_kind == old_kind, (old, new)
    if old_kind == "error":
        assert (type(new), str(new)) == (type(old), str(old))
    else:
        assert new == old
        assert [(int(k.tag), k.keyword, k.vr) for k in new.query.keys] == [
            (int(k.tag), k.keyword, k.vr) for k in old.query.keys]
