"""DICOM Part 10 files: building our file meta header and splitting a file into meta and dataset."""

from __future__ import annotations

import struct

from archive_core.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

PREAMBLE = b"\x00" * 128 + b"DICM"


def file_header(*, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae: str | None) -> bytes:
    """Preamble, prefix and file meta information group for an object stored as received.

    Encoded here rather than by pydicom's writer (a third of a millisecond per object, on the
    acknowledgement's path): the same bytes, which tests/unit/test_part10.py checks against it.
    """
    elements = [
        _element(0x0001, b"OB", b"\x00\x01"),
        _element(0x0002, b"UI", _uid(sop_class_uid)),
        _element(0x0003, b"UI", _uid(sop_instance_uid)),
        _element(0x0010, b"UI", _uid(transfer_syntax_uid)),
        _element(0x0012, b"UI", _uid(IMPLEMENTATION_CLASS_UID)),
        _element(0x0013, b"SH", _text(IMPLEMENTATION_VERSION_NAME)),
    ]
    if source_ae:
        elements.append(_element(0x0016, b"AE", _text(source_ae)))
    body = b"".join(elements)
    return PREAMBLE + _element(0x0000, b"UL", struct.pack("<I", len(body))) + body


def _uid(value: str) -> bytes:
    data = str(value).encode("ascii")
    return data + b"\x00" if len(data) % 2 else data


def _text(value: str) -> bytes:
    # AE and SH are ASCII in practice; another byte from a peer must not fail the store.
    data = str(value).encode("latin-1", "replace")
    return data + b" " if len(data) % 2 else data


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    # Group 0002 is always explicit VR little endian.
    if vr == b"OB":
        return struct.pack("<HH2s2xI", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def dataset_offset(data: bytes) -> int:
    """Where the dataset starts in *data*: after preamble and meta group, or 0 for a bare dataset."""
    if len(data) < 132 or data[128:132] != b"DICM":
        return 0
    pos = 132
    # Walk the group 0002 elements (always explicit VR little endian) without trusting the group length.
    while pos + 8 <= len(data):
        group, _elem = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"):
            (length,) = struct.unpack_from("<I", data, pos + 8)
            pos += 12 + length
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            pos += 8 + length
    return pos
