"""Ingest: durable acknowledgement of received objects, then batched indexing off the critical path.

A received object is written to the store's incoming journal (temporary file, fsync, rename,
directory fsync) before its C-STORE is answered. A single indexer thread then indexes journal
entries in batches, one transaction per batch, and moves each file under its key. On start,
:meth:`Ingestor.replay` indexes whatever a crash left in the journal before queries are served.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import queue
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from archive_core.db import write_session
from archive_core.errors import (
    DuplicateConflict,
    IdentityConflict,
    InvalidDataset,
    InvalidIdentifier,
    JournalBusy,
    ObjectTooLarge,
    StorageUnavailable,
)
from archive_core.index.keywords import extract, patient_key
from archive_core.index.models import Instance, Patient, Peer, Series, Study
from archive_core.part10 import dataset_offset, file_header
from archive_core.storage.base import BlobStore, FileRange
from archive_core.uids import clean_uid, require_uid

log = logging.getLogger(__name__)

DUPLICATE_POLICIES = ("keep_first", "overwrite")
EXTERNAL_SUFFIX = ".external.dcm"  # journal entries of objects imported as outside priors
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


def storage_key(study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    """Where an instance lives in the store: built from validated UIDs only, fanned out by study."""
    fan = hashlib.sha1(study_uid.encode()).hexdigest()[:2]
    return f"{fan}/{study_uid}/{series_uid}/{sop_instance_uid}.dcm"


@dataclass(frozen=True)
class Identity:
    """The validated UIDs that identify a received object, and the patient it names."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    patient_key: tuple[str, str] = ("", "")  # (Patient ID, Issuer of Patient ID) as indexed

    @classmethod
    def of(
        cls,
        ds: Dataset,
        *,
        sop_class_uid: object = None,
        sop_instance_uid: object = None,
        dataset_must_agree: bool = True,
    ) -> "Identity":
        """Validate the identifying UIDs of *ds* against those the request (C-STORE command, file meta) names.

        The dataset must carry its SOP Class and SOP Instance UIDs, equal to the request's when it
        names them: an object is never filed under a UID it does not carry. *dataset_must_agree*
        false (journal entries acknowledged before this rule) lets the request's values stand in.
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            uids = []
            for name, named, carried in (
                ("SOP Class UID", sop_class_uid, ds.get("SOPClassUID")),
                ("SOP Instance UID", sop_instance_uid, ds.get("SOPInstanceUID")),
            ):
                if dataset_must_agree or not named:
                    if clean_uid(carried) == "" and named:
                        raise InvalidIdentifier(f"dataset has no {name}")
                    uid = require_uid(carried, name)
                    if named and require_uid(named, name) != uid:
                        raise InvalidIdentifier(f"{name} of the dataset differs from the request's")
                else:
                    uid = require_uid(named, name)
                uids.append(uid)
            return cls(
                sop_class_uid=uids[0],
                sop_instance_uid=uids[1],
                study_uid=require_uid(ds.get("StudyInstanceUID"), "Study Instance UID"),
                series_uid=require_uid(ds.get("SeriesInstanceUID"), "Series Instance UID"),
                patient_key=patient_key(ds),
            )

    @property
    def key(self) -> str:
        return storage_key(self.study_uid, self.series_uid, self.sop_instance_uid)


@dataclass
class Job:
    """One journal entry waiting to be indexed."""

    seq: int
    path: Path
    identity: Identity
    ds: Dataset | None
    checksum: str
    size_bytes: int
    transfer_syntax_uid: str
    source_ae: str | None
    external: bool | None  # None: decided by the sending peer's registration
    replaced_key: str | None = None  # set by indexing: the overwritten object lived elsewhere
    held: bool = False  # its series and study are in the ingestor's held maps until indexed
    # The index columns of each level, extracted where the object was received (a worker process
    # sends them instead of the dataset); None: extracted from ds.
    rows: dict[str, dict] | None = None

    def row(self, level: str) -> dict:
        return self.rows[level] if self.rows is not None else extract(self.ds, level)

    def dataset(self) -> Dataset:
        """The parsed dataset (read again from the journal entry when only its rows travelled)."""
        return self.ds if self.ds is not None else read_part10(self.path)[0]


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


# Refusals written to the audit trail: an object that names the wrong UIDs or another patient's
# study or series (a device mis-configured, a worklist mix-up) is an event a manager must see.
AUDITED_REFUSALS = (IdentityConflict, InvalidIdentifier)


def audit_refusal(
    sessions: sessionmaker[Session],
    exc: Exception,
    ds: Dataset | None,
    *,
    actor: str,
    actor_kind: str,
    via: str,
    sop_instance_uid: object = None,
) -> None:
    """Write a refused object to the audit trail (``dicom.store.refused``) if *exc* is one of :data:`AUDITED_REFUSALS`.

    Only valid UIDs are recorded; the Patient ID the object claimed goes in the row's patient
    column, as for every audited access. Never raises: the refusal is answered either way.
    """
    if not isinstance(exc, AUDITED_REFUSALS):
        return
    from archive_core import audit
    from archive_core.uids import is_valid_uid

    def uid(value: object) -> str | None:
        return clean_uid(value) if is_valid_uid(value) else None

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            carried = ds if ds is not None else Dataset()
            detail = {
                "via": via,
                "reason": str(exc),
                "sop_instance_uid": uid(sop_instance_uid) or uid(carried.get("SOPInstanceUID")),
                "series_uid": uid(carried.get("SeriesInstanceUID")),
            }
            patient_id = patient_key(carried)[0] or None
            study_uid = uid(carried.get("StudyInstanceUID"))
        with write_session(sessions) as s:
            audit.record(s, "dicom.store.refused", actor=actor, actor_kind=actor_kind, patient_id=patient_id,
                         study_uid=study_uid, detail=detail)
    except Exception:
        log.exception("cannot audit the refusal of %s from %s", clean_uid(sop_instance_uid) or "?", actor)


# Values larger than this stay on disk when a dataset is parsed from a file (pixel data, mostly):
# indexing reads only the identifying attributes.
_DEFER_BYTES = 64 * 1024
# The file meta group of a Part 10 file is a few hundred bytes; this much is read to find its end.
_META_PROBE_BYTES = 64 * 1024


def dataset_in_file(path: Path) -> FileRange:
    """The dataset of the Part 10 file at *path* (pynetdicom's chunked receive) as a range of it."""
    with open(path, "rb") as f:
        head = f.read(_META_PROBE_BYTES)
        size = os.fstat(f.fileno()).st_size
    offset = dataset_offset(head)
    return FileRange(Path(path), offset, size - offset)


def dataset_size(data: bytes | FileRange) -> int:
    return data.size if isinstance(data, FileRange) else len(data)


def parse(data: bytes | FileRange, transfer_syntax_uid: str) -> Dataset:
    """Decode a dataset received in *transfer_syntax_uid* (values stay raw until read).

    A dataset still on disk (:class:`FileRange`) is read with its large values left there, so
    memory does not grow with the object's size.
    """
    from pydicom.filereader import read_dataset
    from pydicom.uid import UID

    ts = UID(transfer_syntax_uid)
    if isinstance(data, FileRange) and ts.is_deflated:
        data = data.read_bytes()  # inflating needs the whole stream; bounded by the maximum object size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if isinstance(data, FileRange):
                with open(data.path, "rb") as f:
                    f.seek(data.offset)
                    ds = read_dataset(f, ts.is_implicit_VR, ts.is_little_endian, defer_size=_DEFER_BYTES)
                end = data.offset + data.size  # element positions count from the start of the file
            else:
                if ts.is_deflated:
                    import zlib

                    data = zlib.decompress(data, -zlib.MAX_WBITS)
                ds = read_dataset(io.BytesIO(data), ts.is_implicit_VR, ts.is_little_endian)
                end = len(data)
    except Exception as exc:
        raise InvalidDataset(f"cannot parse dataset: {exc}") from exc
    _require_whole_elements(ds, end)
    return ds


def _require_whole_elements(ds: Dataset, size: int) -> None:
    """Refuse a dataset that ends inside an element header.

    pydicom stops reading silently at a partial header (fewer than 8 bytes left), which would
    acknowledge an object whose last element is gone. A last *value* cut short (pydicom's
    MR_truncated.dcm) still parses into whole elements and is kept as received.
    """
    if not ds._dict:
        return
    last = ds._dict[max(ds._dict)]  # elements are encoded in tag order
    # Only raw (not yet decoded) elements know where they were read; sequences are decoded at once.
    if hasattr(last, "value_tell") and last.length != 0xFFFFFFFF and last.value_tell + last.length < size:
        raise InvalidDataset(f"dataset ends inside an element header ({size - last.value_tell - last.length} bytes)")


def _starts_with(data: bytes | FileRange, header: bytes) -> bool:
    """*data* is a file the store may adopt, and what precedes its dataset is exactly *header*."""
    if not isinstance(data, FileRange) or not data.owned or data.offset != len(header):
        return False
    with open(data.path, "rb") as f:
        return f.read(len(header)) == header


def read_part10(path: Path) -> tuple[Dataset, bytes, str, str | None]:
    """(dataset, dataset bytes, transfer syntax, source AE) of a Part 10 file or a bare dataset."""
    data = path.read_bytes()
    offset = dataset_offset(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise InvalidDataset(f"cannot read {path.name}: {exc}") from exc
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not ts:
        ts = _guess_transfer_syntax(ds)
    source = str(meta.get("SourceApplicationEntityTitle", "")).strip() if meta is not None else ""
    return ds, data[offset:], ts, source or None


def _guess_transfer_syntax(ds: Dataset) -> str:
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if ds.is_implicit_VR or ds.is_implicit_VR is None:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if ds.is_little_endian in (True, None) else ExplicitVRBigEndian


def write_entry(
    store: BlobStore,
    dataset: bytes | FileRange,
    *,
    identity: Identity,
    transfer_syntax_uid: str,
    source_ae: str | None,
    external: bool | None,
    seq: int,
) -> tuple[Path, int]:
    """Write a claimed object durably into *store*'s journal: (the entry's path, its size in bytes)."""
    header = file_header(
        sop_class_uid=identity.sop_class_uid,
        sop_instance_uid=identity.sop_instance_uid,
        transfer_syntax_uid=transfer_syntax_uid,
        source_ae=source_ae,
    )
    # "external" (an import of outside priors) is known only here: the entry's name keeps it for a replay.
    suffix = EXTERNAL_SUFFIX if external else ".dcm"
    name = f"{time.time_ns():020d}-{seq:09d}-{identity.sop_instance_uid}{suffix}"
    if _starts_with(dataset, header):
        # Received straight into the journal's folder behind this very header: renamed, not copied.
        path = store.adopt_incoming(name, dataset.path)
    else:
        path = store.write_incoming(name, [header, dataset])
    return path, len(header) + dataset_size(dataset)


INDEX_LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")


class Ingestor:
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

    # -- indexing --------------------------------------------------------------------------

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
        with self.sessions() as s:
            ident = job.identity
            study = s.scalar(select(Study).where(Study.study_uid == ident.study_uid))
            se = s.scalar(select(Series).where(Series.series_uid == ident.series_uid))
            conflict = _contradiction(s, ident, study, se)
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


def job_from_file(path: Path, *, seq: int, external: bool | None = None) -> Job:
    ds, dataset_bytes, ts, source_ae = read_part10(path)
    # The file meta plays the request's part: a journal entry's meta holds the UIDs the C-STORE
    # was accepted under, also when the dataset itself lacks them.
    meta = getattr(ds, "file_meta", None)
    identity = Identity.of(
        ds,
        sop_class_uid=meta.get("MediaStorageSOPClassUID") if meta is not None else None,
        sop_instance_uid=meta.get("MediaStorageSOPInstanceUID") if meta is not None else None,
        dataset_must_agree=False,
    )
    return Job(
        seq=seq,
        path=path,
        identity=identity,
        ds=ds,
        checksum=hashlib.sha256(dataset_bytes).hexdigest(),
        size_bytes=path.stat().st_size,
        transfer_syntax_uid=ts,
        source_ae=source_ae,
        external=external,
    )


def _contradiction(s: Session, ident: Identity, study: Study | None, se: Series | None) -> IdentityConflict | None:
    """The identity rule at indexing time: the last guard for objects acknowledged elsewhere (see Ingestor.receive)."""
    if se is not None and se.study is not study:
        return IdentityConflict("Series Instance UID belongs to another study")
    if study is None:
        return None
    owner = study.patient
    if (owner.patient_id, owner.issuer_of_patient_id) == ident.patient_key:
        return None
    patient = s.scalar(select(Patient).where(Patient.patient_id == ident.patient_key[0],
                                             Patient.issuer_of_patient_id == ident.patient_key[1]))
    hops = 0
    while patient is not None and patient.merged_into_pk is not None and hops < 16:
        patient, hops = s.get(Patient, patient.merged_into_pk), hops + 1
    if patient is not None and patient.id == owner.id:
        return None
    return IdentityConflict("Study Instance UID is filed under another Patient ID")


def index_jobs(
    sessions: sessionmaker[Session],
    batch: list[Job],
    *,
    conflicts: list[tuple[Job, IdentityConflict]] | None = None,
) -> set[str]:
    """Create or update the index rows of *batch* in one write transaction; return the study UIDs touched.

    A job that contradicts the index (:func:`_contradiction`) is not indexed: it is appended to
    *conflicts*, or raised as :class:`IdentityConflict` when no list is given.
    """
    with write_session(sessions) as s:
        study_uids = {j.identity.study_uid for j in batch}
        series_uids = {j.identity.series_uid for j in batch}
        sop_uids = {j.identity.sop_instance_uid for j in batch}
        studies = {st.study_uid: st for st in s.scalars(select(Study).where(Study.study_uid.in_(study_uids)))}
        series = {se.series_uid: se for se in s.scalars(select(Series).where(Series.series_uid.in_(series_uids)))}
        instances = {
            i.sop_instance_uid: i for i in s.scalars(select(Instance).where(Instance.sop_instance_uid.in_(sop_uids)))
        }
        external_aes = set(s.scalars(select(Peer.ae_title).where(Peer.external.is_(True))))
        patients: dict[tuple[str, str], Patient] = {}
        moved_from_series: set[int] = set()
        for job in batch:
            ident = job.identity
            study = studies.get(ident.study_uid)
            conflict = _contradiction(s, ident, study, series.get(ident.series_uid))
            if conflict is not None:
                if conflicts is None:
                    raise conflict
                conflicts.append((job, conflict))
                continue
            if study is None:
                prow = job.row("PATIENT")
                pkey = job.identity.patient_key
                patient = patients.get(pkey) or s.scalar(
                    select(Patient).where(Patient.patient_id == pkey[0], Patient.issuer_of_patient_id == pkey[1])
                )
                if patient is not None and patient.merged_into_pk is not None:
                    patient = s.get(Patient, patient.merged_into_pk)  # a merged duplicate: file under the survivor
                elif patient is None:
                    patient = Patient(patient_id=pkey[0], issuer_of_patient_id=pkey[1])
                    s.add(patient)
                    _update_blank(patient, prow, skip=("patient_id", "issuer_of_patient_id"), newest_wins=True)
                else:
                    _update_blank(patient, prow, skip=("patient_id", "issuer_of_patient_id"), newest_wins=True)
                    patient.deleted_at = None  # a purged patient who comes back is a new visit
                patients[pkey] = patient
                srow = job.row("STUDY")
                external = job.external if job.external is not None else (job.source_ae or "") in external_aes
                study = Study(study_uid=ident.study_uid, patient=patient, external=external)
                _update_blank(study, srow, skip=("study_uid",))
                s.add(study)
                studies[ident.study_uid] = study
            se = series.get(ident.series_uid)
            if se is None:
                se = Series(series_uid=ident.series_uid, study=study)
                _update_blank(se, job.row("SERIES"), skip=("series_uid",))
                s.add(se)
                series[ident.series_uid] = se
            irow = job.row("IMAGE")
            inst = instances.get(ident.sop_instance_uid)
            if inst is None:
                inst = Instance(sop_instance_uid=ident.sop_instance_uid)
                s.add(inst)
                instances[ident.sop_instance_uid] = inst
            elif inst.storage_key and inst.storage_key != ident.key:
                job.replaced_key = inst.storage_key
                moved_from_series.add(inst.series_pk)
            inst.series = se
            if study.deleted_at is not None:  # received again after a purge: a new visit, visible again
                study.deleted_at = None
                study.patient.deleted_at = None
            # A tombstoned row received again is visible again (and a pending purge skips its file).
            inst.deleted_at = se.deleted_at = None
            inst.sop_class_uid = ident.sop_class_uid
            inst.instance_number = irow["instance_number"]
            inst.image_rows, inst.image_columns = irow["image_rows"], irow["image_columns"]
            inst.number_of_frames = irow["number_of_frames"]
            inst.transfer_syntax_uid = job.transfer_syntax_uid
            inst.size_bytes = job.size_bytes
            inst.checksum_sha256 = job.checksum
            inst.storage_key = ident.key
            inst.tier = "active"
            inst.source_ae = job.source_ae
        s.flush()
        series_ids = {se.id for se in series.values() if se.series_uid in series_uids} | moved_from_series
        refused = {id(job) for job, _ in conflicts or ()}
        study_uids = {j.identity.study_uid for j in batch if id(j) not in refused}
        study_ids = {studies[u].id for u in study_uids}
        if moved_from_series:
            study_ids |= set(s.scalars(select(Series.study_pk).where(Series.id.in_(moved_from_series))))
        refresh_counts(s, series_ids, study_ids)
    return study_uids


def _update_blank(row: object, values: dict, *, skip: tuple[str, ...], newest_wins: bool = False) -> None:
    for column, value in values.items():
        if column in skip or value is None:
            continue
        if newest_wins or getattr(row, column) in (None, ""):
            setattr(row, column, value)


def refresh_counts(s: Session, series_ids: set[int], study_ids: set[int]) -> None:
    for series_id in series_ids:
        s.execute(
            update(Series)
            .where(Series.id == series_id)
            .values(num_instances=select(func.count(Instance.id)).where(Instance.series_pk == series_id).scalar_subquery())
        )
    for study_id in study_ids:
        rows = s.execute(select(Series.modality, Series.num_instances).where(Series.study_pk == study_id)).all()
        modalities = sorted({m for m, _ in rows if m})
        s.execute(
            update(Study)
            .where(Study.id == study_id)
            .values(
                num_series=len(rows),
                num_instances=sum(n for _, n in rows),
                modalities_in_study="\\".join(modalities)[:128],
            )
        )
