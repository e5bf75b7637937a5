"""The local ingest journal: where a received object is made durable before it is acknowledged.

Every store keeps its journal on the node's own disk (fsynced temporary file, rename, directory
fsync), whatever holds the objects: the acknowledgement costs a local fsync, not a round trip to an
object store. The indexer then moves each entry into the store (``BlobStore.stage``/``commit``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from pathlib import Path

from archive_core.errors import StorageFull
from archive_core.storage.base import Chunk, FileRange


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_range(source: FileRange, fd: int) -> None:
    """Append *source* to *fd* in the kernel (copy_file_range), in 1 MiB reads where it cannot."""
    with open(source.path, "rb") as src:
        offset, remaining = source.offset, source.size
        try:
            while remaining:
                copied = os.copy_file_range(src.fileno(), fd, remaining, offset)
                if copied == 0:
                    raise EOFError(f"{source.path.name} ended {remaining} bytes early")
                offset += copied
                remaining -= copied
            return
        except OSError as exc:
            # Another filesystem on an old kernel, or one that does not support it.
            if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
        src.seek(offset)
        while remaining:
            block = src.read(min(1 << 20, remaining))
            if not block:
                raise EOFError(f"{source.path.name} ended {remaining} bytes early")
            view = memoryview(block)
            while view:
                view = view[os.write(fd, view):]
            remaining -= len(block)


class LocalJournal:
    """The journal half of a store: ``root/incoming`` (entries), ``root/journal.lock``, ``root/quarantine``."""

    def _init_journal(self, root: str | os.PathLike, *, min_free_bytes: int = 0) -> None:
        self.root = Path(root)
        self.incoming_dir = self.root / "incoming"
        self.incoming_dir.mkdir(parents=True, exist_ok=True)
        self.min_free_bytes = min_free_bytes
        self._space_checked_at = 0.0
        self._space_ok = True
        self._space_lock = threading.Lock()
        self._journal_lock = None

    def write_incoming(self, name: str, chunks: list[Chunk]) -> Path:
        final = self.incoming_dir / name
        tmp = self.incoming_dir / (name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for chunk in chunks:
                if isinstance(chunk, FileRange):
                    _copy_range(chunk, fd)
                    continue
                view = memoryview(chunk)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            os.fsync(fd)
        except BaseException as exc:
            # Nothing half-written: the journal never holds a partial entry under its final name.
            os.close(fd)
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(str(exc)) from exc
            raise
        os.close(fd)
        os.rename(tmp, final)
        fsync_dir(self.incoming_dir)
        return final

    def adopt_incoming(self, name: str, received: Path) -> Path:
        """Make *received*, a complete ``.tmp`` file of the journal's folder, journal entry *name*.

        The same durability as :meth:`write_incoming` without copying: fsync, rename, directory fsync.
        """
        if received.parent != self.incoming_dir or not received.name.endswith(".tmp"):
            raise ValueError(f"{received} is not a temporary file of the journal")
        fd = os.open(received, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        final = self.incoming_dir / name
        os.rename(received, final)
        fsync_dir(self.incoming_dir)
        return final

    def incoming(self) -> list[Path]:
        # Listing only: other processes (fsck, the scheduler) look while the server writes.
        return sorted(self.incoming_dir.glob("*.dcm"))

    def claim_journal(self) -> bool:
        # An flock: the kernel releases it when the owner dies, even by kill -9.
        if self._journal_lock is not None:
            return True
        handle = open(self.root / "journal.lock", "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._journal_lock = handle
        return True

    def release_journal(self) -> None:
        if self._journal_lock is not None:
            self._journal_lock.close()
            self._journal_lock = None

    def discard_unfinished(self) -> int:
        """Remove leftover ``.tmp`` files: never acknowledged, a crash interrupted their write.

        Only the process that owns the journal may call this, before it receives anything:
        elsewhere a ``.tmp`` is a write in progress.
        """
        count = 0
        for tmp in self.incoming_dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
            count += 1
        return count

    @property
    def quarantine_dir(self) -> Path:
        """Where objects that must not be served are kept for a human (created on first use)."""
        path = self.root / "quarantine"
        path.mkdir(exist_ok=True)
        return path

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def check_space(self) -> None:
        if not self.min_free_bytes:
            return
        # statvfs is cheap but not free; once per 200 ms is plenty at any ingest rate.
        now = time.monotonic()
        with self._space_lock:
            if now - self._space_checked_at < 0.2 and self._space_ok:
                return
            self._space_ok = self.free_bytes() >= self.min_free_bytes
            self._space_checked_at = now
        if not self._space_ok:
            raise StorageFull(f"free space below the floor of {self.min_free_bytes} bytes")
