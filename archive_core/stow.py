"""STOW-RS (PS3.18 10.5) without the web: a ``multipart/related`` body spooled part by part to files,
each stored through C-STORE's ingest path, and the store response in the DICOM JSON model.

The HTTP side is ``backoffice/dicomweb``, through the facade; QIDO-RS and WADO-RS are
:mod:`archive_core.dicomweb`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.dataset import Dataset

from archive_core.errors import InvalidQuery


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
    from archive_core.index.identity import Identity, audit_refusal
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


__all__ = ["StowResult", "spool_multipart", "stow", "stow_boundary", "stow_response"]
