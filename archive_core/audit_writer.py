"""Audit events written off the answer path, with group commit: the C-FIND events of the archive, and
the QIDO-RS searches of the web process (``ArchiveFacade.audit_soon``).

A C-FIND's audit event costs one committed transaction: on SQLite (``synchronous=FULL``) an fsync
of the WAL, several milliseconds, more than answering a single-match query. The handler therefore
queues the event and answers at once; one writer thread appends whatever is queued, from every
association, in one transaction (several queries that end while a commit is under way share the
next one). Before the archive answers an association's A-RELEASE it waits until that
association's events are committed (:meth:`AuditWriter.wait`): once the peer has seen its
association released, every query it made is in the audit trail, and a process killed after that
loses none. A process killed while the association is still open may lose the events of queries
not yet committed (at most the last commit's worth: the writer starts as soon as an event is queued).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)


class AuditWriter:
    """One background thread that writes queued events, all queued events (at most *max_batch*) per transaction.

    *write* takes a list of events and commits them (one transaction); it is called on the
    writer thread only, so calls never overlap. Events are numbered as they are queued:
    :meth:`add` returns the number, :meth:`wait` blocks until every event up to a number is
    written (or failed: a failure is logged by *write*'s caller here and never blocks a release).
    """

    def __init__(self, write: Callable[[list], None], *, max_batch: int = 50, name: str = "archive-audit") -> None:
        self._write = write
        self._max_batch = max_batch
        self._name = name
        self._cond = threading.Condition()
        self._queue: list = []
        self._queued = 0  # number of the last event queued
        self._done = 0  # number of the last event written (or given up)
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(self, event) -> int:
        """Queue *event*; its number (for :meth:`wait`). After :meth:`close`, written in this thread."""
        with self._cond:
            if not self._closed:
                self._queue.append(event)
                self._queued += 1
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                    self._thread.start()
                self._cond.notify_all()
                return self._queued
        self._write_logged([event])
        return 0

    @property
    def queued(self) -> int:
        """The number of the last event queued (0: none yet)."""
        with self._cond:
            return self._queued

    def wait(self, number: int, timeout: float | None = None) -> bool:
        """True once every event up to *number* is written; False after *timeout* seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: self._done >= number, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Write what is queued, then stop the thread (later events are written by their callers)."""
        with self._cond:
            self._closed = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return  # closed and drained
                batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
                upto = self._done + len(batch)
            self._write_logged(batch)
            with self._cond:
                self._done = upto
                self._cond.notify_all()

    def _write_logged(self, batch: list) -> None:
        try:
            self._write(batch)
        except Exception:
            log.exception("cannot write %d audit events", len(batch))
