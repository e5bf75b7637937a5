"""Radiology records: reports (comptes rendus) and their versions, key images, share links, send jobs."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from archive_core.api import Base, UtcDateTime, utcnow

REPORT_STATUSES = ("draft", "signed")


class Report(Base):
    """One version of a study's report; a signed version is frozen (a database trigger refuses changes)."""

    __tablename__ = "radiology_report"
    __table_args__ = (UniqueConstraint("study_uid", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="draft")
    indication: Mapped[str] = mapped_column(Text, default="")
    technique: Mapped[str] = mapped_column(Text, default="")
    findings: Mapped[str] = mapped_column(Text, default="")
    conclusion: Mapped[str] = mapped_column(Text, default="")
    author: Mapped[str] = mapped_column(String(64))
    amends_id: Mapped[int | None] = mapped_column(ForeignKey("radiology_report.id"))
    amendment_reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    signed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    signed_by: Mapped[str | None] = mapped_column(String(64))
    # The signer's full name and RPPS as they were at signing (migration 1030): renaming the account later
    # does not change a signed report.
    signer_name: Mapped[str | None] = mapped_column(String(200))
    signer_rpps: Mapped[str | None] = mapped_column(String(11))


class KeyImage(Base):
    """An image chosen for the paper reproduction, with the window it is to be printed with."""

    __tablename__ = "radiology_key_image"
    __table_args__ = (Index("ix_radiology_key_image_study", "study_uid", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    frame: Mapped[int] = mapped_column(Integer, default=0)
    window_center: Mapped[float | None] = mapped_column(Float)
    window_width: Mapped[float | None] = mapped_column(Float)
    position: Mapped[int] = mapped_column(Integer, default=0)
    chosen_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ShareLink(Base):
    """A referring doctor's read-only access to one study: secret token in the URL, one-time code apart."""

    __tablename__ = "radiology_share_link"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    code_hash: Mapped[str] = mapped_column(String(64))
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    recipient: Mapped[str] = mapped_column(String(128), default="")
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    code_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    failed_codes: Mapped[int] = mapped_column(Integer, default=0)
    # The patient's earlier studies too (DICOMweb access), when the radiologist says so.
    include_priors: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")


class SendJob(Base):
    """A study (and chosen priors) sent to a registered workstation, in the background."""

    __tablename__ = "radiology_send_job"

    id: Mapped[int] = mapped_column(primary_key=True)
    peer_ae_title: Mapped[str] = mapped_column(String(16))
    study_uids: Mapped[str] = mapped_column(Text)  # backslash-separated, the main study first
    reason: Mapped[str] = mapped_column(String(16), default="manual")  # manual | prefetch
    # A prefetch runs once per (new study, workstation): the study that triggered it.
    trigger_study_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    # queued | running | done (every C-STORE answered 0x0000) | failed
    status: Mapped[str] = mapped_column(String(16), default="queued")
    total: Mapped[int] = mapped_column(Integer, default=0)
    sent: Mapped[int] = mapped_column(Integer, default=0)  # answered success (0x0000)
    failed: Mapped[int] = mapped_column(Integer, default=0)  # anything else, warnings included
    message: Mapped[str] = mapped_column(Text, default="")
    requested_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class SendFailure(Base):
    """One instance of a send job that the workstation did not store as sent: its answer, kept as given."""

    __tablename__ = "radiology_send_failure"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("radiology_send_job.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    status: Mapped[int | None] = mapped_column(Integer)  # the C-STORE status; None when nothing answered
    comment: Mapped[str] = mapped_column(Text, default="")  # the peer's Error Comment, or why nothing was sent
