"""Keeping the index and the store in agreement: ``archive fsck`` and ``archive import``."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from sqlalchemy import delete, select

from archive_core import filechanges
from archive_core.archive import Archive
from archive_core.db import write_session
from archive_core.errors import ArchiveError, JournalBusy
from archive_core.index.entries import job_from_file
from archive_core.index.identity import Identity, audit_refusal
from archive_core.index.received import read_part10
from archive_core.index.upsert import index_jobs, refresh_counts
from archive_core.index.models import Instance
from archive_core.storage import BlobStore, blob_checksum
from archive_core.storage.base import dataset_checksum

log = logging.getLogger(__name__)


@dataclass
class FsckReport:
    checked: int = 0
    missing_files: list[str] = field(default_factory=list)  # index rows whose file is gone
    orphan_files: list[str] = field(default_factory=list)  # files no index row points at
    checksum_mismatches: list[str] = field(default_factory=list)
    journal_pending: int = 0
    repaired: list[str] = field(default_factory=list)
    # Files an interrupted correction or tier move left, with the intent that says which side goes
    # (archive_core.filechanges): not problems; --repair, the next tier move or correction finish them.
    pending_changes: list[str] = field(default_factory=list)

    @property
    def problems(self) -> int:
        return len(self.missing_files) + len(self.orphan_files) + len(self.checksum_mismatches) + self.journal_pending


def file_checksum(path: Path) -> str:
    """SHA-256 of the dataset of a local Part 10 file (an import, a journal entry)."""
    with open(path, "rb") as f:
        return dataset_checksum(f)


def fsck(archive: Archive, *, repair: bool = False, verify_checksums: bool = True) -> FsckReport:
    """Compare index and store; with *repair*, bring them back into agreement.

    Repair replays the journal, indexes orphan files, drops rows whose file is gone, and moves
    files whose checksum does not match into ``quarantine/`` (dropping their rows) so that
    nothing corrupt is served. A report after repair lists what remains.
    """
    store = archive.store
    if not repair:
        return _check(archive, verify_checksums=verify_checksums)
    # Repairs race a running archive (it indexes, then moves files): only the journal's owner may repair.
    ours = archive.ingestor.owns_journal
    if not store.claim_journal():
        raise JournalBusy("the archive is running on this storage: stop it before fsck --repair")
    try:
        return _check(archive, verify_checksums=verify_checksums, repair=True)
    finally:
        if not ours:
            store.release_journal()


def _check(archive: Archive, *, verify_checksums: bool, repair: bool = False) -> FsckReport:
    store = archive.store
    report = FsckReport(journal_pending=len(store.incoming()))
    if repair:
        report.repaired.extend(f"finished an interrupted file change: deleted {loc}"
                               for loc in filechanges.resolve(archive))
    if repair and report.journal_pending:
        archive.ingestor.replay(discard_unfinished=False)
        report.repaired.append(f"replayed {report.journal_pending} journal entries")
        report.journal_pending = len(store.incoming())
    with archive.sessions() as s:
        # Tombstoned rows are not served; their files go with the purge that tombstoned them.
        rows = s.execute(
            select(Instance.id, Instance.storage_key, Instance.checksum_sha256, Instance.tier).where(
                Instance.deleted_at.is_(None)
            )
        ).all()
        tombstoned = set(s.scalars(select(Instance.storage_key).where(Instance.deleted_at.is_not(None))))
    indexed_keys = set(tombstoned)
    archived_keys = set()
    for _id, key, checksum, tier in rows:
        report.checked += 1
        (archived_keys if tier == "archive" else indexed_keys).add(key)
        store_of_tier = archive.store_for(tier)
        if not store_of_tier.exists(key):
            report.missing_files.append(key)
        elif verify_checksums and blob_checksum(store_of_tier, key) != checksum:
            report.checksum_mismatches.append(key)
    intended = filechanges.pending_locations(archive)
    report.orphan_files = sorted(k for k in store.keys() if k not in indexed_keys and ("active", k) not in intended)
    # Archive-tier files no visible row points at (reported only: repair handles the active store).
    report.orphan_files += sorted(
        f"archive:{k}" for k in archive.archive_store.keys()
        if k not in archived_keys and k not in tombstoned and ("archive", k) not in intended
    )
    # A file of an interrupted operation that no row uses: pending, not a problem.
    report.pending_changes = sorted(
        f"{tier}:{k}" for tier, k in intended
        if archive.store_for(tier).exists(k) and k not in (archived_keys if tier == "archive" else indexed_keys)
    )
    if repair:
        _repair(archive, report)
    return report


def _quarantine(store: BlobStore, key: str, quarantine: Path) -> None:
    """Keep the object of *key* in the local ``quarantine/`` folder for a human, out of *store*."""
    store.download(key, quarantine / key.replace("/", "_"))
    store.delete(key)


def _repair(archive: Archive, report: FsckReport) -> None:
    store = archive.store
    quarantine = store.quarantine_dir
    drop = list(report.missing_files)
    for key in report.checksum_mismatches:
        holder = store if store.exists(key) else archive.archive_store
        _quarantine(holder, key, quarantine)
        drop.append(key)
        report.repaired.append(f"quarantined {key}")
    if drop:
        with write_session(archive.sessions) as s:
            series_ids = set(s.scalars(select(Instance.series_pk).where(Instance.storage_key.in_(drop))))
            s.execute(delete(Instance).where(Instance.storage_key.in_(drop)))
            from archive_core.index.models import Series

            study_ids = set(s.scalars(select(Series.study_pk).where(Series.id.in_(series_ids))))
            refresh_counts(s, series_ids, study_ids)
        report.repaired.extend(f"dropped index row of {k}" for k in report.missing_files)
        report.missing_files = []
        report.checksum_mismatches = []
    reindexed = []
    for key in report.orphan_files:
        if key.startswith("archive:"):
            continue
        # A local copy to read (and, misplaced, to file through the journal's normal path).
        local = store.incoming_dir / f"fsck-{os.getpid()}-{key.replace('/', '_')}.part.tmp"
        store.download(key, local)
        try:
            job = job_from_file(local, seq=0)
        except ArchiveError as exc:
            local.unlink()
            log.error("orphan file %s cannot be indexed: %s", key, exc)
            continue
        with archive.sessions() as s:
            indexed_key = s.scalar(
                select(Instance.storage_key).where(Instance.sop_instance_uid == job.identity.sop_instance_uid)
            )
        if indexed_key is not None and indexed_key != key:
            # An object overwritten under another study/series whose old file a crash left behind:
            # the index holds the newer one; keep the old for a human, never serve it.
            os.replace(local, quarantine / key.replace("/", "_"))
            store.delete(key)
            reindexed.append(key)
            report.repaired.append(f"quarantined superseded {key}")
            continue
        misplaced = job.identity.key != key
        if misplaced:
            # Not where its UIDs say it belongs: filed there through the normal path, before the index names it.
            store.stage(local, job.identity.key)
        conflicts: list = []
        index_jobs(archive.sessions, [job], conflicts=conflicts)
        if conflicts:
            # Its series is another study's, or its study another patient's: never filed, kept for a human.
            os.replace(local, quarantine / key.replace("/", "_"))
            if misplaced and store.stages_uploads:
                store.delete(job.identity.key)
            store.delete(key)
            reindexed.append(key)
            report.repaired.append(f"quarantined contradicting {key}")
            continue
        if misplaced:
            store.commit(local, job.identity.key)
            store.sync_committed([job.identity.key])
            store.delete(key)
        else:
            local.unlink()
        reindexed.append(key)
        report.repaired.append(f"indexed orphan {key}")
    report.orphan_files = [k for k in report.orphan_files if k not in reindexed]


@dataclass
class ImportReport:
    stored: int = 0
    duplicates: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def iter_files(root: Path) -> Iterable[Path]:
    if root.is_file():
        yield root
        return
    for dirpath, _dirs, files in os.walk(root):
        for name in sorted(files):
            yield Path(dirpath, name)


def import_path(
    archive: Archive,
    root: Path,
    *,
    external: bool = False,
    progress: Callable[[Iterable[Path]], Iterable[Path]] = lambda it: it,
) -> ImportReport:
    """Store every readable DICOM file under *root* as if it had been sent; list the others."""
    report = ImportReport()
    ingestor = archive.ingestor
    ingestor.start(replay=False)
    try:
        for path in progress(list(iter_files(root))):
            ds = None
            try:
                ds, dataset_bytes, ts, _source = read_part10(path)
                # The file meta plays the C-STORE command's part: the dataset must carry the UIDs it names.
                meta = getattr(ds, "file_meta", None) or {}
                identity = Identity.of(ds, sop_class_uid=meta.get("MediaStorageSOPClassUID"),
                                       sop_instance_uid=meta.get("MediaStorageSOPInstanceUID"))
                outcome = ingestor.receive(
                    dataset_bytes, ds, transfer_syntax_uid=ts, identity=identity, source_ae=None, external=external
                )
            except ArchiveError as exc:
                report.unreadable.append((str(path), str(exc)))
                audit_refusal(archive.sessions, exc, ds, actor="archive import", actor_kind="system", via="import")
                continue
            if outcome.duplicate:
                report.duplicates += 1
            else:
                report.stored += 1
        ingestor.wait_indexed()
    finally:
        ingestor.stop()
    return report
