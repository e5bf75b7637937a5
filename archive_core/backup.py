"""``archive backup DEST``, ``archive verify-backup SRC``, ``archive restore SRC`` (embedded engines).

A backup folder holds:

- ``database.sqlite3``: a snapshot taken with SQLite's online backup API (consistent while the
  archive, the web process and the scheduler keep writing), or on PostgreSQL ``database.pgdump``:
  ``pg_dump --format=custom`` of a snapshot exported by the transaction that also lists the objects
  (``pg_export_snapshot``), so the dump and the manifest describe the same moment;
- ``objects/<tier>/<storage key>``: every file an index row of that snapshot points at, both tiers;
- ``manifest.jsonl``: one JSON line per object (key, tier, size, SHA-256 of the whole file, and the
  index's own dataset checksum), written last;
- ``instance/``: ``config.py`` without its secrets, the audit checkpoint log, ``documents/``;
- ``secrets/audit-signing.key`` only when asked (``--with-signing-key``): otherwise the operator keeps
  that key elsewhere (``audit verify`` needs it after a restore);
- ``backup.json``: when, what, how many objects were copied, journal entries not yet indexed.

Objects are incremental: one whose copy in the folder has the checksum the index records (SHA-256 of
the dataset, as ``archive fsck`` computes it) is not read from storage or copied again; a damaged or
missing copy is copied afresh. The folder mirrors the archive at the time of the
last backup: copies of objects no longer indexed are removed. Objects are read and written
through the configured stores (a folder or an S3 bucket), by key. The database side (one engine each)
is :mod:`archive_core.backup_engines`.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from archive_core.backup_engines import (
    BackupError,
    copy_sqlite,
    engine_of,
    restore_postgresql,
    run_pg,
    snapshot_postgresql,
    snapshot_sqlite,
    sqlite_path,
)
from archive_core.config import Settings, read_settings
from archive_core.part10 import dataset_offset
from archive_core.storage import BlobStore, open_stores

FORMAT = 1
MANIFEST = "manifest.jsonl"
DATABASE = "database.sqlite3"
PG_DATABASE = "database.pgdump"
# Names whose assignment in config.py is a secret: never written to a backup.
SECRET_MARKERS = ("SECRET", "PASSWORD", "TOKEN", "PRIVATE")


@dataclass
class BackupReport:
    objects: int = 0
    copied: int = 0
    copied_bytes: int = 0
    removed: int = 0
    journal_pending: int = 0
    stripped: list[str] = field(default_factory=list)
    signing_key: bool = False


def _stores(settings: Settings) -> dict[str, BlobStore]:
    """Both tiers' stores (a folder or an S3 bucket): objects are read and written by key."""
    active, archive = open_stores(settings)
    return {"active": active, "archive": archive}


def _copy_path(root: Path, tier: str, key: str) -> Path:
    """Where a backup keeps the object *key* of *tier*; a key or tier from a damaged manifest cannot escape."""
    if tier not in ("active", "archive") or not key or key.startswith("/") or ".." in key.split("/"):
        raise BackupError(f"invalid object in the manifest: {tier}:{key}")
    return root / "objects" / tier / key


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksums(path: Path) -> tuple[str, str]:
    """(SHA-256 of the whole file, the index's checksum: SHA-256 of the dataset after the preamble)."""
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), hashlib.sha256(memoryview(data)[dataset_offset(data):]).hexdigest()


def _copy_hashed(src: BinaryIO, target: Path) -> str:
    """Copy the reader *src* to *target* (through a temporary name, fsynced) and return the copy's SHA-256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    with open(tmp, "wb") as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
            dst.write(block)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, target)
    return digest.hexdigest()


def strip_secrets(source: str) -> tuple[str, list[str]]:
    """config.py text without the top-level assignments of secret names; the names removed."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    drop: set[int] = set()
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        else:
            targets = [node.target] if isinstance(node, ast.AnnAssign) else []
        found = [t.id for t in targets if isinstance(t, ast.Name) and (
            any(m in t.id.upper() for m in SECRET_MARKERS) or _holds_password(getattr(node, "value", None)))]
        if found:
            names += found
            drop.update(range(node.lineno - 1, node.end_lineno))
    kept = "".join(line for n, line in enumerate(lines) if n not in drop)
    return kept, names


