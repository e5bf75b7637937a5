"""The filesystem blob store: fsynced temporary files, atomic renames, fsynced directories.

Layout (unchanged since the first release): ``root/objects/<key>``, the journal in ``root/incoming``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO, Iterator

from archive_core.errors import StorageFull
from archive_core.storage.base import BlobStat, BlobStore
from archive_core.storage.journal import WORKER_JOURNAL_PREFIX, LocalJournal, fsync_dir

__all__ = ["WORKER_JOURNAL_PREFIX", "FilesystemStore", "check_key"]

_KEY_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ._-/")
_CHUNK = 1 << 20


def check_key(key: str) -> str:
    # Keys come from validated UIDs; this is the last line of defence against a path from the wire.
    if not key or key.startswith("/") or ".." in key.split("/") or not set(key) <= _KEY_CHARS:
        raise ValueError(f"invalid storage key: {key!r}")
    return key


class FilesystemStore(LocalJournal, BlobStore):
    """Blobs as files under ``root/objects``; the journal is ``root/incoming`` (*journal*: the folder
    ``root/incoming/<journal>`` an SCP worker process writes to)."""

    local_files = True

    def __init__(self, root: str | os.PathLike, *, min_free_bytes: int = 0, journal: str = "") -> None:
        self._init_journal(root, min_free_bytes=min_free_bytes, journal=journal)
        self.objects = self.root / "objects"
        self._objects_dir = str(self.objects)
        self.objects.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[Path] = set()

    def _path(self, key: str) -> Path:
        return self.objects / check_key(key)

    def path_of(self, key: str) -> Path:
        """The file of *key*: for tests and tools that know they hold a filesystem store only.

        No archive code calls it (tests/unit/test_storage.py checks): readers go through :meth:`open`.
        """
        return self._path(key)

    # -- from the journal ----------------------------------------------------------------------

    def commit(self, incoming: Path, key: str) -> None:
        target = self._path(key)
        parent = target.parent
        if parent not in self._known_dirs:
            self._make_dirs(parent)
        os.replace(incoming, target)

    def sync_committed(self, keys: list[str], journals: set[Path] | None = None) -> None:
        """Make a batch of :meth:`commit` renames durable: one fsync per directory touched
        (*journals*: the journal folders the entries left, by default this store's)."""
        for d in {self._path(k).parent for k in keys}:
            fsync_dir(d)
        self.sync_journals(journals)

    def _make_dirs(self, d: Path) -> None:
        missing = []
        p = d
        while not p.exists():
            missing.append(p)
            p = p.parent
        for m in reversed(missing):
            m.mkdir(exist_ok=True)
            fsync_dir(m.parent)
        self._known_dirs.add(d)

    # -- objects -------------------------------------------------------------------------------

    def put(self, key: str, source: BinaryIO | bytes) -> None:
        """Write *source* under *key* durably (temporary file, fsync, rename, directory fsync)."""
        target = self._path(key)
        self._make_dirs(target.parent)
        tmp = target.with_name(target.name + ".tmp")
        try:
            with open(tmp, "wb") as dst:
                if isinstance(source, (bytes, bytearray, memoryview)):
                    dst.write(source)
                else:
                    while chunk := source.read(_CHUNK):
                        dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(str(exc)) from exc
            raise
        os.replace(tmp, target)
        fsync_dir(target.parent)

    def open(self, key: str) -> BinaryIO:
        # A string path, not a Path: a retrieval opens thousands of files and pathlib is most of the cost.
        return open(os.path.join(self._objects_dir, check_key(key)), "rb")

    def stat(self, key: str) -> BlobStat | None:
        try:
            st = os.stat(os.path.join(self._objects_dir, check_key(key)))
        except FileNotFoundError:
            return None
        return BlobStat(key, st.st_size) if S_ISREG(st.st_mode) else None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)

    def keys(self) -> Iterator[str]:
        for dirpath, _dirs, files in os.walk(self.objects):
            for f in files:
                yield str(Path(dirpath, f).relative_to(self.objects))

    def download(self, key: str, dest: Path) -> None:
        import shutil

        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(self._path(key), tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
