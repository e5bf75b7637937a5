"""The audit trail: one append-only, hash-chained table of DICOM and web events.

Each event hashes the one before it, so a row changed or removed in the middle breaks a link. What
the rows alone cannot show is a chain cut short (the last rows deleted) or rewritten from a changed
row onwards with every hash recomputed. So the head of the chain is anchored outside the rows:
a *checkpoint* (head hash, number of events, last event id, time, previous checkpoint's MAC) is
signed with HMAC-SHA256 under a key kept outside the database (``AUDIT_SIGNING_KEY_FILE``), stored
in ``audit_checkpoint`` and appended, fsynced, to a log file outside the database
(``AUDIT_CHECKPOINT_LOG``). :func:`verify` checks the chain against every checkpoint of both copies.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable, Iterator

from sqlalchemy import Integer, String, Text, func, insert, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from archive_core.db import Base, write_session
from archive_core.hashchain import GENESIS, head_hash, holds, link_hash, lock_chain
from archive_core.values import LOCK_AUDIT_CHAIN

if TYPE_CHECKING:
    from archive_core.config import Settings

# Serialises appends to the chain and checkpoints (PostgreSQL advisory lock; SQLite: BEGIN IMMEDIATE).
CHAIN_LOCK = LOCK_AUDIT_CHAIN

log = logging.getLogger(__name__)


class AuditEvent(Base):
    __tablename__ = "audit_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[str] = mapped_column(String(32), index=True)  # UTC, ISO 8601, as hashed
    actor: Mapped[str] = mapped_column(String(64), index=True)  # a login, an AE title or "system"
    actor_kind: Mapped[str] = mapped_column(String(16))  # user | ae | system | share_link
    action: Mapped[str] = mapped_column(String(64), index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    study_uid: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """A signed statement of the chain's head; the same line is in the checkpoint log file."""

    __tablename__ = "audit_checkpoint"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)  # the checkpoint's number
    at: Mapped[str] = mapped_column(String(32))
    last_event_id: Mapped[int] = mapped_column(Integer)
    event_count: Mapped[int] = mapped_column(Integer)
    head_hash: Mapped[str] = mapped_column(String(64))
    prev_mac: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(32))
    mac: Mapped[str] = mapped_column(String(64))


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
    prev = head_hash(session, AuditEvent)
    event = AuditEvent(
        at=datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        actor=actor,
        actor_kind=actor_kind,
        action=action,
        patient_id=patient_id,
        study_uid=study_uid,
        detail=json.dumps(detail or {}, ensure_ascii=False, sort_keys=True),
        prev_hash=prev,
    )
    event.hash = _digest(prev, event)
    session.add(event)
    session.flush()
    return event


def record_many(session: Session, events: list[dict[str, Any]]) -> None:
    """Append *events* in this order (each a dict of :func:`record`'s arguments: action, actor,
    actor_kind, patient_id, study_uid, detail) with one read of the chain's head and one
    multi-row insert: the same rows and hashes as :func:`record` called for each, without the
    ORM's unit of work per event (the C-FIND audit writer appends a batch per transaction)."""
    if not events:
        return
    lock_chain(session, CHAIN_LOCK)
    prev = head_hash(session, AuditEvent)
    rows = []
    for e in events:
        row = SimpleNamespace(
            at=datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            actor=e["actor"],
            actor_kind=e.get("actor_kind", "user"),
            action=e["action"],
            patient_id=e.get("patient_id"),
            study_uid=e.get("study_uid"),
            detail=json.dumps(e.get("detail") or {}, ensure_ascii=False, sort_keys=True),
            prev_hash=prev,
        )
        row.hash = prev = _digest(row.prev_hash, row)
        rows.append(vars(row))
    session.execute(insert(AuditEvent), rows)


# -- checkpoints ---------------------------------------------------------------------------------------


class CheckpointKeyMissing(RuntimeError):
    """Checkpoints exist but the signing key cannot be read: they cannot be checked."""


def load_key(path: Path, *, create: bool = False) -> bytes | None:
    """The signing key at *path*; created (32 random bytes, hex, mode 0600) when *create* and absent."""
    try:
        raw = path.read_text().strip()
    except FileNotFoundError:
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it meanwhile
            return load_key(path)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
            out.flush()
            os.fsync(out.fileno())
        _fsync_dir(path.parent)
        log.info("audit signing key created at %s", path)
        return load_key(path)
    if len(raw) < 32:
        raise CheckpointKeyMissing(f"the audit signing key at {path} is too short")
    return raw.encode()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _signed_fields(number: int, at: str, last_event_id: int, event_count: int, head_hash: str, prev_mac: str,
                   reason: str) -> bytes:
    return json.dumps(["archivage-audit-checkpoint-v1", number, at, last_event_id, event_count, head_hash, prev_mac,
                       reason], separators=(",", ":")).encode()


def _mac(key: bytes, c: dict[str, Any]) -> str:
    message = _signed_fields(c["id"], c["at"], c["last_event_id"], c["event_count"], c["head_hash"], c["prev_mac"],
                             c["reason"])
    return hmac.new(key, message, hashlib.sha256).hexdigest()


_FIELDS = ("id", "at", "last_event_id", "event_count", "head_hash", "prev_mac", "reason", "mac")


def _as_dict(row: AuditCheckpoint) -> dict[str, Any]:
    return {name: getattr(row, name) for name in _FIELDS}


