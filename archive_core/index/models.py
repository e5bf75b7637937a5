"""Typed SQLAlchemy models of the DICOM information model the archive indexes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from archive_core.db import Base
from archive_core.values import utcnow


class Patient(Base):
    __tablename__ = "patient"
    __table_args__ = (UniqueConstraint("patient_id", "issuer_of_patient_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str | None] = mapped_column(String(324), index=True)
    # Upper-case, accent-free copy that C-FIND matches on (same result on SQLite and PostgreSQL).
    patient_name_search: Mapped[str | None] = mapped_column(String(324), index=True)
    # Ideographic and phonetic component groups (NFC, upper case), matched on their own.
    patient_name_ideographic: Mapped[str | None] = mapped_column(String(324), index=True)
    patient_name_phonetic: Mapped[str | None] = mapped_column(String(324), index=True)
    patient_birth_date: Mapped[str | None] = mapped_column(String(8), index=True)  # the patient search
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Tombstone (retention purge, merge): set rows are invisible; every query filters deleted_at IS NULL.
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    merged_into_pk: Mapped[int | None] = mapped_column(Integer)

    studies: Mapped[list["Study"]] = relationship(back_populates="patient")
    # The words of the folded name, for the patient search (kept in step by patient_search.py).
    name_tokens: Mapped[list["PatientNameToken"]] = relationship(cascade="all, delete-orphan")


class PatientNameToken(Base):
    """One word of a patient's folded name (``DUPRE^JEAN-FRANCOIS``: DUPRE, JEAN, FRANCOIS)."""

    __tablename__ = "patient_name_token"

    patient_pk: Mapped[int] = mapped_column(ForeignKey("patient.id", ondelete="CASCADE"), primary_key=True)
    token: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class Study(Base):
    __tablename__ = "study"
    # The dashboard's studies per modality per week, from the index alone (migration 1310).
    __table_args__ = (Index("ix_study_deleted_at_study_date", "deleted_at", "study_date", "external",
                            "modalities_in_study"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    study_date: Mapped[str | None] = mapped_column(String(8), index=True)
    study_time: Mapped[str | None] = mapped_column(String(16))
    # HHMMSS.ffffff, so that time ranges compare at any precision.
    study_time_norm: Mapped[str | None] = mapped_column(String(13))
    accession_number: Mapped[str | None] = mapped_column(String(16), index=True)
    study_id: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(64))
    referring_physician_name: Mapped[str | None] = mapped_column(String(324))
    referring_physician_name_search: Mapped[str | None] = mapped_column(String(324))
    referring_physician_name_ideographic: Mapped[str | None] = mapped_column(String(324))
    referring_physician_name_phonetic: Mapped[str | None] = mapped_column(String(324))
    modalities_in_study: Mapped[str] = mapped_column(String(128), default="")
    num_series: Mapped[int] = mapped_column(Integer, default=0)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    # An outside prior (imported with --external or sent by a peer registered as external)
    # is not a visit to the practice.
    external: Mapped[bool] = mapped_column(Boolean, default=False)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)  # tombstone

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list["Series"]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    modality: Mapped[str | None] = mapped_column(String(16), index=True)
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(64))
    body_part_examined: Mapped[str | None] = mapped_column(String(16))
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # tombstone

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list["Instance"]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instance"
    # The dashboard's storage per tier and growth, from the index alone (migration 1310).
    __table_args__ = (Index("ix_instance_deleted_at_tier_size", "deleted_at", "tier", "size_bytes"),
                      Index("ix_instance_deleted_at_received_size", "deleted_at", "received_at", "size_bytes"))

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    image_rows: Mapped[int | None] = mapped_column(Integer)  # Rows, Columns, Number of Frames: C-FIND answers
    image_columns: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # SHA-256 of the dataset bytes as received (the file meta header is ours, not the sender's).
    checksum_sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(255))
    # "active" (STORAGE_URL) or "archive" (ARCHIVE_TIER_STORAGE_URL): which store holds the file.
    tier: Mapped[str] = mapped_column(String(16), default="active")
    source_ae: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)  # tombstone

    series: Mapped[Series] = relationship(back_populates="instances")


class Peer(Base):
    """A registered DICOM application entity: a modality, a workstation or another archive."""

    __tablename__ = "peer"

    id: Mapped[int] = mapped_column(primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    # Studies sent by an external peer are outside priors, not visits to the practice.
    external: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Where its associations may come from besides HOST: an address or a network (CIDR).
    allowed_from: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Our associations to it use DICOM TLS; its own must come in over the TLS port.
    tls: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
