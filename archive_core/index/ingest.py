"""Ingest: durable acknowledgement of received objects, then batched indexing off the critical path.

A received object is written to the store's incoming journal (temporary file, fsync, rename,
directory fsync) before its C-STORE is answered. A single indexer thread then indexes journal
entries in batches, one transaction per batch, and moves each file under its key. On start,
:meth:`Ingestor.replay` indexes whatever a crash left in the journal before queries are served.

This module is the receiving half of :class:`Ingestor`: the size and space checks, the duplicate
and identity checks and the claim under one lock, the journal write, the queue. The indexer
thread, the replay and the waits for the index are :mod:`archive_core.index.indexer`; the index
rows :mod:`archive_core.index.upsert`; the identity rules :mod:`archive_core.index.identity`; the
journal entries :mod:`archive_core.index.entries`.
"""
from __future__ import annotations

import hashlib
import queue
import threading
from dataclasses import dataclass
from typing import Callable

from pydicom.dataset import Dataset
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, sessionmaker

from archive_core.errors import DuplicateConflict, IdentityConflict, ObjectTooLarge
from archive_core.index.entries import Job, write_entry
from archive_core.index.identity import Identity
from archive_core.index.indexer import Indexer
from archive_core.index.models import Instance, Patient, Series, Study
from archive_core.index.received import dataset_size
from archive_core.storage.base import BlobStore, FileRange

DUPLICATE_POLICIES = ("keep_first", "overwrite")
# Tombstoned rows do not count: an object received again after a purge is stored again.
_CHECKSUM_OF = select(Instance.checksum_sha256).where(
    Instance.sop_instance_uid == bindparam("uid"), Instance.deleted_at.is_(None)
)
_OWNER_OF_STUDY = select(Patient.id, Patient.patient_id, Patient.issuer_of_patient_id).join(
    Study, Study.patient_pk == Patient.id
).where(Study.study_uid == bindparam("study"))
# What the index says about a received object, in one statement on the acknowledgement's path:
# the checksum under its SOP Instance UID, the study its series belongs to, and its study's patient.
# Tombstoned rows count for the series and study: a purged study received again is reused.
_FACTS_OF = select(
    _CHECKSUM_OF.scalar_subquery(),
    select(Study.study_uid)
    .join(Series, Series.study_pk == Study.id)
    .where(Series.series_uid == bindparam("series"))
    .scalar_subquery(),
    _OWNER_OF_STUDY.with_only_columns(Patient.id).scalar_subquery(),
    _OWNER_OF_STUDY.with_only_columns(Patient.patient_id).scalar_subquery(),
    _OWNER_OF_STUDY.with_only_columns(Patient.issuer_of_patient_id).scalar_subquery(),
)


@dataclass(frozen=True)
class _Facts:
    """What the index holds about a received object's UIDs (None: nothing)."""

    checksum: str | None
    series_study_uid: str | None
    study_owner_pk: int | None
    study_owner_key: tuple[str, str] | None


@dataclass(frozen=True)
class Outcome:
    """What became of a received object."""

    seq: int  # journal sequence to wait for before the object is visible (0: nothing new)
    duplicate: bool = False


