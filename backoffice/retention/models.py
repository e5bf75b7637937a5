"""What the practice records for retention: deaths, legal holds, purge batches and their items."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Boolean, Date, ForeignKey, Index, Integer, BigInteger, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from archive_core.api import Base, UtcDateTime, utcnow

# A batch's life (docs/retention.md): proposed -> approved -> tombstoned -> executed, or rejected while
# proposed; approved -> proposed again when, at execution, anything it names changed since approval.
BATCH_STATUSES = ("proposed", "approved", "tombstoned", "executed", "rejected")
OPEN_STATUSES = ("proposed", "approved", "tombstoned")


class DeathRecord(Base):
    """A patient's date of death, as recorded by staff (audited)."""

    __tablename__ = "retention_death"
    __table_args__ = (UniqueConstraint("patient_id", "issuer_of_patient_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    death_date: Mapped[date] = mapped_column(Date)
    recorded_by: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class LegalHold(Base):
    """A claim or an investigation: nothing of the patient is destroyed while it holds."""

    __tablename__ = "legal_hold"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    reason: Mapped[str] = mapped_column(Text)
    placed_by: Mapped[str] = mapped_column(String(64))
    placed_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    released_by: Mapped[str | None] = mapped_column(String(64))
    released_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class PurgeBatch(Base):
    """Records proposed for destruction; nothing is destroyed before a manager approves."""

    __tablename__ = "purge_batch"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default="retention")  # retention | correction
    status: Mapped[str] = mapped_column(String(16), default="proposed", index=True)
    proposed_by: Mapped[str] = mapped_column(String(64))
    proposed_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    proposal_note: Mapped[str] = mapped_column(Text, default="")
    decided_by: Mapped[str | None] = mapped_column(String(64))
    decided_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    decision_reason: Mapped[str | None] = mapped_column(Text)
    tombstoned_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    executed_by: Mapped[str | None] = mapped_column(String(64))
    executed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    instances: Mapped[int] = mapped_column(Integer, default=0)
    bytes_destroyed: Mapped[int] = mapped_column(BigInteger, default=0)
    certificate_name: Mapped[str | None] = mapped_column(String(255))
    certificate_sha256: Mapped[str | None] = mapped_column(String(64))

    items: Mapped[list["PurgeItem"]] = relationship(back_populates="batch", order_by="PurgeItem.id")


class PurgeItem(Base):
    """One patient's record (kind retention) or one study (kind correction) in a batch."""

    __tablename__ = "purge_item"

    id: Mapped[int] = mapped_column(primary_key=True)
    batch_pk: Mapped[int] = mapped_column(ForeignKey("purge_batch.id"), index=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    study_uid: Mapped[str | None] = mapped_column(String(64))
    basis: Mapped[str] = mapped_column(String(32))
    keep_until: Mapped[date | None] = mapped_column(Date)
    explanation: Mapped[str] = mapped_column(Text)
    # JSON list of what was tombstoned (study UID, date, modalities, instances, bytes, checksums).
    manifest: Mapped[str] = mapped_column(Text, default="[]")
    # JSON of what the approver approved (owner, name, birth date, holds, retention, exams); execution
    # compares today's facts with it. Cleared when the batch is sent back for a new decision.
    approved_facts: Mapped[str | None] = mapped_column(Text)

    batch: Mapped[PurgeBatch] = relationship(back_populates="items")


class RetentionAnswer(Base):
    """The part of a patient's retention answer that does not depend on today, stored so that the
    manager's lists are an indexed query (backoffice/retention/answers.py).

    Computed by :func:`archive_core.retention.decide` (the one rule) whenever the facts change: database
    triggers (migrations 1300_retention_answer, 1320_retention_moves) queue the patient in
    ``retention_stale`` when a study, an image, the patient, a hold or a death record is written, whichever process writes it, and the queue is
    worked off before every read.
    """

    __tablename__ = "retention_answer"
    __table_args__ = (
        # The lists' order (soonest date, then name) and their filters, read from the index alone.
        Index("ix_retention_answer_order", "sort_until", "patient_name", "patient_pk", "needs_review"),
        Index("ix_retention_answer_patient", "patient_id", "issuer_of_patient_id"),
        # Who the sweep moves to the archive tier: active images and a last visit five years old (1320).
        Index("ix_retention_answer_moves", "active_images", "last_visit", "patient_pk"),
        Index("ix_retention_answer_review", "needs_review", "sort_until", "patient_name", "patient_pk"),
    )

    patient_pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    patient_id: Mapped[str] = mapped_column(String(64))
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(324), default="")  # "" when unknown (sorts first)
    keep_until: Mapped[date | None] = mapped_column(Date)
    # keep_until, or 31/12/9999 when it cannot be computed: those come last in every list.
    sort_until: Mapped[date] = mapped_column(Date)
    basis: Mapped[str] = mapped_column(String(32))
    needs_review: Mapped[bool] = mapped_column(Boolean)
    last_visit: Mapped[date | None] = mapped_column(Date)
    # Visible images in the active tier (a fact, not the rule's: instance triggers of migration 1320 queue it).
    active_images: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class RetentionStale(Base):
    """A patient whose facts changed since its :class:`RetentionAnswer` was computed (written by triggers)."""

    __tablename__ = "retention_stale"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_pk: Mapped[int] = mapped_column(Integer)
