"""One patient, gathered from every area through their own services and the archive facade."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from archive_core.api import ArchiveFacade, StudySummary
from backoffice.billing import services as billing
from backoffice.billing.models import ExamGroup, Invoice, Membership
from backoffice.patients import nir as nir_rules
from backoffice.patients.models import PatientIns
from backoffice.radiology import services as radiology
from backoffice.retention import services as retention
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
    memberships: tuple[MembershipRow, ...]
    groups: tuple[GroupRow, ...]
    balance_cents: int
    insurer_due_cents: int
    studies: tuple[StudyRow, ...]
    retention: retention.PatientRetention | None


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
    studies = facade.list_studies(patient_id=patient_id)
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
        memberships=tuple(MembershipRow(m, m.valid_from <= today and (m.valid_to is None or m.valid_to >= today))
                          for m in memberships),
        groups=tuple(GroupRow(g, states[g.id], tuple(by_group.get(g.id, ()))) for g in reversed(groups)),
        balance_cents=billing.patient_balance_cents(session, patient_id),
        insurer_due_cents=insurer_due,
        studies=tuple(study_rows),
        retention=kept,
    )


def record_ins(session: Session, patient_id: str, nir: str, *, qualified: bool, recorded_by: str) -> PatientIns:
    """Record (or correct) the patient's INS; :class:`~backoffice.patients.nir.InvalidNir` when the key is wrong."""
    value = nir_rules.validate(nir)
    row = session.scalar(select(PatientIns).where(PatientIns.patient_id == patient_id))
    if row is None:
        row = PatientIns(patient_id=patient_id, nir=value, oid=nir_rules.INS_NIR_OID, qualified=qualified,
                         recorded_by=recorded_by)
        session.add(row)
    else:
        row.nir, row.oid, row.qualified, row.recorded_by = value, nir_rules.INS_NIR_OID, qualified, recorded_by
        row.recorded_at = billing.utcnow()
    session.flush()
    return row
