"""Pending file changes: what a correction or a tier move wrote, so that a crash leaves nothing to guess.

A correction writes each file's new version under a new key; a tier move copies each file into
the other tier. Until the database transaction that switches the index commits, the index points
at the old file; after it, at the new one. Before each new file is written, the pair (old
location, new location) is appended, fsynced, to an intent file under
``instance/pending-files/``. When the transaction ends, the hooks delete the side the index no
longer points at and remove the intent. When the process dies in between, :func:`resolve` does the
same from the intent and the committed index: it keeps whichever location a row points at and
deletes the other. ``archive fsck`` lists such files as pending (not as problems), and
``archive fsck --repair``, the next correction and the next tier move resolve them.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from archive_core.index.models import Instance

log = logging.getLogger(__name__)

Location = tuple[str, str]  # (tier, storage key)


def _dir(archive) -> Path:
    return archive.settings.instance_path / "pending-files"


@dataclass
class Intent:
    """One operation's pairs of (old, new) file locations, appended durably before each new file is written.

    The operation holds an exclusive lock on its intent file while it runs: :func:`resolve` skips
    a locked intent (its owner is alive); the lock goes with the process when it dies.
    """

    path: Path
    handle: object = None
    pairs: list[tuple[Location, Location]] = field(default_factory=list)

    @classmethod
    def begin(cls, archive, kind: str) -> "Intent":
        folder = _dir(archive)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{kind}-{uuid.uuid4().hex}.jsonl"
        handle = open(path, "a", encoding="utf-8")
        fcntl.flock(handle, fcntl.LOCK_EX)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return cls(path, handle)

    def add(self, old: Location, new: Location) -> None:
        """Record a pair before *new* is written (fsynced: a crash right after still knows about it)."""
        self.handle.write(json.dumps([list(old), list(new)]) + "\n")
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.pairs.append((old, new))

    def finish(self, archive, *, committed: bool) -> bool:
        """Delete the side the index no longer uses (old after a commit, new after a rollback); True when done.

        When a deletion fails the intent stays, for :func:`resolve` to finish later.
        """
        ok = True
        for old, new in self.pairs:
            if old == new:
                continue
            tier, key = old if committed else new
            try:
                archive.store_for(tier).delete(key)
            except OSError:
                log.exception("could not delete %s in the %s tier; it stays pending", key, tier)
                ok = False
        if ok:
            self.path.unlink(missing_ok=True)
        self.close()
        return ok

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()  # releases the lock
            self.handle = None


def _read(path: Path) -> list[tuple[Location, Location]]:
    pairs = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            old, new = json.loads(line)
            pairs.append(((str(old[0]), str(old[1])), (str(new[0]), str(new[1]))))
        except (ValueError, TypeError, IndexError):
            continue  # a line torn by the crash: its new file was never written
    return pairs


def pending(archive) -> list[tuple[Path, list[tuple[Location, Location]]]]:
    """Intents a crash left behind, with their pairs."""
    folder = _dir(archive)
    if not folder.is_dir():
        return []
    return [(path, _read(path)) for path in sorted(folder.glob("*.jsonl"))]


def pending_locations(archive) -> set[Location]:
    """Every location named by an interrupted operation (``archive fsck`` reports them as pending)."""
    return {loc for _path, pairs in pending(archive) for pair in pairs for loc in pair}


def resolve(archive, *, skip: set[Path] = frozenset()) -> list[str]:
    """Finish interrupted operations from the committed index: keep what a row points at, delete the other side.

    A location no row points at and whose partner no row points at either (the instance was
    purged since) is left alone for ``archive fsck`` to report. Returns what was deleted.
    """
    done: list[str] = []
    for path, pairs in pending(archive):
        if path in skip:
            continue
        try:
            handle = open(path, "r")
        except FileNotFoundError:
            continue  # its owner finished meanwhile
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue  # its owner is alive: not interrupted
        try:
            done.extend(_resolve_one(archive, path, _read(path)))
        finally:
            handle.close()
    if done:
        log.info("finished %d file changes an interrupted correction or tier move left", len(done))
    return done


def _resolve_one(archive, path: Path, pairs: list[tuple[Location, Location]]) -> list[str]:
    done: list[str] = []
    with archive.sessions() as s:
        used = {(tier, key) for tier, key in s.execute(
            select(Instance.tier, Instance.storage_key).where(
                Instance.storage_key.in_({loc[1] for pair in pairs for loc in pair})))}
    ok = True
    for old, new in pairs:
        if old == new:
            continue
        if new in used and old not in used:
            drop = old
        elif old in used and new not in used:
            drop = new
        else:
            continue
        try:
            archive.store_for(drop[0]).delete(drop[1])
            done.append(f"{drop[0]}:{drop[1]}")
        except OSError:
            log.exception("could not delete %s in the %s tier", drop[1], drop[0])
            ok = False
    if ok:
        path.unlink(missing_ok=True)
    return done
