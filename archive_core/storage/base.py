"""The blob store interface every storage backend implements.

Objects are known by *key* only (``fan/study/series/instance.dcm``, built from validated UIDs): no
filesystem path leaves a store. Readers open a key (:meth:`BlobStore.open`, a seekable binary reader
read in chunks, never whole); writers put a key. New objects first land in a local *journal*
(:class:`~archive_core.storage.journal.LocalJournal`) whose durable write the acknowledgement waits
for; the indexer then moves them into the store (:meth:`BlobStore.stage`, :meth:`BlobStore.commit`).
"""

from __future__ import annotations

import abc
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Union

_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileRange:
    """*size* bytes of the file at *path* from *offset*: data that arrived on disk, never held in memory."""

    path: Path
    offset: int
    size: int
    # The file is a temporary file of the journal's folder that already starts with the entry's
    # header: the store may take it (rename) instead of copying it (LocalJournal.adopt_incoming).
    owned: bool = False
    # SHA-256 of the range, when whoever wrote it computed it on the way (a C-STORE received into the journal).
    digest: str | None = None

    def sha256(self) -> str:
        if self.digest is not None:
            return self.digest
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            remaining = self.size
            while remaining:
                block = f.read(min(_CHUNK, remaining))
                if not block:
                    raise EOFError(f"{self.path.name} ended {remaining} bytes early")
                digest.update(block)
                remaining -= len(block)
        return digest.hexdigest()

    def read_bytes(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


Chunk = Union[bytes, FileRange]


@dataclass(frozen=True)
class BlobStat:
    """What a store knows about one object without reading it."""

    key: str
    size: int


class BlobStore(abc.ABC):
    """Durable blobs under keys the archive derives from validated UIDs.

    The journal half (``write_incoming``, ``incoming``, ``claim_journal``...) is local to the node
    (:class:`~archive_core.storage.journal.LocalJournal`); the object half is the backend's.
    """

    #: The local folder of the journal (``incoming/``), its lock and ``quarantine/``; ``journal_root``
    #: is ``root/incoming``, ``incoming_dir`` the folder this process writes (``incoming/worker-N`` in a worker).
    root: Path
    journal_root: Path
    incoming_dir: Path
    quarantine_dir: Path

    # -- objects -------------------------------------------------------------------------------

    @abc.abstractmethod
    def put(self, key: str, source: BinaryIO | bytes) -> None:
        """Store *source* (bytes, or a binary reader read to its end in chunks) under *key*, durably:
        when this returns the store has confirmed the object (fsync, or the object store's checksum)."""

    @abc.abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A seekable binary reader of the object (``FileNotFoundError`` when there is none).

        The filesystem returns the file itself (a real file descriptor: the sender's fast path); an
        object store a reader that streams ranged GETs. Never read whole: objects reach gigabytes.
        """

    @abc.abstractmethod
    def stat(self, key: str) -> BlobStat | None:
        """Size of the object under *key*, None when there is none."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object (nothing when there is none)."""

    @abc.abstractmethod
    def keys(self) -> Iterator[str]:
        """Every stored key (the list operation)."""

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def put_bytes(self, key: str, data: bytes) -> None:
        self.put(key, data)

    def put_file(self, key: str, source: Path) -> None:
        with open(source, "rb") as f:
            self.put(key, f)

    def read_bytes(self, key: str) -> bytes:
        """The whole object in memory: for small objects only (a report, a rewrite), never a retrieve."""
        with self.open(key) as f:
            return f.read()

    def download(self, key: str, dest: Path) -> None:
        """Copy the object to the local file *dest* (temporary name, fsync, rename)."""
        tmp = dest.with_name(dest.name + ".part")
        with self.open(key) as src, open(tmp, "wb") as out:
            while block := src.read(_CHUNK):
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)

    def check_access(self) -> None:
        """Raise :class:`~archive_core.errors.StorageUnavailable`, saying why, when the store cannot be used."""

    def describe(self) -> str:
        """Where the objects are, for logs and error messages (never a secret)."""
        return str(self.root)

    # -- from the journal to the store ---------------------------------------------------------

    #: :meth:`stage` uploads (the indexer then checks identities before, not after, the upload).
    stages_uploads = False
    #: :meth:`open` gives a file of the local filesystem: cheap to open, read at any offset without
    #: a network round trip (the web process may read it from its sending loop).
    local_files = False

    def stage_many(self, entries: list[tuple[Path, str]]) -> None:
        """:meth:`stage` each (journal entry, key); all or :class:`StorageUnavailable`."""
        for incoming, key in entries:
            self.stage(incoming, key)

    def stage(self, incoming: Path, key: str) -> None:
        """Make journal entry *incoming* available under *key* before the index names it.

        The filesystem does nothing here (its :meth:`commit` is an atomic rename); an object store
        uploads and verifies. Raises :class:`~archive_core.errors.StorageUnavailable` when the store
        cannot take it: the entry stays in the journal and is tried again.
        """

    @abc.abstractmethod
    def commit(self, incoming: Path, key: str) -> None:
        """The index names *key*: the journal entry *incoming* leaves the journal (moved or dropped)."""

    def sync_committed(self, keys: list[str], journals: set[Path] | None = None) -> None:
        """Make a batch of :meth:`commit` durable (*journals*: the journal folders the entries left)."""

    # -- the local journal (LocalJournal) ------------------------------------------------------

    @abc.abstractmethod
    def write_incoming(self, name: str, chunks: list[Chunk]) -> Path:
        """Write *chunks* (bytes, or ranges of files on disk) durably as journal entry *name*; return its path."""

    @abc.abstractmethod
    def adopt_incoming(self, name: str, received: Path) -> Path:
        """Make *received*, a complete ``.tmp`` file of the journal's folder, journal entry *name* (no copy)."""

    @abc.abstractmethod
    def incoming(self, directory: Path | None = None) -> list[Path]:
        """Journal entries not yet committed (of every journal folder, or of *directory*), oldest first."""

    @abc.abstractmethod
    def claim_journal(self) -> bool:
        """Become the journal's one owner (the process that replays it); False when another holds it."""

    @abc.abstractmethod
    def release_journal(self) -> None: ...

    @abc.abstractmethod
    def discard_unfinished(self, directory: Path | None = None) -> int:
        """Remove journal writes a crash interrupted (never acknowledged); the journal's owner only."""

    def check_space(self) -> None:
        """Raise :class:`~archive_core.errors.StorageFull` below the free-space floor."""


def blob_checksum(store: BlobStore, key: str) -> str:
    """SHA-256 of the object's dataset (what follows its meta group), as the index records it; read in chunks."""
    with store.open(key) as f:
        return dataset_checksum(f)


def dataset_checksum(f: BinaryIO) -> str:
    """SHA-256 of the dataset of the Part 10 file open in *f* (from its start), read in chunks."""
    from archive_core.part10 import dataset_offset

    digest = hashlib.sha256()
    head = f.read(_CHUNK)
    offset = dataset_offset(head)
    if offset > len(head) - 8 and len(head) == _CHUNK:  # a meta group longer than the probe (never in practice)
        f.seek(0)
        head = f.read()
        offset = dataset_offset(head)
    digest.update(memoryview(head)[offset:])
    while block := f.read(_CHUNK):
        digest.update(block)
    return digest.hexdigest()