class Ingestor(Indexer):
    """Receives objects durably and indexes them in the background.

    Parameters
    ----------
    store : BlobStore
        Where the journal and the objects live.
    sessions : sessionmaker
        Sessions on the archive database.
    duplicate_policy : str
        ``keep_first`` or ``overwrite`` (see the conformance statement).
    batch_size : int
        Most journal entries indexed in one transaction.
    max_object_bytes : int
        Largest dataset accepted, in bytes (0: no limit).
    """

    def __init__(
        self,
        store: BlobStore,
        sessions: sessionmaker[Session],
        *,
        duplicate_policy: str = "keep_first",
        batch_size: int = 200,
        coalesce_seconds: float = 0.05,
        on_indexed: Callable[[set[str]], None] | None = None,
        max_object_bytes: int = 0,
        retry_seconds: float = 10.0,
    ) -> None:
        if duplicate_policy not in DUPLICATE_POLICIES:
            raise ValueError(f"duplicate policy must be one of {DUPLICATE_POLICIES}")
        self.store = store
        self.sessions = sessions
        self._engine = sessions.kw["bind"]
        self.duplicate_policy = duplicate_policy
        self.batch_size = batch_size
        self.on_indexed = on_indexed
        self.max_object_bytes = max_object_bytes
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._last_seq = 0
        # SOP Instance UID -> (checksum, journal sequence) of what is acknowledged but not yet indexed
        self._pending: dict[str, tuple[str, int]] = {}
        # Series UID -> [Study UID, count] and Study UID -> [patient key, count] of acknowledged objects
        # not yet indexed: the identity check sees them as the index will.
        self._series_held: dict[str, list] = {}
        self._studies_held: dict[str, list] = {}
        self._lock = threading.Lock()  # guards the duplicate and identity checks, _pending and the held maps
        self._indexed = threading.Condition()
        self._done_seqs: set[int] = set()
        self._indexed_upto = 0
        self._thread: threading.Thread | None = None
        self._owns_journal = False
        self._waiters = 0
        self.coalesce_seconds = coalesce_seconds
        self.failures = 0
        # Jobs the store could not take (StorageUnavailable: an object store unreachable): acknowledged,
        # durable in the journal, tried again every *retry_seconds* by the indexer thread.
        self.retry_seconds = retry_seconds
        self._deferred: list[Job] = []
        self._retry_at = 0.0

    # -- receiving -------------------------------------------------------------------------

    def check_size(self, data: bytes | FileRange) -> None:
        """Raise :class:`ObjectTooLarge` for a dataset over the configured maximum."""
        size = dataset_size(data)
        if self.max_object_bytes and size > self.max_object_bytes:
            raise ObjectTooLarge(f"object of {size} bytes, over the limit of {self.max_object_bytes}")

    def receive(
        self,
        dataset: bytes | FileRange,
        ds: Dataset,
        *,
        transfer_syntax_uid: str,
        identity: Identity,
        source_ae: str | None = None,
        external: bool | None = None,
    ) -> Outcome:
        """Make *dataset* durable in the journal and queue it for indexing.

        *dataset* is the dataset's bytes, or where they lie on disk (a chunked receive): then the
        file is renamed or copied into the journal, never read into memory whole.

        Raises :class:`ObjectTooLarge` over the maximum size, :class:`StorageFull` below the floor,
        :class:`DuplicateConflict` for a different object under a stored SOP Instance UID (policy
        ``keep_first``) and :class:`IdentityConflict` for an object whose series belongs to another
        study or whose study belongs to another patient; nothing is written then. The check and the
        claim happen under one lock, against the index and everything acknowledged but not yet
        indexed: two associations cannot both be acknowledged with contradicting objects. Every
        ingest path (C-STORE, import, STOW) comes through here.
        """
        self.check_size(dataset)
        self.store.check_space()
        checksum = dataset.sha256() if isinstance(dataset, FileRange) else hashlib.sha256(dataset).hexdigest()
        claimed = self.claim(identity, checksum)
        if claimed.duplicate:
            return claimed
        seq = claimed.seq
        try:
            path, size = write_entry(self.store, dataset, identity=identity, transfer_syntax_uid=transfer_syntax_uid,
                                     source_ae=source_ae, external=external, seq=seq)
        except BaseException:
            self.abandon(identity, checksum, seq)
            raise
        self.enqueue(Job(seq, path, identity, ds, checksum, size, transfer_syntax_uid, source_ae, external, held=True))
        return Outcome(seq=seq)

    def claim(self, identity: Identity, checksum: str) -> Outcome:
        """The duplicate and identity checks of :meth:`receive`, and the claim, under one lock.

        Returns the journal sequence the object is to be written under, or (``duplicate``) the
        sequence of the identical object already acknowledged. The claim is settled by
        :meth:`enqueue` once the entry is in a journal, or by :meth:`abandon`. SCP worker processes
        (archive_core/net/workers.py) claim here, in the one process that indexes.
        """
        uid = identity.sop_instance_uid
        with self._lock:
            pending = self._pending.get(uid)
            facts = None if pending else self._indexed_facts(identity)
            known = pending[0] if pending else facts.checksum
            if known == checksum:
                # Still pending: the caller must wait for the first copy's indexing, like its sender.
                return Outcome(seq=pending[1] if pending else 0, duplicate=True)
            if known is not None and self.duplicate_policy == "keep_first":
                raise DuplicateConflict("different content under a stored SOP Instance UID; first kept")
            self._check_identity(identity, facts)
            self._last_seq += 1
            seq = self._last_seq
            self._pending[uid] = (checksum, seq)
            self._hold(identity)
        return Outcome(seq=seq)

    def abandon(self, identity: Identity, checksum: str, seq: int, *, done: bool = True) -> None:
        """Drop the claim *seq* (its journal write failed). *done* false: the sequence was already marked done."""
        with self._lock:
            if self._pending.get(identity.sop_instance_uid) == (checksum, seq):
                del self._pending[identity.sop_instance_uid]
            self._unhold(identity)
        if done:
            self._mark_done([seq])

    def enqueue(self, job: Job) -> None:
        """Queue a claimed object, now durable in a journal, for indexing."""
        self._queue.put(job)

    def is_pending(self, sop_instance_uid: str) -> bool:
        """Acknowledged (in the journal) and not yet indexed by this process."""
        with self._lock:
            return sop_instance_uid in self._pending

    def _indexed_facts(self, identity: Identity) -> "_Facts":
        # On the acknowledgement's critical path: a Core statement on a pooled connection, no ORM session.
        with self._engine.connect() as conn:
            row = conn.execute(
                _FACTS_OF,
                {"uid": identity.sop_instance_uid, "series": identity.series_uid, "study": identity.study_uid},
            ).one()
        return _Facts(row[0], row[1], row[2], (row[3], row[4]) if row[2] is not None else None)

    def _check_identity(self, identity: Identity, facts: "_Facts | None") -> None:
        """Raise :class:`IdentityConflict` if *identity* contradicts the index or a pending object (lock held)."""
        held_series = self._series_held.get(identity.series_uid)
        if held_series is None:
            facts = facts or self._indexed_facts(identity)
            series_study = facts.series_study_uid
        else:
            series_study = held_series[0]
        if series_study is not None and series_study != identity.study_uid:
            raise IdentityConflict("Series Instance UID belongs to another study")
        held_study = self._studies_held.get(identity.study_uid)
        if facts is None and held_study is not None and held_study[0] == identity.patient_key:
            return  # a pending instance sent again (policy overwrite) into its pending study
        facts = facts or self._indexed_facts(identity)
        if facts.study_owner_pk is not None:  # the index is the reference once the study is there
            if facts.study_owner_key == identity.patient_key:
                return
            # A patient merged into the study's owner is the owner: the index files it there.
            if self._resolve_patient(identity.patient_key) == facts.study_owner_pk:
                return
            raise IdentityConflict("Study Instance UID is filed under another Patient ID")
        if held_study is not None and held_study[0] != identity.patient_key:
            resolved = self._resolve_patient(held_study[0])
            if resolved is None or resolved != self._resolve_patient(identity.patient_key):
                raise IdentityConflict("Study Instance UID is filed under another Patient ID")

    def _resolve_patient(self, key: tuple[str, str]) -> int | None:
        """The patient row an object naming *key* is filed under (following merges), or None for a new patient."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(Patient.id, Patient.merged_into_pk).where(
                    Patient.patient_id == key[0], Patient.issuer_of_patient_id == key[1]
                )
            ).first()
            hops = 0
            while row is not None and row[1] is not None and hops < 16:
                row = conn.execute(select(Patient.id, Patient.merged_into_pk).where(Patient.id == row[1])).first()
                hops += 1
        return row[0] if row is not None else None

    def _hold(self, identity: Identity) -> None:
        """Remember an acknowledged object's series and study until it is indexed (lock held)."""
        for held, key, value in (
            (self._series_held, identity.series_uid, identity.study_uid),
            (self._studies_held, identity.study_uid, identity.patient_key),
        ):
            entry = held.setdefault(key, [value, 0])
            entry[1] += 1

    def _unhold(self, identity: Identity) -> None:
        for held, key in ((self._series_held, identity.series_uid), (self._studies_held, identity.study_uid)):
            entry = held.get(key)
            if entry is not None:
                entry[1] -= 1
                if entry[1] <= 0:
                    del held[key]
