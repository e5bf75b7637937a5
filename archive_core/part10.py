"""DICOM Part 10 files: building our file meta header and splitting a file into meta and dataset."""

from __future__ import annotations

import io
import struct

from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info

from archive_core.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

PREAMBLE = b"\x00" * 128 + b"DICM"


def file_header(*, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae: str | None) -> bytes:
    """Preamble, prefix and file meta information group for an object stored as received."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax_uid
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if source_ae:
        meta.SourceApplicationEntityTitle = source_ae
    buf = io.BytesIO()
    buf.write(PREAMBLE)
    write_file_meta_info(buf, meta, enforce_standard=True)  # type: ignore[arg-type]
    return buf.getvalue()


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
