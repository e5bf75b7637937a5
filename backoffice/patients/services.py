"""One patient, gathered from every area through their own services and the archive facade."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from archive_core.api import ArchiveFacade, StudySummary
from archive_core.values import parse_da
from backoffice.billing import base as billing_base
from backoffice.billing import services as billing
from backoffice.billing.models import ExamGroup, Invoice, Membership
from backoffice.patients import nir as nir_rules
from backoffice.patients.models import PatientGuardian, PatientIns
from backoffice.radiology import services as radiology
from backoffice.retention import decisions as retention
from backoffice.retention.errors import RetentionError


class UnknownPatient(LookupError):
    """Neither the archive nor the desk knows this patient ID."""


@dataclass(frozen=True)
class Identity:
    patient_id: str
    name: str | None  # DICOM form, shown with the ``person`` filter
    birth_date: str | None  # DICOM DA
    sex: str | None


@dataclass(frozen=True)
class MembershipRow:
    membership: Membership
    current: bool


@dataclass(frozen=True)
class GroupRow:
    group: ExamGroup
    state: billing.GroupState
    invoices: tuple[Invoice, ...]


@dataclass(frozen=True)
class StudyRow:
    study: StudySummary
    signed: bool
    report_state: str  # "signed" | "draft" | "none"


@dataclass(frozen=True)
class PatientFile:
    identity: Identity
    ins: PatientIns | None
    guardians: tuple[PatientGuardian, ...]
    minor: bool  # under 18 on *today* (from the birth date): the page asks for a legal guardian
    memberships: tuple[MembershipRow, ...]
    groups: tuple[GroupRow, ...]
    balance_cents: int
    insurer_due_cents: int
    patient_refund_cents: int  # paid beyond what the patient owes (after credit notes): to give back
    studies: tuple[StudyRow, ...]
    retention: retention.PatientRetention | None


def is_minor(birth_date: str | None, today: date) -> bool:
    born = parse_da(birth_date)
    if born is None:
        return False
    return (today.year - born.year - ((today.month, today.day) < (born.month, born.day))) < 18

def is_known(session: Session, facade: ArchiveFacade, patient_id: str) -> bool:
    """Whether the desk or the archive knows this patient ID (a check-in, or a study not purged).

    A mutuelle is recorded for a patient the practice knows: a typed ID that matches nobody is refused
    rather than creating a membership for a patient who does not exist.
    """
    if not patient_id:
        return False
    if session.scalar(select(ExamGroup.id).where(ExamGroup.patient_id == patient_id).limit(1)) is not None:
        return True
    return bool(facade.patient_records(session, patient_id=patient_id))


def patient_file(session: Session, facade: ArchiveFacade, patient_id: str, *, today: date) -> PatientFile:
    studies = facade.list_studies(session, patient_id=patient_id)
    groups = billing.list_exam_groups(session, patient_id=patient_id, limit=500)
    if not studies and not groups:
        raise UnknownPatient(patient_id)
    source = studies[-1] if studies else None
    latest_group = groups[-1] if groups else None
    identity = Identity(
        patient_id=patient_id,
        name=(source.patient_name if source else None) or (latest_group.patient_name if latest_group else None),
        birth_date=(source.patient_birth_date if source else None)
        or (latest_group.patient_birth_date if latest_group else None),
        sex=(source.patient_sex if source else None) or (latest_group.patient_sex if latest_group else None),
    )
    memberships = list(session.scalars(select(Membership).where(Membership.patient_id == patient_id)
                                       .order_by(Membership.valid_from.desc(), Membership.id.desc())))
    invoices = list(session.scalars(select(Invoice).where(Invoice.patient_id == patient_id).order_by(Invoice.id)))
    states = billing.group_states(session, groups)
    invoice_states = billing.invoice_states(session, invoices)
    by_group: dict[int, list[Invoice]] = {}
    for inv in invoices:
        by_group.setdefault(inv.group_id, []).append(inv)
    insurer_due = sum(max(st.insurer_balance_cents, 0) for st in invoice_states.values())
    study_rows = []
    for st in reversed(studies):  # newest first
        signed = radiology.signed_report(session, st.study_uid) is not None
        draft = not signed and radiology.current_draft(session, st.study_uid) is not None
        study_rows.append(StudyRow(st, signed, "signed" if signed else "draft" if draft else "none"))
    try:
        kept = retention.patient_retention(session, facade, patient_id, today=today) if studies else None
    except RetentionError:  # several issuers of this ID: the retention page asks which one
        kept = None
    return PatientFile(
        identity=identity,
        ins=session.scalar(select(PatientIns).where(PatientIns.patient_id == patient_id)),
        guardians=current_guardians(session, patient_id),
        minor=is_minor(identity.birth_date, today),
        memberships=tuple(MembershipRow(m, m.valid_from <= today and (m.valid_to is None or m.valid_to >= today))
                          for m in memberships),
        groups=tuple(GroupRow(g, states[g.id], tuple(by_group.get(g.id, ()))) for g in reversed(groups)),
        balance_cents=billing.patient_balance_cents(session, patient_id),
        insurer_due_cents=insurer_due,
        patient_refund_cents=sum(st.patient_refund_due_cents for st in invoice_states.values()),
        studies=tuple(study_rows),
        retention=kept,
    )


# High-trust identity documents (RNIV): the adult's own; for a minor, the family record book or a
# birth certificate (with the identity document of the legal representative).
DOCUMENTS = ("id_card", "passport", "residence_permit", "family_record", "birth_certificate")
RELATIONSHIPS = ("mother", "father", "tutor", "curator", "other")
_PHONE = re.compile(r"^\+?[0-9 .()\-]{6,25}$")


class NotQualifiable(ValueError):
    """Qualified without a checked identity document, or an unknown document."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "document" (unknown) | "unchecked" (qualified without a document)


