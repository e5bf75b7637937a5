"""Signed checkpoints of the audit chain's head (see :mod:`archive_core.audit` for why).

A checkpoint (head hash, number of events, last event id, time, previous checkpoint's MAC) is signed
with HMAC-SHA256 under a key kept outside the database (``AUDIT_SIGNING_KEY_FILE``), stored in
``audit_checkpoint`` and appended, fsynced, to a log file outside the database
(``AUDIT_CHECKPOINT_LOG``). :func:`check_checkpoints` holds the two copies against each other and the
key; :func:`archive_core.audit.verify` holds the chain against what they vouch for.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from archive_core.audit_models import CHAIN_LOCK, AuditCheckpoint, AuditEvent
from archive_core.hashchain import GENESIS, lock_chain

log = logging.getLogger(__name__)



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


def check_checkpoints(session: Session, key: bytes | None, key_path: Path,
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