def _holds_password(value) -> bool:
    """A string literal that is a URL with a password in it (``postgresql://user:secret@host/db``)."""
    from urllib.parse import urlsplit

    if not (isinstance(value, ast.Constant) and isinstance(value.value, str) and "://" in value.value):
        return False
    try:
        return bool(urlsplit(value.value).password)
    except ValueError:
        return False


def _read_manifest(path: Path) -> dict[tuple[str, str], dict]:
    if not path.is_file():
        return {}
    entries = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            entries[(entry["tier"], entry["key"])] = entry
    return entries


def _wait_for_journal(settings: Settings, wait_seconds: float) -> int:
    """Journal entries (received, not yet indexed) left after waiting up to *wait_seconds*."""
    store = _stores(settings)["active"]
    deadline = time.monotonic() + wait_seconds
    while True:
        pending = store.incoming()
        if not pending or time.monotonic() >= deadline:
            return len(pending)
        time.sleep(0.2)  # the archive indexes in batches; there is no event to wait on across processes


def backup(settings: Settings, dest: Path, *, with_signing_key: bool = False,
           journal_wait_seconds: float = 10) -> BackupReport:
    """Write or refresh the backup folder *dest* (see the module docstring)."""
    engine = engine_of(settings.database_url)
    if engine == "sqlite" and not sqlite_path(settings.database_url).is_file():
        raise BackupError(f"no database at {sqlite_path(settings.database_url)}")
    stores = _stores(settings)
    dest = Path(dest)
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    report = BackupReport(journal_pending=_wait_for_journal(settings, journal_wait_seconds))

    # 1. The database snapshot: everything after is taken from it, so the manifest matches it.
    database_file = DATABASE if engine == "sqlite" else PG_DATABASE
    snapshot_tmp = dest / (database_file + ".part")
    snapshot_tmp.unlink(missing_ok=True)
    if engine == "sqlite":
        rows = snapshot_sqlite(settings.database_url, snapshot_tmp)
    else:
        rows = snapshot_postgresql(settings.database_url, snapshot_tmp)

    # 2. The objects, incremental.
    entries = []
    for key, tier, size, index_sha in rows:
        tier = "archive" if tier == "archive" else "active"
        copy = _copy_path(dest, tier, key)
        if copy.is_file():
            whole, dataset = _checksums(copy)
            if dataset == index_sha:  # the copy already holds this object: not read from storage again
                entries.append({"key": key, "tier": tier, "size": copy.stat().st_size, "sha256": whole,
                                "index_sha256": index_sha})
                continue
        holder = stores[tier]
        if not holder.exists(key):  # moved to the other tier since the snapshot: take it from there
            holder = stores["active" if tier == "archive" else "archive"]
            if not holder.exists(key):
                raise BackupError(f"object {tier}:{key} of the index is missing from storage (run archive fsck)")
        with holder.open(key) as src:
            sha = _copy_hashed(src, copy)
        entries.append({"key": key, "tier": tier, "size": copy.stat().st_size, "sha256": sha,
                        "index_sha256": index_sha})
        report.copied += 1
        report.copied_bytes += entries[-1]["size"]
    report.objects = len(entries)
    wanted = {(e["tier"], e["key"]) for e in entries}
    objects_root = dest / "objects"
    if objects_root.is_dir():
        for path in sorted(objects_root.rglob("*")):
            if path.is_file():
                tier, key = path.relative_to(objects_root).parts[0], "/".join(path.relative_to(objects_root).parts[1:])
                if (tier, key) not in wanted:
                    path.unlink()
                    report.removed += 1

    # 3. Instance files: config without secrets, the checkpoint log, documents.
    files = dest / "instance"
    if files.exists():
        shutil.rmtree(files)
    files.mkdir(mode=0o700)
    config = settings.instance_path / "config.py"
    if config.is_file():
        text, report.stripped = strip_secrets(config.read_text())
        (files / "config.py").write_text(text)
    if settings.audit_checkpoint_log.is_file():
        shutil.copy2(settings.audit_checkpoint_log, files / "audit-checkpoints.log")
    documents = settings.instance_path / "documents"
    if documents.is_dir():
        shutil.copytree(documents, files / "documents")
    secret_dir = dest / "secrets"
    if secret_dir.exists():
        shutil.rmtree(secret_dir)
    if with_signing_key and settings.audit_signing_key_file.is_file():
        secret_dir.mkdir(mode=0o700)
        shutil.copy2(settings.audit_signing_key_file, secret_dir / "audit-signing.key")
        os.chmod(secret_dir / "audit-signing.key", 0o600)
        report.signing_key = True

    # 4. Commit: the snapshot, then the manifest, then the summary.
    os.replace(snapshot_tmp, dest / database_file)
    (dest / (PG_DATABASE if engine == "sqlite" else DATABASE)).unlink(missing_ok=True)  # the engine changed
    manifest_tmp = dest / (MANIFEST + ".part")
    manifest_tmp.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
    os.replace(manifest_tmp, dest / MANIFEST)
    (dest / "backup.json").write_text(json.dumps({
        "format": FORMAT,
        "database": engine,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "objects": report.objects,
        "copied": report.copied,
        "journal_pending": report.journal_pending,
        "stripped_settings": report.stripped,
        "audit_signing_key": report.signing_key,
    }, indent=1) + "\n")
    return report


