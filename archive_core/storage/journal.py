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

# The journal folder of SCP worker process N (DICOM_WORKERS > 1) is incoming/worker-N.
WORKER_JOURNAL_PREFIX = "worker-"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _GroupSync:
    """fsync of one directory shared by the writers that renamed into it meanwhile (group commit).

    A writer whose rename happened before a sync *started* is covered by that sync; writers that
    arrive while one runs wait for it to end and share the next one: with several associations
    writing at once, one directory fsync serves them all.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._requested = 0  # tickets handed out (one per rename to cover)
        self._synced = 0  # every ticket up to this one is durable
        self._running = False

    def sync(self) -> None:
        with self._cond:
            self._requested += 1
            ticket = self._requested
            while True:
                if self._synced >= ticket:
                    return
                if not self._running:
                    self._running, covered = True, self._requested
                    break
                self._cond.wait()
        ok = False
        try:
            fsync_dir(self.path)
            ok = True
        finally:
            with self._cond:
                self._running = False
                if ok:
                    self._synced = max(self._synced, covered)
                self._cond.notify_all()


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
    """The journal half of a store: ``root/incoming`` (entries), ``root/journal.lock``, ``root/quarantine``.

    *journal* names the folder under ``root/incoming`` an SCP worker process writes to
    (``worker-N``); the listing, the replay and the clean-up of the owner cover every folder.
    """

    def _init_journal(self, root: str | os.PathLike, *, min_free_bytes: int = 0, journal: str = "") -> None:
        self.root = Path(root)
        self.journal_root = self.root / "incoming"
        self.incoming_dir = self.journal_root / journal if journal else self.journal_root
        self.incoming_dir.mkdir(parents=True, exist_ok=True)
        self._journal_sync = _GroupSync(self.incoming_dir)
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
        self._journal_sync.sync()
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
        self._journal_sync.sync()
        return final

    def journals(self) -> list[Path]:
        """The journal folder and the SCP worker processes' folders under it."""
        return [self.journal_root, *sorted(p for p in self.journal_root.glob(WORKER_JOURNAL_PREFIX + "*") if p.is_dir())]

    def incoming(self, directory: Path | None = None) -> list[Path]:
        """Entries of every journal folder (or of *directory* only), oldest first (names start with the time)."""
        # Listing only: other processes (fsck, the scheduler) look while the server writes.
        folders = [directory] if directory is not None else self.journals()
        return sorted((p for d in folders for p in d.glob("*.dcm")), key=lambda p: p.name)

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

    def discard_unfinished(self, directory: Path | None = None) -> int:
        """Remove leftover ``.tmp`` files: never acknowledged, a crash interrupted their write.

        Only the process that owns the journal may call this, before it receives anything (or for
        the folder of a worker process that died, *directory*): elsewhere a ``.tmp`` is a write in progress.
        """
        count = 0
        folders = [directory] if directory is not None else self.journals()
        for tmp in (p for d in folders for p in d.glob("*.tmp")):
            tmp.unlink(missing_ok=True)
            count += 1
        return count

    def sync_journals(self, journals: set[Path] | None = None) -> None:
        """fsync the journal folders entries left (*journals*, by default this store's own)."""
        for d in journals or {self.incoming_dir}:
            fsync_dir(d)

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
