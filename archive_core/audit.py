"""The audit trail: one append-only, hash-chained table of DICOM and web events.

Each event hashes the one before it, so a row changed or removed in the middle breaks a link. What
the rows alone cannot show is a chain cut short (the last rows deleted) or rewritten from a changed
row onwards with every hash recomputed. So the head of the chain is anchored outside the rows:
a *checkpoint* (head hash, number of events, last event id, time, previous checkpoint's MAC) is
signed with HMAC-SHA256 under a key kept outside the database (``AUDIT_SIGNING_KEY_FILE``), stored
in ``audit_checkpoint`` and appended, fsynced, to a log file outside the database
(``AUDIT_CHECKPOINT_LOG``). :func:`verify` checks the chain against every checkpoint of both copies.
The tables are :mod:`archive_core.audit_models`; signing and the log, :mod:`archive_core.audit_checkpoints`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable, Iterator

from sqlalchemy import Engine, insert, select, text
from sqlalchemy.orm import Session

from archive_core.audit_checkpoints import CheckpointKeyMissing, check_checkpoints, checkpoint, load_key
from archive_core.audit_models import CHAIN_LOCK, AuditEvent
from archive_core.db import write_session
from archive_core.hashchain import GENESIS, head_hash, holds, link_hash, lock_chain

if TYPE_CHECKING:
    from archive_core.config import Settings


@dataclass(frozen=True)
class ChainReport:
    checked: int
    first_bad_id: int | None
    problems: tuple[str, ...] = ()  # each says what is wrong and where (event ids, checkpoint numbers)
    checkpoints: int = 0  # signed checkpoints checked
    anchored_up_to: int = 0  # the last event id a valid checkpoint vouches for
    notes: tuple[str, ...] = field(default=())  # not failures (e.g. events after the last checkpoint)

    @property
    def ok(self) -> bool:
        return self.first_bad_id is None and not self.problems


def _digest(prev_hash: str, e: AuditEvent) -> str:
    return link_hash(prev_hash, [e.at, e.actor, e.actor_kind, e.action, e.patient_id, e.study_uid, e.detail],
                     ensure_ascii=False)


def _linked_row(prev: str, action: str, actor: str, actor_kind: str = "user", patient_id: str | None = None,
                study_uid: str | None = None, detail: dict[str, Any] | None = None) -> dict[str, Any]:
    """One event's column values, stamped now and linked to *prev* (its hash included): what
    :func:`record`, :func:`append_now` and :func:`record_many` each write."""
    row = SimpleNamespace(at=datetime.now(timezone.utc).isoformat(timespec="microseconds"), actor=actor,
                          actor_kind=actor_kind, action=action, patient_id=patient_id, study_uid=study_uid,
                          detail=json.dumps(detail or {}, ensure_ascii=False, sort_keys=True), prev_hash=prev)
    row.hash = _digest(prev, row)
    return vars(row)


def record(
    session: Session,
    action: str,
    *,
    actor: str,
    actor_kind: str = "user",
    patient_id: str | None = None,
    study_uid: str | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event; the caller owns the transaction (on SQLite, a ``write_session``)."""
    lock_chain(session, CHAIN_LOCK)  # each event hashes the one before it
    event = AuditEvent(**_linked_row(head_hash(session, AuditEvent), action, actor, actor_kind, patient_id,
                                     study_uid, detail))
    session.add(event)
    session.flush()
    return event


# Built once: a statement object caches its compiled form, one built per call is compiled-cache-keyed each time.
_HEAD = select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)
_INSERT = insert(AuditEvent)
_PG_LOCK = text(f"SELECT pg_advisory_xact_lock({int(CHAIN_LOCK)})")  # lock_chain's statement
# The same two statements for SQLite's own driver (pysqlite), with the model's table and column names.
_COLUMNS = ("at", "actor", "actor_kind", "action", "patient_id", "study_uid", "detail", "prev_hash", "hash")
_TABLE = AuditEvent.__table__
_SQLITE_HEAD = f"SELECT {_TABLE.c.hash.name} FROM {_TABLE.name} ORDER BY {_TABLE.c.id.name} DESC LIMIT 1"
_SQLITE_INSERT = (f"INSERT INTO {_TABLE.name} ({', '.join(_TABLE.c[c].name for c in _COLUMNS)}) "
                  f"VALUES ({', '.join('?' * len(_COLUMNS))})")