def verify_backup(src: Path) -> tuple[int, list[str]]:
    """(objects checked, problems): every copy re-hashed against the manifest, the database checked."""
    src = Path(src)
    problems: list[str] = []
    if not (src / "backup.json").is_file() or not (src / MANIFEST).is_file():
        return 0, [f"{src} is not a finished backup (backup.json or {MANIFEST} missing)"]
    entries = _read_manifest(src / MANIFEST)
    for (tier, key), entry in sorted(entries.items()):
        copy = _copy_path(src, tier, key)
        if not copy.is_file():
            problems.append(f"missing object: {tier}:{key}")
        elif copy.stat().st_size != entry["size"] or _sha256(copy) != entry["sha256"]:
            problems.append(f"checksum mismatch: {tier}:{key}")
    db = src / DATABASE
    if (src / PG_DATABASE).is_file():
        problems += _verify_pg_dump(src / PG_DATABASE, len(entries), src)
    elif not db.is_file():
        problems.append(f"missing database copy: {db}")
    else:
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                result = [r[0] for r in conn.execute("PRAGMA integrity_check")]
                count = conn.execute("SELECT count(*) FROM instance WHERE deleted_at IS NULL").fetchone()[0]
            finally:
                conn.close()
            if result != ["ok"]:
                problems.append(f"database copy damaged: {'; '.join(result[:5])}")
            elif count != len(entries):
                problems.append(f"the database copy indexes {count} objects, the manifest lists {len(entries)}")
        except sqlite3.DatabaseError as exc:
            problems.append(f"database copy does not open: {exc}")
    return len(entries), problems


def _verify_pg_dump(dump: Path, manifest_count: int, src: Path) -> list[str]:
    """A PostgreSQL dump is checked by pg_restore reading its table of contents (it reads every
    entry's header), and the manifest against the object count recorded with it."""
    try:
        listing = run_pg("pg_restore", "--list", str(dump)).stdout
    except BackupError as exc:
        return [f"database dump does not read: {exc}"]
    problems = []
    if "TABLE DATA public instance " not in listing:
        problems.append("database dump holds no instance table")
    recorded = json.loads((src / "backup.json").read_text()).get("objects")
    if recorded != manifest_count:
        problems.append(f"the backup recorded {recorded} objects, the manifest lists {manifest_count}")
    return problems


