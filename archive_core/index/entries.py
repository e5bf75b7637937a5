"""Journal entries: a received object written durably into the journal, and read back from it.

An entry is a Part 10 file (the file meta holds the UIDs the object was accepted under and the
calling AE title); its name keeps the order of arrival and whether it is an import of outside
priors. :class:`Job` is one entry waiting to be indexed.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from archive_core.index.identity import Identity
from archive_core.index.keywords import extract
from archive_core.index.received import dataset_size, read_part10
from archive_core.part10 import file_header
from archive_core.storage.base import BlobStore, FileRange

EXTERNAL_SUFFIX = ".external.dcm"  # journal entries of objects imported as outside priors


@dataclass
class Job:
    """One journal entry waiting to be indexed."""

    seq: int
    path: Path
    identity: Identity
    ds: Dataset | None
    checksum: str
    size_bytes: int
    transfer_syntax_uid: str
    source_ae: str | None
    external: bool | None  # None: decided by the sending peer's registration
    replaced_key: str | None = None  # set by indexing: the overwritten object lived elsewhere
    held: bool = False  # its series and study are in the ingestor's held maps until indexed
    # The index columns of each level, extracted where the object was received (a worker process
    # sends them instead of the dataset); None: extracted from ds.
    rows: dict[str, dict] | None = None

    def row(self, level: str) -> dict:
        return self.rows[level] if self.rows is not None else extract(self.ds, level)

    def dataset(self) -> Dataset:
        """The parsed dataset (read again from the journal entry when only its rows travelled)."""
        return self.ds if self.ds is not None else read_part10(self.path)[0]


def _starts_with(data: bytes | FileRange, header: bytes) -> bool:
    """*data* is a file the store may adopt, and what precedes its dataset is exactly *header*."""
    if not isinstance(data, FileRange) or not data.owned or data.offset != len(header):
        return False
    with open(data.path, "rb") as f:
        return f.read(len(header)) == header


def write_entry(
    store: BlobStore,
    dataset: bytes | FileRange,
    *,
    identity: Identity,
    transfer_syntax_uid: str,
    source_ae: str | None,
    external: bool | None,
    seq: int,
) -> tuple[Path, int]:
    """Write a claimed object durably into *store*'s journal: (the entry's path, its size in bytes)."""
    header = file_header(
        sop_class_uid=identity.sop_class_uid,
        sop_instance_uid=identity.sop_instance_uid,
        transfer_syntax_uid=transfer_syntax_uid,
        source_ae=source_ae,
    )
    # "external" (an import of outside priors) is known only here: the entry's name keeps it for a replay.
    suffix = EXTERNAL_SUFFIX if external else ".dcm"
    name = f"{time.time_ns():020d}-{seq:09d}-{identity.sop_instance_uid}{suffix}"
    if _starts_with(dataset, header):
        # Received straight into the journal's folder behind this very header: renamed, not copied.
        path = store.adopt_incoming(name, dataset.path)
    else:
        path = store.write_incoming(name, [header, dataset])
    return path, len(header) + dataset_size(dataset)


def job_from_file(path: Path, *, seq: int, external: bool | None = None) -> Job:
    ds, dataset_bytes, ts, source_ae = read_part10(path)
    # The file meta plays the request's part: a journal entry's meta holds the UIDs the C-STORE
    # was accepted under, also when the dataset itself lacks them.
    meta = getattr(ds, "file_meta", None)
    identity = Identity.of(
        ds,
        sop_class_uid=meta.get("MediaStorageSOPClassUID") if meta is not None else None,
        sop_instance_uid=meta.get("MediaStorageSOPInstanceUID") if meta is not None else None,
        dataset_must_agree=False,
    )
    return Job(
        seq=seq,
        path=path,
        identity=identity,
        ds=ds,
        checksum=hashlib.sha256(dataset_bytes).hexdigest(),
        size_bytes=path.stat().st_size,
        transfer_syntax_uid=ts,
        source_ae=source_ae,
        external=external,
    )
