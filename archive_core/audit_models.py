"""The audit trail's two tables: the hash-chained events and the signed checkpoints of its head.

Writing and checking the chain is :mod:`archive_core.audit`; signing checkpoints and their log
file is :mod:`archive_core.audit_checkpoints`.
"""

from __future__ import annotations

from sqlalchemy import Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from archive_core.db import Base
from archive_core.values import LOCK_AUDIT_CHAIN

# Serialises appends to the chain and checkpoints (PostgreSQL advisory lock; SQLite: BEGIN IMMEDIATE).
CHAIN_LOCK = LOCK_AUDIT_CHAIN


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
