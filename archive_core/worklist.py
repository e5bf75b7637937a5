"""The modality worklist: scheduled procedure steps the desk checks in, and what the modality reports.

The back-office creates an item at check-in (through ``ArchiveFacade.schedule_procedure_step``);
the DICOM server answers Modality Worklist C-FIND queries from it (PS3.4 Annex K, in
:mod:`archive_core.worklist_find`) and keeps the Modality Performed Procedure Steps (PS3.4 Annex F)
a modality sends, which move the item from SCHEDULED to IN PROGRESS, then COMPLETED or DISCONTINUED.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import DateTime, ForeignKey, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from archive_core.db import Base
from archive_core.errors import ArchiveError
from archive_core.index.matching import fold_person_name
from archive_core.values import utcnow

SCHEDULED, IN_PROGRESS, COMPLETED, DISCONTINUED = "SCHEDULED", "IN PROGRESS", "COMPLETED", "DISCONTINUED"
FINAL = (COMPLETED, DISCONTINUED)
# Items a modality sees when its query does not name a status: those still to be done.
OPEN = (SCHEDULED, IN_PROGRESS)


class WorklistError(ArchiveError):
    """A scheduled or performed procedure step that cannot be recorded as asked."""


class DuplicateAccession(WorklistError):
    pass


class DuplicateStep(WorklistError):
    pass


class NoSuchStep(WorklistError):
    pass


class StepFinished(WorklistError):
    pass


class InvalidStep(WorklistError):
    pass


class WorklistItem(Base):
    """One Scheduled Procedure Step of one Requested Procedure (one accession number)."""

    __tablename__ = "worklist_item"

    id: Mapped[int] = mapped_column(primary_key=True)
    accession_number: Mapped[str] = mapped_column(String(16), unique=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    patient_name: Mapped[str | None] = mapped_column(String(324))  # DICOM PN: FAMILY^Given
    patient_name_search: Mapped[str | None] = mapped_column(String(324), index=True)  # folded, as the index
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    study_uid: Mapped[str] = mapped_column(String(64))
    requested_procedure_id: Mapped[str] = mapped_column(String(16))
    requested_procedure_description: Mapped[str | None] = mapped_column(String(64))
    step_id: Mapped[str] = mapped_column(String(16))
    step_description: Mapped[str | None] = mapped_column(String(64))
    modality: Mapped[str] = mapped_column(String(16), index=True)
    station_ae_title: Mapped[str | None] = mapped_column(String(16), index=True)
    start_date: Mapped[str] = mapped_column(String(8), index=True)  # DA
    start_time: Mapped[str] = mapped_column(String(13))  # HHMMSS.ffffff (ranges compare as text)
    status: Mapped[str] = mapped_column(String(16), index=True, default=SCHEDULED)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PerformedStep(Base):
    """A Modality Performed Procedure Step SOP instance, as the modality created and set it."""

    __tablename__ = "worklist_performed_step"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    item_id: Mapped[int | None] = mapped_column(ForeignKey("worklist_item.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    performed_by_ae: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


@dataclass(frozen=True)
class ScheduledStep:
    """A worklist item as the back-office reads it."""

    accession_number: str
    patient_id: str
    study_uid: str
    modality: str
    station_ae_title: str | None
    start: datetime
    step_id: str
    status: str


def _step(item: WorklistItem) -> ScheduledStep:
    hhmmss = item.start_time[:6]
    start = datetime.combine(date(int(item.start_date[:4]), int(item.start_date[4:6]), int(item.start_date[6:])),
                             time(int(hhmmss[:2]), int(hhmmss[2:4]), int(hhmmss[4:6])))
    return ScheduledStep(accession_number=item.accession_number, patient_id=item.patient_id,
                         study_uid=item.study_uid, modality=item.modality, station_ae_title=item.station_ae_title,
                         start=start, step_id=item.step_id, status=item.status)


def _short(value: str | None, size: int, name: str) -> str | None:
    value = (value or "").strip() or None
    if value is not None and len(value) > size:
        raise InvalidStep(f"{name} is longer than {size} characters")
    return value


def schedule(session: Session, *, patient_id: str, patient_name: str | None, patient_birth_date: str | None,
             patient_sex: str | None, modality: str, start: datetime, created_by: str,
             station_ae_title: str | None = None, procedure_description: str | None = None,
             accession_number: str | None = None) -> ScheduledStep:
    """Create one scheduled procedure step (status SCHEDULED) in the caller's transaction.

    Without *accession_number* one is generated: the start date and the item's number
    (``YYMMDD`` + 7 digits), unique because the number is. A given one must be new.
    """
    patient_id = _short(patient_id, 64, "Patient ID")
    if not patient_id:
        raise InvalidStep("Patient ID is required")
    modality = _short(modality, 16, "Modality")
    if not modality:
        raise InvalidStep("Modality is required")
    accession_number = _short(accession_number, 16, "Accession Number")
    if accession_number and session.scalar(
            select(WorklistItem.id).where(WorklistItem.accession_number == accession_number)) is not None:
        raise DuplicateAccession(f"accession number {accession_number} is already scheduled")
    item = WorklistItem(
        accession_number=accession_number or generate_uid(prefix=None)[-16:],  # placeholder, replaced below
        patient_id=patient_id, patient_name=_short(patient_name, 324, "Patient's Name"),
        patient_name_search=fold_person_name(patient_name), patient_birth_date=patient_birth_date or None,
        patient_sex=_short(patient_sex, 16, "Patient's Sex"), study_uid=generate_uid(prefix=None),
        requested_procedure_id="", step_id="", modality=modality.upper(),
        station_ae_title=_short(station_ae_title, 16, "Scheduled Station AE Title"),
        requested_procedure_description=_short(procedure_description, 64, "Requested Procedure Description"),
        step_description=_short(procedure_description, 64, "Scheduled Procedure Step Description"),
        start_date=start.strftime("%Y%m%d"), start_time=start.strftime("%H%M%S") + ".000000",
        status=SCHEDULED, created_by=created_by,
    )
    session.add(item)
    session.flush()
    if not accession_number:
        item.accession_number = f"{start:%y%m%d}{item.id:07d}"[-16:]
    item.requested_procedure_id = f"RP{item.id}"[:16]
    item.step_id = f"SPS{item.id}"[:16]
    session.flush()
    return _step(item)


def steps_by_accession(session: Session, accession_numbers: list[str]) -> dict[str, ScheduledStep]:
    if not accession_numbers:
        return {}
    rows = session.scalars(select(WorklistItem).where(WorklistItem.accession_number.in_(accession_numbers)))
    return {r.accession_number: _step(r) for r in rows}


# -- Modality Performed Procedure Step (PS3.4 F.7) ----------------------------------------------


def _referenced_item(session: Session, attributes: Dataset) -> WorklistItem | None:
    """The worklist item an N-CREATE names in its Scheduled Step Attributes Sequence."""
    for ref in attributes.get("ScheduledStepAttributesSequence", None) or []:
        accession = str(ref.get("AccessionNumber", "") or "").strip()
        step_id = str(ref.get("ScheduledProcedureStepID", "") or "").strip()
        study_uid = str(ref.get("StudyInstanceUID", "") or "").strip()
        for column, value in ((WorklistItem.accession_number, accession), (WorklistItem.step_id, step_id),
                              (WorklistItem.study_uid, study_uid)):
            if value:
                item = session.scalar(select(WorklistItem).where(column == value).limit(1))
                if item is not None:
                    return item
    return None


def _status_of(attributes: Dataset) -> str:
    return str(attributes.get("PerformedProcedureStepStatus", "") or "").strip().upper()


def create_performed(session: Session, sop_instance_uid: str, attributes: Dataset, *,
                     ae_title: str) -> tuple[PerformedStep, WorklistItem | None]:
    """N-CREATE: a new performed step IN PROGRESS; its worklist item (if it names one) goes IN PROGRESS."""
    if _status_of(attributes) != IN_PROGRESS:
        raise InvalidStep("Performed Procedure Step Status must be IN PROGRESS at N-CREATE")
    if session.scalar(select(PerformedStep.id).where(PerformedStep.sop_instance_uid == sop_instance_uid)):
        raise DuplicateStep(f"performed procedure step {sop_instance_uid} already exists")
    item = _referenced_item(session, attributes)
    step = PerformedStep(sop_instance_uid=sop_instance_uid, item_id=item.id if item else None, status=IN_PROGRESS,
                         performed_by_ae=ae_title[:16])
    session.add(step)
    if item is not None and item.status not in FINAL:
        item.status, item.updated_at = IN_PROGRESS, utcnow()
    session.flush()
    return step, item


def set_performed(session: Session, sop_instance_uid: str, modifications: Dataset) -> tuple[PerformedStep,
                                                                                               WorklistItem | None]:
    """N-SET: attributes of a step still IN PROGRESS; COMPLETED or DISCONTINUED also end its item."""
    step = session.scalar(select(PerformedStep).where(PerformedStep.sop_instance_uid == sop_instance_uid))
    if step is None:
        raise NoSuchStep(f"no performed procedure step {sop_instance_uid}")
    if step.status in FINAL:
        raise StepFinished(f"performed procedure step is {step.status}: it may no longer be updated")
    new = _status_of(modifications)
    if "PerformedProcedureStepStatus" in modifications and new not in (IN_PROGRESS, COMPLETED, DISCONTINUED):
        raise InvalidStep(f"Performed Procedure Step Status {new!r} is not IN PROGRESS, COMPLETED or DISCONTINUED")
    item = session.get(WorklistItem, step.item_id) if step.item_id else None
    if new:
        step.status, step.updated_at = new, utcnow()
        if item is not None and new in FINAL:
            item.status, item.updated_at = new, utcnow()
    session.flush()
    return step, item
