"""The blob store interface every storage backend implements."""

from __future__ import annotations

import abc
import hashlib
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
    # header: the store may take it (rename) instead of copying it (FilesystemStore.adopt_incoming).
    owned: bool = False

    def sha256(self) -> str:
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


class BlobStore(abc.ABC):
    """Durable blobs under keys the archive derives from validated UIDs.

    New objects first land in a local *incoming* journal (a durable write the acknowledgement
    waits for), then :meth:`commit` moves them under their key once the index knows them.
    """

    @abc.abstractmethod
    def write_incoming(self, name: str, chunks: list[Chunk]) -> Path:
        """Write *chunks* (bytes, or ranges of files on disk) durably as journal entry *name*; return its path."""

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

    @abc.abstractmethod
    def commit(self, incoming: Path, key: str) -> None:
        """Move a journal entry under *key* (replacing what is there), durably."""

    @abc.abstractmethod
    def open(self, key: str) -> BinaryIO: ...

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def delete(self, key: str) -> None: ...

    @abc.abstractmethod
    def keys(self) -> Iterator[str]:
        """Every committed key."""

    @abc.abstractmethod
    def check_space(self) -> None:
        """Raise :class:`~archive_core.errors.StorageFull` below the free-space floor."""

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()
