"""The database side of ``archive backup`` and ``archive restore``, one engine each.

SQLite: a copy through its online backup API (consistent while the archive, the web process and the
scheduler keep writing). PostgreSQL: ``pg_dump --format=custom`` of a snapshot exported by the
transaction that also lists the live objects (``pg_export_snapshot``), restored by ``pg_restore``
into an empty database, or beside the old tables moved to another schema. The backup folder, its
manifest and the objects are :mod:`archive_core.backup`.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy.engine import make_url


class BackupError(Exception):
    """A backup or restore that cannot be done; the message says why."""


class NotSupported(BackupError):
    """The configured engine has no backup yet (a database other than SQLite or PostgreSQL)."""



def copy_sqlite(source_path: Path, target_path: Path) -> None:
    """A consistent copy of a live SQLite database (its online backup API), read-only on the source."""
    source = sqlite3.connect(f"file:{source_path}?mode=ro", uri=True)
    try:
        target = sqlite3.connect(target_path)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()


def engine_of(url: str) -> str:
    name = make_url(url).get_backend_name()
    if name not in ("sqlite", "postgresql"):
        raise NotSupported(f"backup of a {name} database is not supported: SQLite and PostgreSQL are")
    return name


def sqlite_path(url: str) -> Path:
    parsed = make_url(url)
    engine_of(url)
    if parsed.get_backend_name() != "sqlite":
        raise BackupError(f"the backup holds a SQLite database; DATABASE_URL names a {parsed.get_backend_name()} one")
    if not parsed.database or parsed.database == ":memory:":
        raise BackupError("the SQLite database is in memory: nothing to back up")
    return Path(parsed.database)


def _pg_tool(name: str) -> str:
    """``pg_dump``/``pg_restore``: on the PATH, else the newest of Debian's /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    if not candidates:
        raise BackupError(f"{name} not found: install PostgreSQL's client tools (postgresql-client)")
    return str(candidates[-1])


def _libpq_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def run_pg(tool: str, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([_pg_tool(tool), *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise BackupError(f"{tool} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done


_LIVE_OBJECTS = "SELECT storage_key, tier, size_bytes, checksum_sha256 FROM instance WHERE deleted_at IS NULL"


def snapshot_postgresql(url: str, target: Path) -> list[tuple]:
    """Dump the database into *target* and list its live objects, both from one snapshot."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    try:
        try:
            conn = engine.connect()
        except OperationalError as exc:
            raise BackupError(f"cannot reach the database {make_url(url).render_as_string()}: "
                              f"{str(exc.orig).strip().splitlines()[0]}") from None
        with conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
                rows = [tuple(r) for r in conn.execute(text(_LIVE_OBJECTS))]
                # The snapshot lives as long as this transaction: pg_dump runs inside it.
                run_pg("pg_dump", "--format=custom", "--no-owner", "--no-privileges", f"--snapshot={snapshot}",
                        f"--file={target}", _libpq_url(url))
    finally:
        engine.dispose()
    return rows


def snapshot_sqlite(url: str, target: Path) -> list[tuple]:
    db_path = sqlite_path(url)
    if not db_path.is_file():
        raise BackupError(f"no database at {db_path}")
    copy_sqlite(db_path, target)
    snapshot = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
    try:
        return snapshot.execute(_LIVE_OBJECTS).fetchall()
    finally:
        snapshot.close()


def restore_postgresql(dump: Path, url: str, *, force: bool) -> list[str]:
    """Load *dump* into the PostgreSQL database *url*. One that holds tables is refused unless
    *force*: then its ``public`` schema is renamed aside (``before_restore_<time>``), never dropped."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    notes = []
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            tables = conn.execute(text(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")).scalar_one()
            if tables and not force:
                raise BackupError(f"the database {make_url(url).render_as_string()} already holds {tables} tables: "
                                  "restore into an empty database, or pass --force to move them aside")
            if tables:
                aside = f"before_restore_{datetime.now(timezone.utc):%Y%m%d%H%M%S}"
                conn.execute(text(f"ALTER SCHEMA public RENAME TO {aside}"))
                conn.execute(text("CREATE SCHEMA public"))
                notes.append(f"the database's previous tables were moved to the schema {aside}")
    finally:
        engine.dispose()
    run_pg("pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "--dbname", _libpq_url(url), str(dump))
    return notes