def append_now(
    engine: Engine,
    action: str,
    *,
    actor: str,
    actor_kind: str = "user",
    patient_id: str | None = None,
    study_uid: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one event in a short write transaction of its own, committed (durable) when this returns:
    the same row and hash as :func:`record`. Every DICOMweb request and viewed page writes one (see
    :func:`append_many_now`)."""
    append_many_now(engine, [{"action": action, "actor": actor, "actor_kind": actor_kind, "patient_id": patient_id,
                              "study_uid": study_uid, "detail": detail}])


def append_many_now(engine: Engine, events: list[dict[str, Any]]) -> None:
    """Append *events* in this order (each a dict of :func:`record`'s arguments) in one short write
    transaction of its own, committed (durable) when this returns: the same rows and hashes as
    :func:`record` called for each.

    No ORM session: on SQLite, four statements on the pooled connection's own driver (``BEGIN
    IMMEDIATE``, the writers' lock that serialises the chain; the head; the inserts; ``COMMIT``, the
    WAL's fsync under ``synchronous=FULL``); on PostgreSQL, Core statements under the chain's advisory
    lock. The ORM's unit of work, and then SQLAlchemy's execution machinery per statement, were most
    of an access record's CPU, which every request of the web process pays while it holds the GIL.
    """
    if not events:
        return
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            _append_sqlite(conn.connection.driver_connection, events)
            return
        with conn.begin():
            conn.execute(_PG_LOCK)
            conn.execute(_INSERT, _linked_rows(conn.scalar(_HEAD) or GENESIS, events))


def _linked_rows(prev: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for e in events:
        row = _linked_row(prev, e["action"], e["actor"], e.get("actor_kind", "user"), e.get("patient_id"),
                          e.get("study_uid"), e.get("detail"))
        prev = row["hash"]
        rows.append(row)
    return rows


def _append_sqlite(driver, events: list[dict[str, Any]]) -> None:
    """*events* appended on a pysqlite connection in autocommit mode (the engine's, see archive_core.db)."""
    cursor = driver.cursor()
    try:
        cursor.execute("BEGIN IMMEDIATE")
        try:
            head = cursor.execute(_SQLITE_HEAD).fetchone()
            rows = _linked_rows(head[0] if head else GENESIS, events)
            cursor.executemany(_SQLITE_INSERT, [tuple(row[c] for c in _COLUMNS) for row in rows])
            cursor.execute("COMMIT")
        except BaseException:
            if driver.in_transaction:
                cursor.execute("ROLLBACK")
            raise
    finally:
        cursor.close()


def record_many(session: Session, events: list[dict[str, Any]]) -> None:
    """Append *events* in this order (each a dict of :func:`record`'s arguments: action, actor,
    actor_kind, patient_id, study_uid, detail) with one read of the chain's head and one
    multi-row insert: the same rows and hashes as :func:`record` called for each, without the
    ORM's unit of work per event, in the caller's transaction (a multi-study retrieve's events, written
    with what else it records). Without a transaction of the caller: :func:`append_many_now`."""
    if not events:
        return
    lock_chain(session, CHAIN_LOCK)
    session.execute(insert(AuditEvent), _linked_rows(head_hash(session, AuditEvent), events))


def verify(session: Session, key_path: Path | None = None, log_path: Path | None = None) -> ChainReport:
    """Recompute the chain and hold it against every signed checkpoint.

    Reported: the first event whose hash or link does not hold (a row changed or deleted in the
    middle), a checkpoint whose event is gone or whose head or count differ (the chain cut short,
    or rewritten with its hashes recomputed: the range between two checkpoints is named), and any
    checkpoint changed, deleted or unsigned in the table or the log. Without *key_path*, only the
    chain is checked.
    """
    problems: list[str] = []
    checkpoints: list[dict[str, Any]] = []
    if key_path is not None and log_path is not None:
        try:
            key = load_key(key_path)
        except CheckpointKeyMissing as exc:
            key, problems = None, [str(exc)]
        if key is not None or not problems:
            checkpoints, found = check_checkpoints(session, key, key_path, log_path)
            problems.extend(found)
    by_event: dict[int, list[dict[str, Any]]] = {}
    for c in checkpoints:
        by_event.setdefault(int(c["last_event_id"]), []).append(c)
    pending = sorted(by_event)  # checkpoint event ids not reached yet
    prev = GENESIS
    checked = 0
    first_bad: int | None = None
    anchored = 0  # the last event id a checkpoint confirmed
    last_id = 0
    events = session.scalars(select(AuditEvent).order_by(AuditEvent.id).execution_options(yield_per=1000))

    def reached(upto_id: int, head: str, count: int) -> None:
        """Hold the chain at event *upto_id* against the checkpoints that name it."""
        nonlocal anchored, first_bad
        for c in by_event.pop(upto_id, []):
            if c["head_hash"] != head or c["event_count"] != count:
                what = ("events were deleted" if c["event_count"] > count else
                        "events were added" if c["event_count"] < count else "events were rewritten")
                problems.append(
                    f"checkpoint {c['id']} (signed {c['at']}) vouches for {c['event_count']} events up to event "
                    f"{upto_id} with head {c['head_hash'][:12]}…; the table now has {count} with head {head[:12]}…: "
                    f"{what} between event {anchored + 1} and event {upto_id}")
                if first_bad is None:
                    first_bad = anchored + 1
            else:
                anchored = upto_id

    if pending and pending[0] == 0:  # a checkpoint of the empty chain
        pending.pop(0)
        reached(0, GENESIS, 0)
    broken = False
    try:
        for event in events:
            while pending and pending[0] < event.id:  # a checkpointed event is gone
                missing = pending.pop(0)
                for c in by_event.pop(missing, []):
                    problems.append(f"event {missing} is missing (checkpoint {c['id']} signed {c['at']} ends there): "
                                    f"events between {last_id + 1} and {missing} were deleted")
                if first_bad is None:
                    first_bad = last_id + 1
            if not holds(prev, event, _digest):
                if first_bad is None or first_bad > event.id:
                    first_bad = event.id
                problems.append(f"event {event.id} does not hold: its hash or its link to event {last_id or '-'} was "
                                "changed (an event before it deleted, or this one edited)")
                broken = True
                break
            prev = event.hash
            checked += 1
            last_id = event.id
            if pending and pending[0] == event.id:
                pending.pop(0)
                reached(event.id, event.hash, checked)
    finally:
        events.close()  # a server-side cursor (PostgreSQL) left open on an early return
    if not broken:
        for missing in pending:
            for c in by_event.pop(missing, []):
                problems.append(f"events {last_id + 1} to {missing} are missing: checkpoint {c['id']} (signed "
                                f"{c['at']}) vouches for {c['event_count']} events up to event {missing}, the table "
                                f"ends at event {last_id or 'none'} (the trail was cut short)")
                if first_bad is None:
                    first_bad = last_id + 1
    notes: list[str] = []
    if checkpoints and not problems and last_id > anchored:
        notes.append(f"events {anchored + 1} to {last_id} are after the last checkpoint (not yet anchored)")
    return ChainReport(checked, first_bad, tuple(problems), len(checkpoints), anchored, tuple(notes))


def verify_instance(sessions: Callable[[], Session], settings: Settings) -> ChainReport:
    """:func:`verify` with the instance's signing key and checkpoint log, in a read-only session of its own."""
    with sessions() as s:
        try:
            return verify(s, settings.audit_signing_key_file, settings.audit_checkpoint_log)
        finally:
            s.rollback()


def checkpoint_instance(sessions: Callable[[], Session], settings: Settings, *, reason: str = "periodic",
                        force: bool = False) -> int | None:
    """:func:`checkpoint` in a write transaction of its own: the checkpoint's number, or None (nothing new)."""
    with write_session(sessions) as s:
        row = checkpoint(s, settings.audit_signing_key_file, settings.audit_checkpoint_log, reason=reason, force=force)
        return row.id if row is not None else None


# -- reading the trail ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditEntry:
    """One event of the trail as the audit page and its CSV export show it (*at*: UTC ISO 8601 text)."""

    id: int
    at: str
    actor: str
    actor_kind: str
    action: str
    patient_id: str | None
    study_uid: str | None
    detail: str
    hash: str


def _stamp(moment: datetime) -> str:
    """*moment* as the text events store in ``at`` (so that comparing texts compares instants)."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def search(session: Session, *, patient_id: str | None = None, actor: str | None = None, action: str | None = None,
           since: datetime | None = None, before: datetime | None = None,
           limit: int | None = None) -> Iterator[AuditEntry]:
    """Events matching every criterion given, newest first (*since* included, *before* excluded), streamed."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc())
    if patient_id:
        query = query.where(AuditEvent.patient_id == patient_id)
    if actor:
        query = query.where(AuditEvent.actor == actor)
    if action:
        query = query.where(AuditEvent.action == action)
    if since is not None:
        query = query.where(AuditEvent.at >= _stamp(since))
    if before is not None:
        query = query.where(AuditEvent.at < _stamp(before))
    if limit is not None:
        query = query.limit(limit)
    for e in session.scalars(query.execution_options(yield_per=1000)):
        yield AuditEntry(e.id, e.at, e.actor, e.actor_kind, e.action, e.patient_id, e.study_uid, e.detail, e.hash)


def actions(session: Session) -> list[str]:
    """The actions the trail holds (each once)."""
    return list(session.scalars(select(AuditEvent.action).distinct()))
