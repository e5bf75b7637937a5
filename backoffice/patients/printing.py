"""The INS as documents print it (invoices, receipted invoices, the paper reproduction).

Only a qualified identity's INS is carried on documents (Référentiel INS: the INS may be used and
shared once the identity is qualified); otherwise documents print nothing about it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from backoffice.patients import nir as nir_rules
from backoffice.patients.models import PatientIns


@dataclass(frozen=True)
class PrintedIns:
    matricule: str  # "1 84 12 76 451 089 46"
    kind: str  # "NIR" | "NIA"
    oid: str


def printed_ins(session: Session, patient_id: str | None) -> PrintedIns | None:
    if not patient_id:
        return None
    row = session.scalar(select(PatientIns).where(PatientIns.patient_id == patient_id))
    if row is None or not row.qualified:
        return None
    return PrintedIns(nir_rules.formatted(row.nir), "NIA" if row.oid == nir_rules.INS_NIA_OID else "NIR", row.oid)
