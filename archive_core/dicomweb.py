"""DICOMweb (PS3.18) without the web: QIDO-RS parameters to a C-FIND :class:`Query`, answers in the
DICOM JSON model (PS3.18 F.2), and the stored instances a WADO-RS request names.

The matching is C-FIND's (:mod:`archive_core.index.query`): one implementation of PN, dates, ranges,
wildcards and UID lists. The web edge (``backoffice/dicomweb``) reaches this through the facade.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable

from pydicom import config
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from archive_core.errors import InvalidQuery
from archive_core.index.keywords import ATTRIBUTES, COMPUTED
from archive_core.index.query import LEVELS, STUDY_ROOT, Query, answer_value, parse_identifier

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


def _below(keyword: str, level: str) -> bool:
    """Whether *keyword* is an attribute of a level below *level* (patient attributes are the study's)."""
    levels = {a.keyword: a.level for a in ATTRIBUTES} | {c.keyword: c.level for c in COMPUTED}
    key_level = levels.get(keyword)
    if key_level in (None, "ANY", "PATIENT"):
        return False
    return LEVELS.index(key_level) > LEVELS.index(level)


def _all_keys(level: str) -> list[str]:
    depth = LEVELS.index(level)
    keys = [a.keyword for a in ATTRIBUTES if LEVELS.index(a.level) <= depth]
    keys += [c.keyword for c in COMPUTED if c.level == "ANY" or (c.level != "PATIENT"
                                                                 and LEVELS.index(c.level) <= depth)]
    return [k for k in keys if k != "RetrieveAETitle"]


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
            for field in value.split(","):
                if field.strip().lower() == "all":
                    include += _all_keys(level)
                elif field.strip():
                    keyword = keyword_for_tag(_tag_of(field)) or field.strip()
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
    identifier = Dataset()
    keywords = _default_keys(level, levels) + include
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
    return QidoRequest(query=query, limit=limit, offset=offset, ignored=list(query.unmatched_keys) + below,
                       study_uid=study_uid, series_uid=series_uid)


def qido_answer(request: QidoRequest, row: dict[str, Any], base_url: str) -> dict[str, Any]:
    """One match in the DICOM JSON model: every requested attribute, empty ones as ``{"vr": ..}``,
    and the Retrieve URL (0008,1190) of the entity on this server."""
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


# -- STOW-RS --------------------------------------------------------------------------------------


def stow_boundary(content_type: str) -> bytes:
    """The boundary of a STOW-RS request's ``multipart/related`` body; InvalidQuery for another media
    type, parts of another type than application/dicom, or no boundary."""
    kind, *params = [p.strip() for p in content_type.split(";")]
    if kind.lower() != "multipart/related":
        raise InvalidQuery(f"STOW-RS takes multipart/related, not {kind or 'nothing'}")
    options = {k.strip().lower(): v.strip().strip('"') for k, _, v in (p.partition("=") for p in params)}
    if options.get("type", "application/dicom").lower() != "application/dicom":
        raise InvalidQuery(f"STOW-RS takes parts of type application/dicom, not {options['type']}")
    boundary = options.get("boundary")
    if not boundary:
        raise InvalidQuery("multipart/related without a boundary")
    return boundary.encode("latin-1")


_SPOOL_BLOCK = 1024 * 1024
_MAX_PART_HEADERS = 64 * 1024


def spool_multipart(stream: BinaryIO, content_type: str, directory: Path) -> list[Path]:
    """Write each part of a ``multipart/related`` body read from *stream* to its own file in
    *directory*, in order, reading at most about a megabyte at a time: memory does not grow with the
    body. Raises :class:`InvalidQuery` (see :func:`stow_boundary`; also a part without its blank line
    after the headers, a part of another type, a body without its closing delimiter or without any
    part): the caller removes *directory* and nothing is stored."""
    delimiter = b"--" + stow_boundary(content_type)
    separator = b"\r\n" + delimiter
    buf = bytearray()
    parts: list[Path] = []

    def more(error: str) -> None:
        block = stream.read(_SPOOL_BLOCK)
        if not block:
            raise InvalidQuery(error)
        buf.extend(block)

    unclosed = "malformed multipart body: no opening or closing boundary"
    while (found := buf.find(delimiter)) < 0:  # the preamble, ignored
        del buf[: max(0, len(buf) - len(delimiter))]
        more(unclosed)
    del buf[: found + len(delimiter)]
    while True:
        while len(buf) < 2:
            more(unclosed)
        if buf.startswith(b"--"):  # the closing delimiter; the epilogue is ignored
            break
        while (line_end := buf.find(b"\r\n")) < 0:  # transport padding up to the end of the boundary line
            if len(buf) > 1024:
                raise InvalidQuery("malformed multipart body: a boundary line without its end")
            more(unclosed)
        del buf[: line_end + 2]
        while not buf.startswith(b"\r\n") and (head_end := buf.find(b"\r\n\r\n")) < 0:
            if len(buf) > _MAX_PART_HEADERS:
                raise InvalidQuery("malformed multipart body: a part without headers")
            more("malformed multipart body: a part without headers")
        if buf.startswith(b"\r\n"):  # a part without headers: application/dicom
            head = b""
            del buf[:2]
        else:
            head = bytes(buf[:head_end])
            del buf[: head_end + 4]
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip():
                headers[name.strip().lower()] = value.strip()
        part_type = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
        if part_type != "application/dicom":
            raise InvalidQuery(f"a part of type {part_type}: only application/dicom is stored")
        path = directory / f"part-{len(parts):06d}.dcm"
        with open(path, "wb") as out:
            while (found := buf.find(separator)) < 0:
                keep = len(separator) - 1  # the start of a separator split between two reads
                if len(buf) > keep:
                    out.write(buf[: len(buf) - keep])
                    del buf[: len(buf) - keep]
                more(unclosed)
            out.write(buf[:found])
            del buf[: found + len(separator)]
        parts.append(path)
    if not parts:
        raise InvalidQuery("no part in the body")
    return parts


@dataclass
class StowResult:
    stored: list[tuple[str, str]]  # (SOP Class UID, SOP Instance UID)
    failed: list[tuple[str, str, int, str]]  # (class, instance, failure reason, why)
    study_uids: set[str]


def stow(archive, parts: list[Path], *, study_uid: str | None, actor: str) -> StowResult:
    """Store the Part 10 files *parts* (from :func:`spool_multipart`) through the ingest path of
    C-STORE (journal, identity rules, duplicate policy, refusals audited), and wait until they are
    indexed (visible to C-FIND when this returns). Pixel data is never read into memory."""
    from pydicom import dcmread

    from archive_core.errors import ArchiveError, InvalidDataset, InvalidIdentifier
    from archive_core.index.ingest import Identity, audit_refusal
    from archive_core.net.status import STORE_STATUS, status_for
    from archive_core.part10 import dataset_offset
    from archive_core.storage.base import FileRange

    result = StowResult([], [], set())
    last = 0
    for path in parts:
        ds = None
        meta: Any = {}
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(_MAX_PART_HEADERS)
            if len(head) >= 132 and head[128:132] == b"DICM":
                offset = dataset_offset(head)
            elif head[:2] == b"\x02\x00":  # the file meta without the preamble (dicomweb-client sends that)
                offset = dataset_offset(bytes(132 - 4) + b"DICM" + head) - 132
            else:
                raise InvalidDataset("not a DICOM file (no file meta information)")
            if not 0 < offset < size:
                raise InvalidDataset("no dataset after the file meta information")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = dcmread(path, force=True, stop_before_pixels=True)
                    meta = ds.file_meta
                    ts = str(meta.get("TransferSyntaxUID", "") or "")
            except Exception as exc:
                raise InvalidDataset(f"unreadable: {exc.__class__.__name__}") from None
            if not ts:
                raise InvalidDataset("no Transfer Syntax UID in the file meta")
            identity = Identity.of(ds, sop_class_uid=meta.get("MediaStorageSOPClassUID"),
                                   sop_instance_uid=meta.get("MediaStorageSOPInstanceUID"))
            if study_uid and identity.study_uid != study_uid:
                raise InvalidIdentifier("the object belongs to another study than the one in the URL")
            outcome = archive.ingestor.receive(FileRange(path, offset, size - offset), ds, transfer_syntax_uid=ts,
                                               identity=identity, source_ae=None)
        except ArchiveError as exc:
            audit_refusal(archive.sessions, exc, ds, actor=actor, actor_kind="user", via="STOW-RS")
            result.failed.append((str(meta.get("MediaStorageSOPClassUID", "") or ""),
                                  str(meta.get("MediaStorageSOPInstanceUID", "") or ""),
                                  status_for(exc, STORE_STATUS), str(exc)))
            continue
        last = max(last, outcome.seq)
        result.stored.append((identity.sop_class_uid, identity.sop_instance_uid))
        result.study_uids.add(identity.study_uid)
    archive.ingestor.wait_indexed(last)
    return result


def stow_response(result: StowResult, base_url: str, study_uid: str | None) -> dict[str, Any]:
    """The PS3.18 store response: Retrieve URL, ReferencedSOPSequence, FailedSOPSequence."""
    from pydicom.sequence import Sequence

    ds = Dataset()
    studies = {study_uid} if study_uid else result.study_uids
    if len(studies) == 1:
        ds.RetrieveURL = f"{base_url}/studies/{next(iter(studies))}"
    if result.failed:
        items = []
        for sop_class, sop_uid, reason, _why in result.failed:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class or None
            item.ReferencedSOPInstanceUID = sop_uid or None
            item.FailureReason = reason
            items.append(item)
        ds.FailedSOPSequence = Sequence(items)
    if result.stored:
        items = []
        for sop_class, sop_uid in result.stored:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_uid
            items.append(item)
        ds.ReferencedSOPSequence = Sequence(items)
    return ds.to_json_dict()


__all__ = ["LEVEL_OF", "QidoRequest", "StowResult", "bulk_value", "frames", "metadata", "parse_frame_list",
           "parse_qido", "qido_answer", "retrieve_query", "spool_multipart", "stow", "stow_boundary",
           "stow_response"]
