"""The facade's data: plain frozen dataclasses in, plain frozen dataclasses out, and the SOP classes
the radiology pages treat apart (documents, objects without pixels)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from archive_core.values import da_to_iso

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
SR_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
}
# Objects without pixels the viewer should not try to show.
NON_IMAGE_CLASSES = {ENCAPSULATED_PDF, *SR_CLASSES, "1.2.840.10008.5.1.4.1.1.11.1", "1.2.840.10008.5.1.4.1.1.66"}


@dataclass(frozen=True)
class ArchiveStats:
    patients: int
    studies: int
    instances: int
    bytes_stored: int


@dataclass(frozen=True)
class StudySummary:
    """A visible study with its patient's identity: what the browser lists and the desk bills."""

    study_uid: str
    study_date: str | None  # YYYYMMDD as received
    accession_number: str | None
    description: str | None
    modalities: tuple[str, ...]
    external: bool  # an outside prior, not a visit
    patient_id: str
    patient_name: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    study_time: str | None = None
    num_series: int = 0
    num_instances: int = 0
    referring_physician_name: str | None = None
    received_at: datetime | None = None

    @property
    def iso_date(self) -> str | None:
        return da_to_iso(self.study_date)


@dataclass(frozen=True)
class SeriesSummary:
    series_uid: str
    modality: str | None
    series_number: int | None
    description: str | None
    body_part: str | None
    num_instances: int
    first_sop_uid: str | None
    first_is_image: bool


@dataclass(frozen=True)
class StudyDetail:
    study: StudySummary
    series: tuple[SeriesSummary, ...]

    @property
    def body_parts(self) -> tuple[str, ...]:
        return tuple(sorted({s.body_part for s in self.series if s.body_part}))


@dataclass(frozen=True)
class PriorStudy:
    study_uid: str
    study_date: str | None  # ISO 8601
    modalities: tuple[str, ...]
    description: str | None
    body_parts: tuple[str, ...]
    relevant: bool


@dataclass(frozen=True)
class InstanceRef:
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    series_uid: str

    @property
    def is_image(self) -> bool:
        return self.sop_class_uid not in NON_IMAGE_CLASSES


@dataclass(frozen=True)
class StudyPage:
    items: tuple[StudySummary, ...]
    has_more: bool


@dataclass(frozen=True)
class DicomDocument:
    """A report that arrived over DICOM: an Encapsulated PDF or a structured report's text."""

    sop_instance_uid: str
    kind: str  # "pdf" | "sr"
    title: str
    content_date: str | None
    text: str  # the SR's text content ("" for a PDF)
    verified: bool


@dataclass(frozen=True)
class InstanceSummary:
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    transfer_syntax_uid: str
    size_bytes: int


@dataclass(frozen=True)
class SeriesContents(SeriesSummary):
    """A series' summary with its instances (:meth:`~archive_core.api.ArchiveFacade.get_study`)."""

    instances: tuple[InstanceSummary, ...] = ()


@dataclass(frozen=True)
class StudyContents(StudyDetail):
    """A study's detail whose series carry their instances."""

    series: tuple[SeriesContents, ...]


@dataclass(frozen=True)
class PriorSummary(StudySummary):
    """Another study of the same patient (its summary), with what a caller needs to mark the relevant
    ones: the body parts its series examined."""

    body_parts: tuple[str, ...] = ()


@dataclass(frozen=True)
class RetrieveResult:
    completed: int
    failed: int
    warning: int
    failed_sop_instance_uids: tuple[str, ...]


@dataclass(frozen=True)
class PatientRecord:
    """What retention needs about one (visible) patient."""

    patient_pk: int
    patient_id: str
    issuer_of_patient_id: str
    birth_date: str | None  # DICOM DA
    visit_dates: tuple[str, ...]  # study dates of the practice's own studies (outside priors excluded)
    studies: int
    instances_active: int
    instances_archive: int
    bytes_total: int
    patient_name: str | None = None  # DICOM PN (NOM^Prénom): the manager's lists show names


@dataclass(frozen=True)
class StorageUsage:
    tier: str
    year: str  # of the study date; "" when unknown
    modality: str
    instances: int
    bytes_total: int
