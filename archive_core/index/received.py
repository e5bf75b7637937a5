"""A received dataset read: decoded from its transfer syntax, sized, or read back from a Part 10 file.

A dataset received into a file (pynetdicom's chunked receive) stays on disk: it is read with its
large values left there. A dataset that ends inside an element header is refused.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from archive_core.errors import InvalidDataset
from archive_core.part10 import dataset_offset
from archive_core.storage.base import FileRange


# Values larger than this stay on disk when a dataset is parsed from a file (pixel data, mostly):
# indexing reads only the identifying attributes.
_DEFER_BYTES = 64 * 1024
# The file meta group of a Part 10 file is a few hundred bytes; this much is read to find its end.
_META_PROBE_BYTES = 64 * 1024


def dataset_in_file(path: Path) -> FileRange:
    """The dataset of the Part 10 file at *path* (pynetdicom's chunked receive) as a range of it."""
    with open(path, "rb") as f:
        head = f.read(_META_PROBE_BYTES)
        size = os.fstat(f.fileno()).st_size
    offset = dataset_offset(head)
    return FileRange(Path(path), offset, size - offset)


def dataset_size(data: bytes | FileRange) -> int:
    return data.size if isinstance(data, FileRange) else len(data)


def parse(data: bytes | FileRange, transfer_syntax_uid: str) -> Dataset:
    """Decode a dataset received in *transfer_syntax_uid* (values stay raw until read).

    A dataset still on disk (:class:`FileRange`) is read with its large values left there, so
    memory does not grow with the object's size.
    """
    from pydicom.filereader import read_dataset
    from pydicom.uid import UID

    ts = UID(transfer_syntax_uid)
    if isinstance(data, FileRange) and ts.is_deflated:
        data = data.read_bytes()  # inflating needs the whole stream; bounded by the maximum object size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if isinstance(data, FileRange):
                with open(data.path, "rb") as f:
                    f.seek(data.offset)
                    ds = read_dataset(f, ts.is_implicit_VR, ts.is_little_endian, defer_size=_DEFER_BYTES)
                end = data.offset + data.size  # element positions count from the start of the file
            else:
                if ts.is_deflated:
                    import zlib

                    data = zlib.decompress(data, -zlib.MAX_WBITS)
                ds = read_dataset(io.BytesIO(data), ts.is_implicit_VR, ts.is_little_endian)
                end = len(data)
    except Exception as exc:
        raise InvalidDataset(f"cannot parse dataset: {exc}") from exc
    _require_whole_elements(ds, end)
    return ds


def _require_whole_elements(ds: Dataset, size: int) -> None:
    """Refuse a dataset that ends inside an element header.

    pydicom stops reading silently at a partial header (fewer than 8 bytes left), which would
    acknowledge an object whose last element is gone. A last *value* cut short (pydicom's
    MR_truncated.dcm) still parses into whole elements and is kept as received.
    """
    if not ds._dict:
        return
    last = ds._dict[max(ds._dict)]  # elements are encoded in tag order
    # Only raw (not yet decoded) elements know where they were read; sequences are decoded at once.
    if hasattr(last, "value_tell") and last.length != 0xFFFFFFFF and last.value_tell + last.length < size:
        raise InvalidDataset(f"dataset ends inside an element header ({size - last.value_tell - last.length} bytes)")


def read_part10(path: Path) -> tuple[Dataset, bytes, str, str | None]:
    """(dataset, dataset bytes, transfer syntax, source AE) of a Part 10 file or a bare dataset."""
    data = path.read_bytes()
    offset = dataset_offset(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise InvalidDataset(f"cannot read {path.name}: {exc}") from exc
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not ts:
        ts = _guess_transfer_syntax(ds)
    source = str(meta.get("SourceApplicationEntityTitle", "")).strip() if meta is not None else ""
    return ds, data[offset:], ts, source or None


def _guess_transfer_syntax(ds: Dataset) -> str:
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if ds.is_implicit_VR or ds.is_implicit_VR is None:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if ds.is_little_endian in (True, None) else ExplicitVRBigEndian
