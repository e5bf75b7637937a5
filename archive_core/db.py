"""The database: one declarative base, engines tuned per backend, and transaction helpers."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from datetime import datetime, timezone

from sqlalchemy import DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from archive_core.values import as_utc

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """The one declarative base of the archive and the back-office."""

    metadata = MetaData(naming_convention=NAMING)


class UtcDateTime(TypeDecorator):
    """A ``DateTime(timezone=True)`` column that gives back aware UTC datetimes on every backend.

    SQLite keeps no zone and hands stored instants back naive; PostgreSQL answers in the session's
    zone. Instants are written in UTC (a naive value is taken as UTC) and read back in UTC, so no
    caller repairs what it reads. Same column type in the schema: no migration.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        # Anything but a datetime (a date compared in a filter) goes to the driver as it was.
        return as_utc(value).astimezone(timezone.utc) if isinstance(value, datetime) else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return as_utc(value).astimezone(timezone.utc) if value is not None else None


def make_engine(url: str, **kwargs) -> Engine:
    """An engine for *url*; SQLite gets WAL, a busy timeout and explicit ``BEGIN`` handling."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)
        _tune_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def _tune_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling defers BEGIN and cannot take the write lock up front;
    # we emit BEGIN ourselves so that writers that must serialise can ask for BEGIN IMMEDIATE.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def write_session(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose transaction takes the write lock at its start (SQLite), committed on success.

    Use it where concurrent writers must serialise (numbering, the audit chain): on SQLite a
    deferred transaction that reads then writes can fail with "database is locked" instead of waiting.
    """
    session = factory()
    try:
        if session.get_bind().dialect.name == "sqlite":
            session.connection(execution_options={"sqlite_immediate": True})
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def read_session(factory: sessionmaker[Session]) -> Iterator[Session]:
    session = factory()
    try:
        yield session
    finally:
        session.rollback()
        session.close()
