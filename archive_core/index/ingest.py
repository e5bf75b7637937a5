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
from archive_core.errors import DuplicateConflict, InvalidDataset, InvalidIdentifier, JournalBusy
from archive_core.index.keywords import extract
from archive_core.index.models import Instance, Patient, Peer, Series, Study
from archive_core.part10 import dataset_offset, file_header
from archive_core.storage.filesystem import FilesystemStore
from archive_core.uids import require_uid

log = logging.getLogger(__name__)

DUPLICATE_POLICIES = ("keep_first", "overwrite")
EXTERNAL_SUFFIX = ".external.dcm"  # journal entries of objects imported as outside priors
# Tombstoned rows do not count: an object received again after a purge is stored again.
_CHECKSUM_OF = select(Instance.checksum_sha256).where(
    Instance.sop_instance_uid == bindparam("uid"), Instance.deleted_at.is_(None)
)


def storage_key(study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    """Where an instance lives in the store: built from validated UIDs only, fanned out by study."""
    fan = hashlib.sha1(study_uid.encode()).hexdigest()[:2]
    return f"{fan}/{study_uid}/{series_uid}/{sop_instance_uid}.dcm"


@dataclass(frozen=True)
class Identity:
    """The validated UIDs that identify a received object."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str

    @classmethod
    def of(cls, ds: Dataset, *, sop_class_uid: object = None, sop_instance_uid: object = None) -> "Identity":
        """Validate the identifying UIDs of *ds* (the DIMSE command's values take precedence)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sop_class = require_uid(sop_class_uid or ds.get("SOPClassUID"), "SOP Class UID")
            sop_instance = require_uid(sop_instance_uid or ds.get("SOPInstanceUID"), "SOP Instance UID")
            dataset_sop = ds.get("SOPInstanceUID")
            if sop_instance_uid and dataset_sop and require_uid(dataset_sop, "SOP Instance UID") != sop_instance:
                raise InvalidIdentifier("SOP Instance UID of the dataset differs from the request's")
            return cls(
                sop_class_uid=sop_class,
                sop_instance_uid=sop_instance,
                study_uid=require_uid(ds.get("StudyInstanceUID"), "Study Instance UID"),
                series_uid=require_uid(ds.get("SeriesInstanceUID"), "Series Instance UID"),
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
    ds: Dataset
    checksum: str
    size_bytes: int
    transfer_syntax_uid: str
    source_ae: str | None
    external: bool | None  # None: decided by the sending peer's registration
    replaced_key: str | None = None  # set by indexing: the overwritten object lived elsewhere


@dataclass(frozen=True)
class Outcome:
    """What became of a received object."""

    seq: int  # journal sequence to wait for before the object is visible (0: nothing new)
    duplicate: bool = False


def parse(dataset_bytes: bytes, transfer_syntax_uid: str) -> Dataset:
    """Decode a dataset received in *transfer_syntax_uid* (values stay raw until read)."""
    from pydicom.filereader import read_dataset
    from pydicom.uid import UID

    ts = UID(transfer_syntax_uid)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if ts.is_deflated:
                import zlib

                dataset_bytes = zlib.decompress(dataset_bytes, -zlib.MAX_WBITS)
            ds = read_dataset(io.BytesIO(dataset_bytes), ts.is_implicit_VR, ts.is_little_endian)
    except Exception as exc:
        raise InvalidDataset(f"cannot parse dataset: {exc}") from exc
    _require_whole_elements(ds, len(dataset_bytes))
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


class Ingestor:
    """Receives objects durably and indexes them in the background.

    Parameters
    ----------
    store : FilesystemStore
        Where the journal and the objects live.
    sessions : sessionmaker
        Sessions on the archive database.
    duplicate_policy : str
        ``keep_first`` or ``overwrite`` (see the conformance statement).
    batch_size : int
        Most journal entries indexed in one transaction.
    """

    def __init__(
        self,
        store: FilesystemStore,
        sessions: sessionmaker[Session],
        *,
        duplicate_policy: str = "keep_first",
        batch_size: int = 200,
        coalesce_seconds: float = 0.05,
        on_indexed: Callable[[set[str]], None] | None = None,
    ) -> None:
        if duplicate_policy not in DUPLICATE_POLICIES:
            raise ValueError(f"duplicate policy must be one of {DUPLICATE_POLICIES}")
        self.store = store
        self.sessions = sessions
        self._engine = sessions.kw["bind"]
        self.duplicate_policy = duplicate_policy
        self.batch_size = batch_size
        self.on_indexed = on_indexed
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._last_seq = 0
        # SOP Instance UID -> (checksum, journal sequence) of what is acknowledged but not yet indexed
        self._pending: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()  # guards the duplicate check and _pending
        self._indexed = threading.Condition()
        self._done_seqs: set[int] = set()
        self._indexed_upto = 0
        self._thread: threading.Thread | None = None
        self._owns_journal = False
        self._waiters = 0
        self.coalesce_seconds = coalesce_seconds
        self.failures = 0

    # -- receiving -------------------------------------------------------------------------

    def receive(
        self,
        dataset_bytes: bytes,
        ds: Dataset,
        *,
        transfer_syntax_uid: str,
        identity: Identity,
        source_ae: str | None = None,
        external: bool | None = None,
    ) -> Outcome:
        """Make *dataset_bytes* durable in the journal and queue it for indexing.

        Raises :class:`StorageFull` below the floor and :class:`DuplicateConflict` for a different
        object under a stored SOP Instance UID (policy ``keep_first``); nothing is written then.
        """
        self.store.check_space()
        checksum = hashlib.sha256(dataset_bytes).hexdigest()
        uid = identity.sop_instance_uid
        with self._lock:
            pending = self._pending.get(uid)
            known = pending[0] if pending else self._indexed_checksum(uid)
            if known == checksum:
                # Still pending: the caller must wait for the first copy's indexing, like its sender.
                return Outcome(seq=pending[1] if pending else 0, duplicate=True)
            if known is not None and self.duplicate_policy == "keep_first":
                raise DuplicateConflict("different content under a stored SOP Instance UID; first kept")
            self._last_seq += 1
            seq = self._last_seq
            self._pending[uid] = (checksum, seq)
        try:
            header = file_header(
                sop_class_uid=identity.sop_class_uid,
                sop_instance_uid=uid,
                transfer_syntax_uid=transfer_syntax_uid,
                source_ae=source_ae,
            )
            # "external" (an import of outside priors) is known only here: the entry's name keeps it for a replay.
            suffix = EXTERNAL_SUFFIX if external else ".dcm"
            path = self.store.write_incoming(f"{time.time_ns():020d}-{seq:09d}-{uid}{suffix}", [header, dataset_bytes])
        except BaseException:
            with self._lock:
                if self._pending.get(uid) == (checksum, seq):
                    del self._pending[uid]
            self._mark_done([seq])
            raise
        self._queue.put(
            Job(seq, path, identity, ds, checksum, len(header) + len(dataset_bytes), transfer_syntax_uid, source_ae, external)
        )
        return Outcome(seq=seq)

    def _indexed_checksum(self, sop_instance_uid: str) -> str | None:
        # On the acknowledgement's critical path: a Core statement on a pooled connection, no ORM session.
        with self._engine.connect() as conn:
            return conn.execute(_CHECKSUM_OF, {"uid": sop_instance_uid}).scalar()

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

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None
        if self._owns_journal:
            self.store.release_journal()
            self._owns_journal = False

    def wait_indexed(self, seq: int | None = None, timeout: float = 60.0) -> bool:
        """Block until every entry up to *seq* (default: all acknowledged so far) is indexed."""
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
            self._done_seqs.update(seqs)
            while self._indexed_upto + 1 in self._done_seqs:
                self._indexed_upto += 1
                self._done_seqs.discard(self._indexed_upto)
            self._indexed.notify_all()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
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

    def _index_with_retry(self, batch: list[Job], attempts: int = 6) -> None:
        # The journal holds every entry until it is indexed, so a retry loses nothing. A concurrent
        # writer (an import, another process) may have created a row we were about to insert.
        delay = 0.05
        for _attempt in range(attempts):
            try:
                self.index_batch(batch)
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
        """Index *batch* in one transaction, then move its files under their keys."""
        touched_studies = index_jobs(self.sessions, batch)
        keys = []
        for job in batch:
            self.store.commit(job.path, job.identity.key)
            keys.append(job.identity.key)
        self.store.sync_committed(keys)
        for job in batch:
            # Policy "overwrite" with other Study/Series UIDs: the old file is no object's any more.
            if job.replaced_key and job.replaced_key not in keys:
                self.store.delete(job.replaced_key)
        with self._lock:
            for job in batch:
                if self._pending.get(job.identity.sop_instance_uid, ("",))[0] == job.checksum:
                    del self._pending[job.identity.sop_instance_uid]
        self._mark_done(job.seq for job in batch if job.seq > 0)
        if self.on_indexed is not None:
            try:
                self.on_indexed(touched_studies)
            except Exception:
                log.exception("after-index hook failed")

    def replay(self, *, discard_unfinished: bool = True) -> int:
        """Index what the journal holds (after a crash); returns how many entries were replayed.

        *discard_unfinished* also removes interrupted writes (``.tmp``): right for the process
        that owns the journal at its start, wrong for a tool running beside a live server.
        """
        jobs: list[Job] = []
        count = 0
        if discard_unfinished:
            self.store.discard_unfinished()
        for path in self.store.incoming():
            try:
                job = job_from_file(path, seq=0, external=True if path.name.endswith(EXTERNAL_SUFFIX) else None)
            except Exception as exc:
                # Only a corrupted disk gets here: a journal entry is fsynced before it is renamed.
                quarantine = self.store.root / "quarantine"
                quarantine.mkdir(exist_ok=True)
                path.rename(quarantine / path.name)
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


def index_jobs(sessions: sessionmaker[Session], batch: list[Job]) -> set[str]:
    """Create or update the index rows of *batch* in one write transaction; return the study UIDs touched."""
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
            if study is None:
                prow = extract(job.ds, "PATIENT")
                pkey = (prow["patient_id"] or "", prow["issuer_of_patient_id"] or "")
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
                srow = extract(job.ds, "STUDY")
                external = job.external if job.external is not None else (job.source_ae or "") in external_aes
                study = Study(study_uid=ident.study_uid, patient=patient, external=external)
                _update_blank(study, srow, skip=("study_uid",))
                s.add(study)
                studies[ident.study_uid] = study
            se = series.get(ident.series_uid)
            if se is None:
                se = Series(series_uid=ident.series_uid, study=study)
                _update_blank(se, extract(job.ds, "SERIES"), skip=("series_uid",))
                s.add(se)
                series[ident.series_uid] = se
            irow = extract(job.ds, "IMAGE")
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