def _holds_data(instance: Path) -> list[Path]:
    """What in *instance* restoring would replace (a fresh instance holds only a generated config.py)."""
    found = []
    for name in ("archivage.sqlite3", "audit-checkpoints.log", "audit-signing.key"):
        path = instance / name
        if path.is_file() and path.stat().st_size > 0:
            found.append(path)
    for name in ("storage", "storage-archive", "documents"):
        path = instance / name
        if path.is_dir() and any(p.is_file() for p in path.rglob("*")):
            found.append(path)
    return found


def restore(src: Path, instance: Path, *, force: bool = False) -> list[str]:
    """Rebuild *instance* from the backup *src*; the notes to show. Run ``db upgrade`` afterwards.

    An instance that holds data is refused unless *force*: then what it holds is moved aside, into
    ``<instance>.before-restore-<time>``, never deleted.
    """
    src, instance = Path(src), Path(instance)
    checked, problems = verify_backup(src)
    if problems:
        raise BackupError("the backup does not verify: " + "; ".join(problems[:10]))
    notes = []
    existing = _holds_data(instance) if instance.is_dir() else []
    if existing and not force:
        raise BackupError(f"{instance} already holds data ({', '.join(p.name for p in existing)}): "
                          "restore into an empty instance, or pass --force to move it aside")
    if instance.is_dir() and force:
        aside = instance.with_name(f"{instance.name}.before-restore-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}")
        aside.mkdir(mode=0o700)
        for path in list(instance.iterdir()):
            shutil.move(str(path), aside / path.name)
        notes.append(f"the previous contents of {instance} were moved to {aside}")
    instance.mkdir(mode=0o700, parents=True, exist_ok=True)

    files = src / "instance"
    config_text = (files / "config.py").read_text() if (files / "config.py").is_file() else ""
    # The backup holds no SECRET_KEY: a new one (open sessions end; nothing stored depends on it).
    config_text += ("\n# Generated by archive restore (the backup holds no secret).\n"
                    f"SECRET_KEY = {secrets.token_hex(32)!r}\n")
    fd = os.open(instance / "config.py", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(config_text)
    settings = Settings.from_mapping(instance, read_settings(instance))
    stores = _stores(settings)
    if (src / PG_DATABASE).is_file():
        if engine_of(settings.database_url) != "postgresql":
            raise BackupError("the backup holds a PostgreSQL dump: set DATABASE_URL (ARCHIVAGE_DATABASE_URL) to "
                              "the PostgreSQL database to restore into")
        notes += restore_postgresql(src / PG_DATABASE, settings.database_url, force=force)
    else:
        db_path = sqlite_path(settings.database_url)
        if db_path.exists() and db_path.stat().st_size > 0 and not force:
            raise BackupError(f"a database already exists at {db_path}")
        db_path.parent.mkdir(parents=True, exist_ok=True)
        copy_sqlite(src / DATABASE, db_path)
    for (tier, key) in _read_manifest(src / MANIFEST):
        with open(_copy_path(src, tier, key), "rb") as f:
            stores[tier].put(key, f)
    if (files / "audit-checkpoints.log").is_file():
        settings.audit_checkpoint_log.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(files / "audit-checkpoints.log", settings.audit_checkpoint_log)
    if (files / "documents").is_dir():
        shutil.copytree(files / "documents", instance / "documents", dirs_exist_ok=True)
    key_copy = src / "secrets" / "audit-signing.key"
    if key_copy.is_file():
        shutil.copy2(key_copy, settings.audit_signing_key_file)
        os.chmod(settings.audit_signing_key_file, 0o600)
    else:
        notes.append("the backup holds no audit signing key: put the one kept aside at "
                     f"{settings.audit_signing_key_file} "
                     "before `audit verify`")
    notes.append(f"restored {checked} objects into {instance}; now run `flask --app wsgi db upgrade`")
    return notes
