"""Hash-chained journals: each entry's hash covers the previous hash and its own fields (audit trail, payments).

A row changed or removed in the middle breaks a link; :func:`holds` is the check :func:`link_hash`
makes possible. The caller owns the transaction; appends are serialised with :func:`lock_chain`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Sequence

from sqlalchemy import select, text
from sqlalchemy.orm import Session

__all__ = ["GENESIS", "head_hash", "holds", "link_hash", "lock_chain"]

GENESIS = "0" * 64  # the previous hash of a chain's first entry


def link_hash(prev_hash: str, fields: Sequence[Any], *, ensure_ascii: bool) -> str:
    """SHA-256 (hex) of *prev_hash* followed by *fields* as compact JSON.

    *ensure_ascii* is part of a chain's format, fixed when its first entry was written (the audit
    trail hashes UTF-8 text, the payment journal ``\\u`` escapes): changing it breaks every stored chain.
    """
    payload = json.dumps(list(fields), ensure_ascii=ensure_ascii, separators=(",", ":"))
    return hashlib.sha256((prev_hash + payload).encode()).hexdigest()


def holds(prev_hash: str, entry: Any, digest: Callable[[str, Any], str]) -> bool:
    """Whether *entry* links to *prev_hash* and its stored hash is what its fields give."""
    return entry.prev_hash == prev_hash and digest(prev_hash, entry) == entry.hash


def head_hash(session: Session, model: Any) -> str:
    """The hash of the chain's last entry (highest id), or :data:`GENESIS` for an empty chain."""
    return session.scalar(select(model.hash).order_by(model.id.desc()).limit(1)) or GENESIS


def lock_chain(session: Session, key: int) -> None:
    """Serialise appends to one chain until the transaction ends (PostgreSQL advisory lock *key*).

    SQLite needs nothing here: its writers take the database lock (``BEGIN IMMEDIATE``).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SELECT pg_advisory_xact_lock({int(key)})"))
