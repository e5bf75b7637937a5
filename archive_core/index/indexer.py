"""The indexer: one background thread indexes the journal's entries in batches, and the waits on it.

The thread gathers what is queued into batches (one transaction, one commit each), stages them in
the store, indexes them (:func:`~archive_core.index.upsert.index_jobs`) and moves each file under
its key. :meth:`Indexer.wait_indexed` is what an A-RELEASE answer waits on: everything the
association had acknowledged is indexed. :meth:`Indexer.replay` indexes what a crash (or a worker
process that died) left in a journal. A store that cannot take a batch (an object store away)
leaves it in the journal, tried again later.

:class:`Indexer` is the background half of :class:`~archive_core.index.ingest.Ingestor`, which
holds the state (queue, lock, pending claims, sequences) and the receiving half.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Iterable

from archive_core.errors import IdentityConflict, JournalBusy, StorageUnavailable
from archive_core.index.entries import EXTERNAL_SUFFIX, Job, job_from_file
from archive_core.index.identity import Identity, audit_refusal
from archive_core.index.upsert import index_jobs, refused

log = logging.getLogger(__name__)


class Indexer:
    """The indexer thread, the replay of a journal and the waits for the index (state: :class:`Ingestor`)."""

    @property
    def indexed_upto(self) -> int:
        """Every journal sequence up to this one is indexed."""
        return self._indexed_upto

    def settle_lost(self, claims: list[tuple[Identity, str, int]], journal: Path, *, upto: int = 0) -> int:
        """A worker process died holding *claims* (not known to be in its journal *journal*): settle them.

        Its journal is replayed (what it wrote is indexed, acknowledged or not), then the claims it
        never wrote are dropped. They stay held until then: no other worker can be acknowledged
        for a contradicting object in between. Returns how many entries were replayed.
        """
        self._mark_done(seq for _, _, seq in claims)
        self.wait_indexed(upto, timeout=3600)  # what the worker queued before it died is indexed first
        replayed = self.replay(directory=journal)
        for identity, checksum, seq in claims:
            self.abandon(identity, checksum, seq, done=False)
        return replayed

    def start(self, *, replay: bool = True) -> None:
        """Replay the journal (unless *replay* is false), then index new entries in a background thread.

        ``archive import`` starts without replaying: the journal may belong to a running server,
        whose own indexer is about to take those entries.
        """
        if replay:
            # One owner per journal: a second archive on the same storage would replay (and move)
            # entries the first one is indexing.
            if not self.store.claim_journal():
                raise JournalBusy(f"another archive process owns the ingest journal under {self.store.root}")
            self._owns_journal = True
            self.replay()
        self._thread = threading.Thread(target=self._run, name="archive-indexer", daemon=True)
        self._thread.start()

    @property
    def owns_journal(self) -> bool:
        """Started with a replay: this process is the journal's owner until :meth:`stop`."""
        return self._owns_journal

    @property
    def running(self) -> bool:
        """The background indexer is started."""
        return self._thread is not None

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None
        if self._owns_journal:
            self.store.release_journal()
            self._owns_journal = False

    def wait_indexed(self, seq: int | None = None, timeout: float = 60.0) -> bool:
        """Block until every entry up to *seq* (default: all acknowledged so far) is indexed.

        An entry the object store could not take yet counts as done (it waits in the journal, see
        :meth:`is_pending`): an association's release is not held while the store is away.
        """
        if seq is None:
            with self._lock:
                seq = self._last_seq
        if seq <= 0:
            return True
        deadline = time.monotonic() + timeout
        with self._indexed:
            self._waiters += 1
            try:
                while self._indexed_upto < seq:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._indexed.wait(remaining)
            finally:
                self._waiters -= 1
        return True

    def _mark_done(self, seqs: Iterable[int]) -> None:
        with self._indexed:
            self._done_seqs.update(seq for seq in seqs if seq > self._indexed_upto)
            while self._indexed_upto + 1 in self._done_seqs:
                self._indexed_upto += 1
                self._done_seqs.discard(self._indexed_upto)
            self._indexed.notify_all()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            try:
                first = self._queue.get(timeout=max(0.0, self._retry_at - time.monotonic()) if self._deferred else None)
            except queue.Empty:
                self._retry_deferred()
                continue
            if first is None:
                break
            batch = [first]
            # Gather what arrives in the next few milliseconds into the same transaction (one
            # commit, one fsync), unless somebody is waiting for the index (a release, a query).
            deadline = time.monotonic() + self.coalesce_seconds
            while len(batch) < self.batch_size:
                remaining = deadline - time.monotonic()
                try:
                    if remaining <= 0 or self._waiters:
                        job = self._queue.get_nowait()
                    else:
                        job = self._queue.get(timeout=min(remaining, 0.005))
                except queue.Empty:
                    if remaining <= 0 or self._waiters:
                        break
                    continue
                if job is None:
                    stopping = True
                    break
                batch.append(job)
            self._index_with_retry(batch)
            if self._deferred and time.monotonic() >= self._retry_at:
                self._retry_deferred()

    def _defer(self, batch: list[Job], exc: Exception | None = None) -> None:
        """Keep *batch* for a later attempt: the store is unreachable (its entries stay in the journal)."""
        self._deferred.extend(batch)
        if exc is not None:
            self._retry_at = time.monotonic() + self.retry_seconds
            log.error("%s; %d objects wait in the journal, next attempt in %g s", exc, len(self._deferred),
                      self.retry_seconds)
        self._mark_done(job.seq for job in batch if job.seq > 0)

    def _retry_deferred(self) -> None:
        jobs, self._deferred, self._retry_at = self._deferred, [], 0.0
        for start in range(0, len(jobs), self.batch_size):
            self._index_with_retry(jobs[start:start + self.batch_size])
            if self._deferred:  # still unreachable: the rest waits with it
                self._deferred.extend(jobs[start + self.batch_size:])
                return
        log.info("the object store answers again: %d waiting objects stored and indexed", len(jobs))

    def _index_with_retry(self, batch: list[Job], attempts: int = 6) -> None:
        # The journal holds every entry until it is indexed, so a retry loses nothing. A concurrent
        # writer (an import, another process) may have created a row we were about to insert.
        if self._deferred and time.monotonic() < self._retry_at:
            self._defer(batch)  # the store is away: no batch waits on its timeouts until the next attempt
            return
        delay = 0.05
        for _attempt in range(attempts):
            try:
                self.index_batch(batch)
                return
            except StorageUnavailable as exc:
                self._defer(batch, exc)
                return
            except Exception as exc:  # the indexer thread must outlive any one batch
                self.failures += 1
                log.warning("indexing %d objects failed, retrying: %s", len(batch), exc.__class__.__name__)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        if len(batch) > 1:
            for job in batch:
                self._index_with_retry([job], attempts=3)
            return
        job = batch[0]
        log.error("cannot index %s; it stays in the journal for the next start", job.identity.sop_instance_uid)
        self._mark_done([job.seq])

    def index_batch(self, batch: list[Job]) -> None:
        """Stage *batch* in the store (an object store: upload, confirmed), index it in one transaction,
        then move its files under their keys (the filesystem) or drop its journal entries (confirmed).

        Raises :class:`StorageUnavailable` before indexing anything when the store cannot take them.
        """
        conflicts: list[tuple[Job, IdentityConflict]] = []
        if self.store.stages_uploads:
            # Never upload what the index will refuse: it would replace the object stored under that key.
            to_index = [job for job in batch if not self._refused_before_staging(job, conflicts)]
            self.store.stage_many([(job.path, job.identity.key) for job in to_index])
        else:
            to_index = batch
        touched_studies = index_jobs(self.sessions, to_index, conflicts=conflicts)
        for job, exc in conflicts:
            self._quarantine(job, exc)
        refused = {id(job) for job, _ in conflicts}
        keys = []
        for job in batch:
            if id(job) in refused:
                continue
            self.store.commit(job.path, job.identity.key)
            keys.append(job.identity.key)
        self.store.sync_committed(keys, journals={job.path.parent for job in batch})
        for job in batch:
            # Policy "overwrite" with other Study/Series UIDs: the old file is no object's any more.
            if job.replaced_key and job.replaced_key not in keys:
                self.store.delete(job.replaced_key)
        with self._lock:
            for job in batch:
                if self._pending.get(job.identity.sop_instance_uid, ("",))[0] == job.checksum:
                    del self._pending[job.identity.sop_instance_uid]
                if job.held:
                    self._unhold(job.identity)
                    job.held = False
        self._mark_done(job.seq for job in batch if job.seq > 0)
        if self.on_indexed is not None:
            try:
                self.on_indexed(touched_studies)
            except Exception:
                log.exception("after-index hook failed")

    def _refused_before_staging(self, job: Job, conflicts: list) -> bool:
        conflict = refused(self.sessions, job)
        if conflict is not None:
            conflicts.append((job, conflict))
        return conflict is not None

    def _quarantine(self, job: Job, exc: IdentityConflict) -> None:
        """Keep a journal entry that contradicts the index aside (``quarantine/``) instead of filing it.

        Only objects acknowledged by another process (``archive import`` beside a server) or before
        a correction moved their study can get here: this process refuses them before acknowledging.
        """
        ds = job.dataset()
        job.path.rename(self.store.quarantine_dir / job.path.name)
        log.error("journal entry %s of %s not indexed, moved to quarantine: %s", job.path.name,
                  job.identity.sop_instance_uid, exc)
        audit_refusal(self.sessions, exc, ds, actor=job.source_ae or "archive", via="index",
                      actor_kind="ae" if job.source_ae else "system", sop_instance_uid=job.identity.sop_instance_uid)

    def replay(self, *, discard_unfinished: bool = True, directory: Path | None = None) -> int:
        """Index what the journal holds (after a crash); returns how many entries were replayed.

        *discard_unfinished* also removes interrupted writes (``.tmp``): right for the process
        that owns the journal at its start, wrong for a tool running beside a live server.
        *directory*: only that worker's journal (one that died), else every journal.
        """
        jobs: list[Job] = []
        count = 0
        if discard_unfinished:
            self.store.discard_unfinished(directory)
        for path in self.store.incoming(directory):
            try:
                job = job_from_file(path, seq=0, external=True if path.name.endswith(EXTERNAL_SUFFIX) else None)
            except Exception as exc:
                # Only a corrupted disk gets here: a journal entry is fsynced before it is renamed.
                path.rename(self.store.quarantine_dir / path.name)
                log.error("journal entry %s unreadable, moved to quarantine: %s", path.name, exc)
                continue
            jobs.append(job)
            if len(jobs) >= self.batch_size:
                self._index_with_retry(jobs)
                count += len(jobs)
                jobs = []
        if jobs:
            self._index_with_retry(jobs)
            count += len(jobs)
        if count:
            log.info("replayed %d journal entries", count)
        return count
