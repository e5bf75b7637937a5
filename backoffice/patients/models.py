"""What the back-office knows about a patient beyond the images: the INS (identifiant national de santé)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, String, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from archive_core.api import Base, utcnow


class PatientIns(Base):
    """A patient's INS: the NIR (validated with its key), the OID of its kind and whether the
    identity was qualified (checked against the INSi service and an identity document)."""

    __tablename__ = "patient_ins"
    __table_args__ = (UniqueConstraint("patient_id", name="uq_patient_ins_patient_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    nir: Mapped[str] = mapped_column(String(15))
    oid: Mapped[str] = mapped_column(String(64))
    qualified: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    recorded_by: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