class InvalidGuardian(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "name" | "relationship" | "phone" | "unknown"


def record_ins(session: Session, patient_id: str, nir: str, *, qualified: bool, recorded_by: str,
               document: str | None = None) -> PatientIns:
    """Record (or correct) the patient's INS.

    :class:`~backoffice.patients.nir.InvalidNir` when the NIR is malformed or its key wrong;
    :class:`NotQualifiable` when *qualified* comes without a checked *document*. A document means
    *recorded_by* checked it now; recording without one clears an earlier check (a corrected number
    is checked again).
    """
    value = nir_rules.validate(nir)
    document = document or None
    if document is not None and document not in DOCUMENTS:
        raise NotQualifiable("document")
    if qualified and document is None:
        raise NotQualifiable("unchecked")
    now = billing_base.utcnow()
    row = session.scalar(select(PatientIns).where(PatientIns.patient_id == patient_id))
    if row is None:
        row = PatientIns(patient_id=patient_id, recorded_at=now)
        session.add(row)
    row.nir, row.oid, row.qualified, row.recorded_by, row.recorded_at = (
        value, nir_rules.oid_of(value), qualified, recorded_by, now)
    row.document, row.verified_by, row.verified_at = (document, recorded_by, now) if document else (None, None, None)
    session.flush()
    return row


def current_guardians(session: Session, patient_id: str) -> tuple[PatientGuardian, ...]:
    return tuple(session.scalars(select(PatientGuardian).where(PatientGuardian.patient_id == patient_id,
                                                               PatientGuardian.ended_at.is_(None))
                                 .order_by(PatientGuardian.id)))


def add_guardian(session: Session, patient_id: str, *, name: str, relationship: str, phone: str,
                 recorded_by: str) -> PatientGuardian:
    """A legal representative (minor or protected adult): a name, a relationship, a phone number."""
    name, phone = " ".join((name or "").split()), (phone or "").strip()
    if not name or len(name) > 200:
        raise InvalidGuardian("name")
    if relationship not in RELATIONSHIPS:
        raise InvalidGuardian("relationship")
    if not _PHONE.match(phone) or sum(c.isdigit() for c in phone) < 6:
        raise InvalidGuardian("phone")
    row = PatientGuardian(patient_id=patient_id, name=name, relationship=relationship, phone=phone,
                          recorded_by=recorded_by, recorded_at=billing_base.utcnow())
    session.add(row)
    session.flush()
    return row


def end_guardian(session: Session, patient_id: str, guardian_id: int, *, ended_by: str) -> PatientGuardian:
    """No longer the patient's representative (kept, with who ended it and when)."""
    row = session.get(PatientGuardian, guardian_id)
    if row is None or row.patient_id != patient_id or row.ended_at is not None:
        raise InvalidGuardian("unknown")
    row.ended_by, row.ended_at = ended_by, billing_base.utcnow()
    session.flush()
    return row
