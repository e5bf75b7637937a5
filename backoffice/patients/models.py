"""What the back-office knows about a patient beyond the images: the INS (identifiant national de
santé) with how the identity was checked, and the patient's legal guardians."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Index, String, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from archive_core.api import Base, UtcDateTime, utcnow


class PatientIns(Base):
    """A patient's INS: the matricule (NIR or NIA, validated with its key), the OID of its kind, the
    identity document the desk checked (who, when) and whether the identity is qualified.

    Qualified ("identité qualifiée") means the INS was confirmed by the INSi teleservice AND the
    identity checked on a high-trust document; this software does not call INSi: ``qualified`` is
    the desk's statement that INSi was consulted (in the practice's INSi-enabled software), and it is
    refused without a recorded document check.
    """

    __tablename__ = "patient_ins"
    __table_args__ = (UniqueConstraint("patient_id", name="uq_patient_ins_patient_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    nir: Mapped[str] = mapped_column(String(15))
    oid: Mapped[str] = mapped_column(String(64))
    qualified: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    recorded_by: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    document: Mapped[str | None] = mapped_column(String(32))  # a key of views.DOCUMENTS; None: not checked
    verified_by: Mapped[str | None] = mapped_column(String(64))
    verified_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class PatientGuardian(Base):
    """A legal representative of a minor or a protected adult. Ended rather than deleted."""

    __tablename__ = "patient_guardian"
    __table_args__ = (Index("ix_patient_guardian_patient_id", "patient_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))  # as typed: "DUPRÉ Anne"
    relationship: Mapped[str] = mapped_column(String(16))  # a key of views.RELATIONSHIPS
    phone: Mapped[str] = mapped_column(String(32))
    recorded_by: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    ended_by: Mapped[str | None] = mapped_column(String(64))
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