def checkpoint(session: Session, key_path: Path, log_path: Path, *, reason: str = "periodic",
               force: bool = False) -> AuditCheckpoint | None:
    """Sign the chain's current head; None when nothing was appended since the last checkpoint (idempotent).

    The caller commits *session* (a ``write_session``). The log line is written and fsynced before
    that commit: a crash in between leaves a signed line the database lacks, which the next
    checkpoint copies back into the table (it is signed, so it is genuine).
    """
    lock_chain(session, CHAIN_LOCK)
    key = load_key(key_path, create=True)
    with _locked_log(log_path) as handle:
        logged = _read_log_lines(handle)
        known = set(session.scalars(select(AuditCheckpoint.id)))
        for line in logged:  # lines whose commit a crash prevented: restore them if they are signed
            if (isinstance(line, dict) and line.get("id") not in known
                    and hmac.compare_digest(_mac(key, line), str(line["mac"]))):
                session.add(AuditCheckpoint(**{k: line[k] for k in _FIELDS}))
                known.add(line["id"])
        session.flush()
        last = session.scalar(select(AuditCheckpoint).order_by(AuditCheckpoint.id.desc()).limit(1))
        head = session.execute(select(AuditEvent.id, AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)).first()
        head_id, head_hash = (head.id, head.hash) if head else (0, GENESIS)
        if last is not None and last.last_event_id == head_id and last.head_hash == head_hash and not force:
            return None
        count = session.scalar(select(func.count(AuditEvent.id)).where(AuditEvent.id <= head_id)) or 0
        values = {
            "id": (last.id + 1) if last else 1,
            "at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            "last_event_id": head_id,
            "event_count": count,
            "head_hash": head_hash,
            "prev_mac": last.mac if last else GENESIS,
            "reason": reason,
        }
        values["mac"] = _mac(key, values)
        row = AuditCheckpoint(**values)
        session.add(row)
        session.flush()
        handle.seek(0, os.SEEK_END)
        handle.write((json.dumps(values, separators=(",", ":"), sort_keys=True) + "\n").encode())
        handle.flush()
        os.fsync(handle.fileno())
    log.info("audit checkpoint %d: %d events up to event %d", values["id"], count, head_id)
    return row


class _locked_log:
    """The checkpoint log opened for append under an exclusive lock (one checkpoint writer at a time)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self.handle = os.fdopen(fd, "r+b")
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        if created:
            _fsync_dir(self.path.parent)
        return self.handle

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _read_log_lines(handle) -> list[dict[str, Any] | str]:
    """Parsed lines of the checkpoint log; a line that is not a checkpoint stays as its text."""
    handle.seek(0)
    out: list[dict[str, Any] | str] = []
    for raw in handle.read().decode("utf-8", "replace").splitlines():
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            out.append(raw)
            continue
        if isinstance(line, dict) and set(_FIELDS) <= set(line):
            out.append(line)
        else:
            out.append(raw)
    return out


def _check_checkpoints(session: Session, key: bytes | None, key_path: Path,
                       log_path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The valid checkpoints (log order) and what is wrong with the log, the table or their agreement."""
    problems: list[str] = []
    table = {row.id: _as_dict(row) for row in session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.id))}
    lines: list[dict[str, Any] | str] = []
    if log_path.exists():
        with open(log_path, "rb") as handle:
            lines = _read_log_lines(handle)
    if key is None:
        if table or lines:
            problems.append(f"the audit signing key is missing ({key_path}): the {max(len(table), len(lines))} "
                            "checkpoints cannot be checked")
        return [], problems
    if not lines and not table:
        problems.append(f"the audit signing key exists ({key_path}) but there is no checkpoint at all, in the "
                        f"database or in {log_path}: the checkpoints were deleted")
        return [], problems
    valid: list[dict[str, Any]] = []
    expected_number, prev_mac = 1, GENESIS
    for n, line in enumerate(lines, 1):
        if not isinstance(line, dict):
            problems.append(f"{log_path} line {n} is not a checkpoint")
            continue
        if not hmac.compare_digest(_mac(key, line), str(line["mac"])):
            problems.append(f"checkpoint {line.get('id')} in {log_path} (line {n}) has a bad signature: "
                            "it was changed without the key")
            continue
        if line["id"] != expected_number or line["prev_mac"] != prev_mac:
            problems.append(f"checkpoint log {log_path}: checkpoints {expected_number} to {int(line['id']) - 1} "
                            f"are missing before line {n} (lines deleted)")
        expected_number, prev_mac = int(line["id"]) + 1, line["mac"]
        valid.append(line)
    logged = {line["id"]: line for line in valid}
    for number, row in table.items():
        if not hmac.compare_digest(_mac(key, row), str(row["mac"])):
            problems.append(f"checkpoint {number} in the database (audit_checkpoint) has a bad signature: it was "
                            "changed without the key")
        elif number not in logged:
            problems.append(f"checkpoint {number} (signed {row['at']}, {row['event_count']} events up to event "
                            f"{row['last_event_id']}) is in the database but not in {log_path}: log lines deleted")
            valid.append(row)
        elif logged[number] != row:
            problems.append(f"checkpoint {number} differs between the database and {log_path}")
    for number in sorted(set(logged) - set(table)):
        problems.append(f"checkpoint {number} is in {log_path} but not in the database (audit_checkpoint rows "
                        "deleted, or a crash before its commit: the next checkpoint restores it)")
    valid.sort(key=lambda c: c["id"])
    return valid, problems


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
            checkpoints, found = _check_checkpoints(session, key, key_path, log_path)
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
