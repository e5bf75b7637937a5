"""The audit writer (archive_core/audit_writer.py): group commit, wait, failures, close."""

from __future__ import annotations

import threading

from archive_core.audit_writer import AuditWriter


def test_the_audit_writer_commits_queued_events_together_and_wait_returns_when_they_are_written():
    """Group commit: events queued while a transaction is being written share the next one, and
    wait() returns only once an event's transaction is done (bad input: a write that fails is
    logged and does not block a later wait)."""
    gate, entered = threading.Event(), threading.Event()
    batches: list[list[int]] = []

    def write(events: list[int]) -> None:
        entered.set()
        gate.wait(10)
        if events == [99]:
            raise RuntimeError("database is locked")
        batches.append(list(events))

    writer = AuditWriter(write, max_batch=3)
    first = writer.add(1)  # the writer takes it at once and blocks in write()
    assert entered.wait(10)
    later = [writer.add(n) for n in (2, 3, 4, 5)]
    assert not writer.wait(first, timeout=0.2)  # not written yet: wait says so
    gate.set()
    assert writer.wait(later[-1], timeout=10)
    assert batches == [[1], [2, 3, 4], [5]]
    failed = writer.add(99)
    assert writer.wait(failed, timeout=10)  # a failed write is given up, logged, never waited on forever
    writer.close()
    assert writer.add(6) == 0 and batches[-1] == [6]  # after close: written in the caller's thread
