"""Exam groups: a visit's studies grouped under one fee, their mapping, moves, states and consent.

Each function takes a Session first, flushes, never commits (the edge does)."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import date
from typing import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from archive_core.values import paris_day, parse_da
from backoffice.billing.base import Conflict, Invalid, NotFound
from backoffice.billing.models import Consent, ExamGroup, ExamGroupMapping, ExamGroupStudy, Invoice, Tariff
from backoffice.billing.states import invoice_states
from backoffice.billing.tariffs import fee_for, tariff_for


# Modalities that never decide the exam group on their own (structured reports, presentation states...).
ANCILLARY_MODALITIES = {"SR", "PR", "KO", "DOC", "REG", "SEG", "OT", "AU", "ECG"}
FALLBACK_GROUP = "autre"


def _fold(value: str | None) -> str:
    decomposed = unicodedata.normalize("NFKD", value or "")
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper()


def group_for_study(mappings: Iterable[ExamGroupMapping], modalities: Iterable[str], description: str | None) -> str:
    """The exam group of a study: the first modality with a mapping; a description keyword wins."""
    by_modality: dict[str, list[ExamGroupMapping]] = {}
    for mapping in mappings:
        by_modality.setdefault(mapping.modality.upper(), []).append(mapping)
    folded = _fold(description)
    ordered = [m.upper() for m in modalities if m.upper() not in ANCILLARY_MODALITIES]
    for modality in ordered:
        candidates = by_modality.get(modality, [])
        for mapping in candidates:
            if mapping.description_contains and _fold(mapping.description_contains) in folded:
                return mapping.exam_group
        for mapping in candidates:
            if not mapping.description_contains:
                return mapping.exam_group
    return FALLBACK_GROUP


# -- exam groups ----------------------------------------------------------------------------------


def create_exam_group(
    session: Session,
    *,
    patient_id: str,
    visit_date: date,
    exam_group: str,
    created_by: str,
    patient_name: str | None = None,
    patient_birth_date: str | None = None,
    patient_sex: str | None = None,
    patient_address: str | None = None,
    accession_number: str | None = None,
) -> ExamGroup:
    """Check-in: the desk creates the group before any image exists; studies attach to it later."""
    if not patient_id or len(patient_id) > 64:
        raise Invalid("patient_id is required (64 characters at most)", code="patient_required")
    if tariff_for(session, exam_group, visit_date) is None:
        raise Invalid(f"unknown exam group {exam_group!r}", code="unknown_exam_group")
    existing = session.scalar(
        select(ExamGroup).where(ExamGroup.patient_id == patient_id, ExamGroup.visit_date == visit_date,
                                ExamGroup.exam_group == exam_group)
    )
    if existing is not None:
        raise Conflict("this patient already has this exam group on that day", code="exists")
    group = ExamGroup(
        patient_id=patient_id, visit_date=visit_date, exam_group=exam_group, created_by=created_by,
        patient_name=patient_name, patient_birth_date=patient_birth_date, patient_sex=patient_sex,
        patient_address=patient_address, accession_number=accession_number or None,
    )
    session.add(group)
    session.flush()
    return group


def attach_studies(session: Session, studies) -> int:
    """Attach arrived studies (facade ``StudySummary``) to their exam group, creating it if needed.

    A study goes to the group checked in with its accession number, else to the group of its
    patient, day and mapped exam group. Outside priors (external) are not visits: never billed.
    """
    candidates = [s for s in studies if not s.external]
    if not candidates:
        return 0
    attached = set(session.scalars(
        select(ExamGroupStudy.study_uid).where(ExamGroupStudy.study_uid.in_([s.study_uid for s in candidates]))
    ))
    todo = [s for s in candidates if s.study_uid not in attached]
    if not todo:
        return 0
    mappings = list(session.scalars(select(ExamGroupMapping)))
    count = 0
    for study in todo:
        visit = parse_da(study.study_date) or paris_day(study.received_at)
        group = None
        if study.accession_number:
            group = session.scalar(
                select(ExamGroup).where(ExamGroup.accession_number == study.accession_number,
                                        ExamGroup.patient_id == study.patient_id).limit(1)
            )
        if group is None:
            code = group_for_study(mappings, study.modalities, study.description)
            group = session.scalar(
                select(ExamGroup).where(ExamGroup.patient_id == study.patient_id, ExamGroup.visit_date == visit,
                                        ExamGroup.exam_group == code)
            )
            if group is None:
                group = ExamGroup(
                    patient_id=study.patient_id, visit_date=visit, exam_group=code, created_by="system",
                    patient_name=study.patient_name, patient_birth_date=study.patient_birth_date,
                    patient_sex=study.patient_sex, accession_number=study.accession_number,
                )
                session.add(group)
                session.flush()
        if not group.patient_name and study.patient_name:
            group.patient_name = study.patient_name
            group.patient_birth_date = group.patient_birth_date or study.patient_birth_date
        session.add(ExamGroupStudy(
            group_id=group.id, study_uid=study.study_uid, accession_number=study.accession_number,
            study_date=study.study_date, modalities="\\".join(study.modalities), description=study.description,
        ))
        session.flush()
        count += 1
    return count


def unattached(session: Session, studies) -> list:
    """The arrived, non-external studies not yet in an exam group."""
    candidates = [s for s in studies if not s.external]
    if not candidates:
        return []
    attached = set(session.scalars(
        select(ExamGroupStudy.study_uid).where(ExamGroupStudy.study_uid.in_([s.study_uid for s in candidates]))
    ))
    return [s for s in candidates if s.study_uid not in attached]


def move_study(session: Session, study_uid: str, *, group_id: int) -> ExamGroupStudy:
    """Correct the grouping: move a study to another exam group (not once either is invoiced)."""
    link = session.scalar(select(ExamGroupStudy).where(ExamGroupStudy.study_uid == study_uid))
    target = session.get(ExamGroup, group_id)
    if link is None or target is None:
        raise NotFound("no such study or exam group")
    source = session.get(ExamGroup, link.group_id)
    if source.patient_id != target.patient_id:
        raise Conflict("a study moves only between exam groups of the same patient (correct the patient's "
                       "identity in the archive first)", code="other_patient")
    for gid in (link.group_id, target.id):
        if invoice_of_group(session, gid) is not None:
            raise Conflict("an invoiced exam group keeps its studies (issue a credit note first)", code="invoiced_group")
    link.group_id = target.id
    session.flush()
    return link


def invoice_of_group(session: Session, group_id: int) -> Invoice | None:
    return session.scalar(select(Invoice).where(Invoice.group_id == group_id))


def list_exam_groups(session: Session, *, visit_date: date | None = None, patient_id: str | None = None,
                     after_id: int = 0, limit: int = 100) -> list[ExamGroup]:
    query = select(ExamGroup).where(ExamGroup.id > after_id)
    if visit_date is not None:
        query = query.where(ExamGroup.visit_date == visit_date)
    if patient_id is not None:
        query = query.where(ExamGroup.patient_id == patient_id)
    return list(session.scalars(query.order_by(ExamGroup.id).limit(limit).options(selectinload(ExamGroup.studies))))


@dataclass(frozen=True)
class GroupState:
    fee_cents: int
    consent: str
    invoice_id: int | None
    state: str  # to_ask | accepted | refused | invoiced | paid | free


def group_state(session: Session, group: ExamGroup) -> GroupState:
    return group_states(session, [group])[group.id]


def group_states(session: Session, groups: list[ExamGroup]) -> dict[int, GroupState]:
    """Fee, consent, invoice and front-desk state of many groups in a handful of queries."""
    if not groups:
        return {}
    tariffs: dict[str, list[Tariff]] = {}
    for tariff in session.scalars(select(Tariff).order_by(Tariff.effective_from.desc())):
        tariffs.setdefault(tariff.exam_group, []).append(tariff)
    invoices = {i.group_id: i for i in session.scalars(
        select(Invoice).where(Invoice.group_id.in_([g.id for g in groups])))}
    states = invoice_states(session, list(invoices.values()))
    out = {}
    for group in groups:
        tariff = next((t for t in tariffs.get(group.exam_group, []) if t.effective_from <= group.visit_date), None)
        fee = 0 if tariff is None or tariff.national_insurance_paid else tariff.fee_cents
        invoice = invoices.get(group.id)
        if invoice is not None:
            state = "paid" if states[invoice.id].status == "paid" else "invoiced"
        elif fee == 0:
            state = "free"
        else:
            state = {"pending": "to_ask", "accepted": "accepted", "refused": "refused"}[group.consent]
        out[group.id] = GroupState(fee, group.consent, invoice.id if invoice else None, state)
    return out


# -- consent ------------------------------------------------------------------------------------


def record_consent(session: Session, group_id: int, *, accepted: bool, recorded_by: str,
                   price_shown_cents: int | None = None) -> ExamGroup:
    """The price was shown; the patient accepted or refused. A refusal blocks nothing but the invoice.

    *price_shown_cents* is the fee in force for the group (read here when the caller has not).
    """
    if not isinstance(accepted, bool):
        raise Invalid("accepted must be true or false", code="bad_consent")
    group = session.get(ExamGroup, group_id)
    if group is None:
        raise NotFound("no such exam group")
    if not accepted and invoice_of_group(session, group.id) is not None:
        raise Conflict("this exam group is already invoiced: issue a credit note to cancel it",
                       code="consent_after_invoice")
    if price_shown_cents is None:
        price_shown_cents = fee_for(session, group.exam_group, group.visit_date)
    session.add(Consent(group_id=group.id, accepted=accepted, recorded_by=recorded_by,
                        price_shown_cents=price_shown_cents))
    group.consent = "accepted" if accepted else "refused"
    session.flush()
    return group
