"""The facade the back-office uses: plain frozen dataclasses in, plain frozen dataclasses out."""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass
from datetime import date as _date
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Iterable

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session

from archive_core import audit as _audit
from archive_core import peers as _peers
from archive_core.archive import Archive
from archive_core.config import Settings
from archive_core.db import Base, UtcDateTime, write_session
from archive_core.errors import (
    ArchiveError,
    BlobMissing,
    InvalidQuery,
    JournalBusy,
    NotFound,
    StorageRefused,
    UnknownPeer,
)
from archive_core.index import patient_search as _patient_search
from archive_core.index.models import Instance, Patient, Series, Study
from archive_core.values import da_to_iso, format_da, utcnow
from archive_core.index.patient_search import PatientMatch, PatientSearchPage
from archive_core.peers import PeerInfo
from archive_core.purge import TombstoneResult
from archive_core.tiers import TierMove
from archive_core import worklist as _worklist
from archive_core.worklist import DuplicateAccession, ScheduledStep, WorklistError

__all__ = ["ArchiveFacade", "ArchiveStats", "Base", "PatientRecord", "StorageUsage", "StudySummary", "UtcDateTime", "utcnow"]
# The domain errors the back-office maps at its edges, so that it needs no other core module.
__all__ += ["ArchiveError", "BlobMissing", "InvalidQuery", "JournalBusy", "NotFound", "StorageRefused", "UnknownPeer"]
__all__ += ["PeerInfo", "escape_like"]
__all__ += ["PatientMatch", "PatientSearchPage"]
__all__ += ["DuplicateAccession", "ScheduledStep", "WorklistError", "fold_text"]

# The rest of what the back-office needs of the core, so that it imports this module (and
# archive_core.values) only: tests/unit/test_boundary.py holds it to that.
from archive_core import commands  # noqa: E402  (the core's own commands; the flask CLI wraps them)
from archive_core.audit import AuditEntry, ChainReport  # noqa: E402
from archive_core.commands import CommandFailed  # noqa: E402
from archive_core.config import ensure_instance, instance_path_from_env, private_files  # noqa: E402
from archive_core.errors import (  # noqa: E402
    DuplicateConflict,
    IdentityConflict,
    InvalidDataset,
    InvalidIdentifier,
    ObjectTooLarge,
    StorageFull,
    StorageUnavailable,
    TooManyMatches,
)
from archive_core.render import PRESETS, RenderError, RenderParams  # noqa: E402
from archive_core.retention import (  # noqa: E402
    ACTIVE_TIER_YEARS, HoldPeriod, RetentionDecision, RetentionFacts, add_years, decide,
)

__all__ += ["AuditEntry", "ChainReport", "CommandFailed", "Settings", "commands", "ensure_instance",
            "instance_path_from_env", "private_files"]
__all__ += ["DuplicateConflict", "IdentityConflict", "InvalidDataset", "InvalidIdentifier", "ObjectTooLarge",
            "StorageFull", "StorageUnavailable", "TooManyMatches"]
__all__ += ["PRESETS", "RenderError", "RenderParams"]
__all__ += ["ACTIVE_TIER_YEARS", "HoldPeriod", "RetentionDecision", "RetentionFacts", "add_years", "decide"]


@dataclass(frozen=True)
class ArchiveStats:
    patients: int
    studies: int
    instances: int
    bytes_stored: int


# -- radiology -------------------------------------------------------------------------------------
# Study lookups, priors, rendering, DICOM documents and media for the radiology area (issue 6).
# Written on the index models directly while query/retrieve (issue 3) is being built; once its
# find_studies/get_study/priors land, these should delegate to them.


ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
SR_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
}
# Objects without pixels the viewer should not try to show.
NON_IMAGE_CLASSES = {ENCAPSULATED_PDF, *SR_CLASSES, "1.2.840.10008.5.1.4.1.1.11.1", "1.2.840.10008.5.1.4.1.1.66"}


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


def _dicom_date(value: _date | str | None) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = _date.fromisoformat(value)
    return format_da(value)


def _summary(study: Study, patient: Patient) -> StudySummary:
    return StudySummary(
        study_uid=study.study_uid,
        study_date=study.study_date,
        study_time=study.study_time,
        accession_number=study.accession_number,
        description=study.study_description,
        modalities=tuple(m for m in (study.modalities_in_study or "").split("\\") if m),
        num_series=study.num_series,
        num_instances=study.num_instances,
        patient_id=patient.patient_id,
        patient_name=patient.patient_name,
        patient_birth_date=patient.patient_birth_date,
        patient_sex=patient.patient_sex,
        referring_physician_name=study.referring_physician_name,
        external=bool(study.external),
        received_at=study.received_at,
    )


def escape_like(value: str) -> str:
    """*value* as a literal inside a ``LIKE`` pattern (use with ``escape="\\"``)."""
    return value.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_")


def _sr_text(ds) -> str:
    """The text of a structured report's content tree, headings first (enough to read it)."""
    lines: list[str] = []

    def walk(items, depth: int) -> None:
        for item in items:
            name = ""
            if "ConceptNameCodeSequence" in item and item.ConceptNameCodeSequence:
                name = str(item.ConceptNameCodeSequence[0].get("CodeMeaning", ""))
            value = item.get("TextValue")
            if value is None and "ConceptCodeSequence" in item and item.ConceptCodeSequence:
                value = item.ConceptCodeSequence[0].get("CodeMeaning")
            if value is None and "MeasuredValueSequence" in item and item.MeasuredValueSequence:
                mv = item.MeasuredValueSequence[0]
                units = mv.get("MeasurementUnitsCodeSequence") or []
                unit = units[0].get("CodeValue", "") if units else ""
                value = f"{mv.get('NumericValue', '')} {unit}".strip()
            if name or value:
                lines.append(("  " * depth) + (f"{name} : {value}" if name and value else str(name or value)))
            if "ContentSequence" in item:
                walk(item.ContentSequence, depth + 1)

    walk(ds.get("ContentSequence", []), 0)
    return "\n".join(lines)


class _RadiologyMixin:
    """Facade methods of the radiology area (mixed into :class:`ArchiveFacade`)."""

    _archive: Archive

    # study browser ------------------------------------------------------------------------------

    def browse_studies(
        self,
        *,
        patient: str = "",
        date_from: _date | str | None = None,
        date_to: _date | str | None = None,
        modality: str = "",
        accession: str = "",
        description: str = "",
        limit: int = 50,
        offset: int = 0,
    ) -> StudyPage:
        """Studies newest first; *patient* is what the patient search understands (see search_patients)."""
        q = select(Study, Patient).join(Patient, Study.patient_pk == Patient.id).where(Study.deleted_at.is_(None))
        patient = patient.strip()
        if patient:
            # The one patient search (accents, word order, hyphens, birth date, ID): patients
            # first (a small table), then their studies through the patient_pk index.
            dialect = self._archive.engine.dialect.name
            q = q.where(Study.patient_pk.in_(_patient_search.matching_patient_pks(patient, dialect)))
        if date_from:
            q = q.where(Study.study_date >= _dicom_date(date_from))
        if date_to:
            q = q.where(Study.study_date <= _dicom_date(date_to))
        if modality.strip():
            q = q.where(
                select(Series.id)
                .where(
                    Series.study_pk == Study.id,
                    Series.modality == modality.strip().upper(),
                    Series.deleted_at.is_(None),
                )
                .exists()
            )
        if accession.strip():
            q = q.where(Study.accession_number == accession.strip())
        if description.strip():
            q = q.where(
                func.upper(Study.study_description).like(
                    "%" + escape_like(description.strip().upper()) + "%", escape="\\"
                )
            )
        q = q.order_by(Study.study_date.desc(), Study.study_time.desc(), Study.id.desc())
        with self._archive.sessions() as s:
            rows = s.execute(q.limit(limit + 1).offset(offset)).all()
            items = tuple(_summary(study, pat) for study, pat in rows[:limit])
        return StudyPage(items, len(rows) > limit)

    def study_detail(self, study_uid: str) -> StudyDetail:
        """The study, its patient and its series (with the first instance of each, for thumbnails)."""
        with self._archive.sessions() as s:
            row = s.execute(
                select(Study, Patient)
                .join(Patient, Study.patient_pk == Patient.id)
                .where(Study.study_uid == study_uid, Study.deleted_at.is_(None))
            ).first()
            if row is None:
                raise NotFound(f"no study {study_uid}")
            study, pat = row
            series_rows = s.scalars(
                select(Series)
                .where(Series.study_pk == study.id, Series.deleted_at.is_(None))
                .order_by(Series.series_number, Series.id)
            ).all()
            series = []
            for se in series_rows:
                first = s.execute(
                    select(Instance.sop_instance_uid, Instance.sop_class_uid)
                    .where(Instance.series_pk == se.id, Instance.deleted_at.is_(None))
                    .order_by(Instance.instance_number, Instance.id)
                    .limit(1)
                ).first()
                series.append(
                    SeriesSummary(
                        series_uid=se.series_uid,
                        modality=se.modality,
                        series_number=se.series_number,
                        description=se.series_description,
                        body_part=se.body_part_examined,
                        num_instances=se.num_instances,
                        first_sop_uid=first[0] if first else None,
                        first_is_image=bool(first) and first[1] not in NON_IMAGE_CLASSES,
                    )
                )
            return StudyDetail(_summary(study, pat), tuple(series))

    def prior_studies(self, study_uid: str) -> list[PriorStudy]:
        """The patient's other studies (:meth:`priors`, newest first); relevant = same modality or body part."""
        others = self.priors(study_uid)  # NotFound for an unknown study
        with self._archive.sessions() as s:
            current = s.scalar(select(Study).where(Study.study_uid == study_uid, Study.deleted_at.is_(None)))
            modalities = {m for m in current.modalities_in_study.split("\\") if m}
            parts = {
                b.upper()
                for b in s.scalars(
                    select(Series.body_part_examined).where(Series.study_pk == current.id, Series.deleted_at.is_(None))
                )
                if b
            }
        result = []
        for other in others:
            other_parts = {b.upper() for b in other.body_parts}
            result.append(
                PriorStudy(
                    study_uid=other.study_uid,
                    study_date=da_to_iso(other.study_date or None),
                    modalities=other.modalities,
                    description=other.description or None,
                    body_parts=tuple(sorted(other_parts)),
                    relevant=bool(modalities & set(other.modalities)) or bool(parts & other_parts),
                )
            )
        return result

    def series_instances(self, series_uid: str) -> list[InstanceRef]:
        """The instances of a series in reading order (instance number)."""
        with self._archive.sessions() as s:
            if s.scalar(select(Series.id).where(Series.series_uid == series_uid, Series.deleted_at.is_(None))) is None:
                raise NotFound(f"no series {series_uid}")
            rows = s.execute(
                select(Instance.sop_instance_uid, Instance.sop_class_uid, Instance.instance_number)
                .join(Series, Instance.series_pk == Series.id)
                .where(Series.series_uid == series_uid, Instance.deleted_at.is_(None))
                .order_by(Instance.instance_number, Instance.id)
            ).all()
            return [InstanceRef(uid, cls, num, series_uid) for uid, cls, num in rows]

    def number_of_frames(self, sop_instance_uid: str) -> int:
        """Frames of a stored object (its header only is read)."""
        from pydicom import dcmread

        from archive_core.render import number_of_frames

        data = self.read_instance(sop_instance_uid)
        return number_of_frames(dcmread(io.BytesIO(data), stop_before_pixels=True, force=True))

    def study_instances(self, study_uid: str) -> list[InstanceRef]:
        with self._archive.sessions() as s:
            rows = s.execute(
                select(Instance.sop_instance_uid, Instance.sop_class_uid, Instance.instance_number, Series.series_uid)
                .join(Series, Instance.series_pk == Series.id)
                .join(Study, Series.study_pk == Study.id)
                .where(Study.study_uid == study_uid, Instance.deleted_at.is_(None))
                .order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
            ).all()
            return [InstanceRef(uid, cls, num, se) for uid, cls, num, se in rows]

    def instance_study_uid(self, sop_instance_uid: str) -> str:
        """The study an instance belongs to (to check a share link or audit a view)."""
        with self._archive.sessions() as s:
            uid = s.scalar(
                select(Study.study_uid)
                .join(Series, Series.study_pk == Study.id)
                .join(Instance, Instance.series_pk == Series.id)
                .where(Instance.sop_instance_uid == sop_instance_uid, Instance.deleted_at.is_(None))
            )
        if uid is None:
            raise NotFound(f"no instance {sop_instance_uid}")
        return uid

    # rendering ----------------------------------------------------------------------------------

    @property
    def renderer(self):
        from archive_core.render import RenderCache, Renderer

        if getattr(self, "_renderer", None) is None:
            max_bytes = int(self._archive.settings.extra.get("RENDER_CACHE_MAX_BYTES", 512 * 1024**2))
            cache = RenderCache(self._archive.settings.instance_path / "cache" / "render", max_bytes)
            self._renderer = Renderer(self.read_dataset, cache)
        return self._renderer

    def render_instance(self, sop_instance_uid: str, params) -> bytes:
        """One frame of a stored image as PNG/JPEG bytes (:class:`archive_core.render.RenderParams`)."""
        # Every request asks the index (a purged image is never served from the cache; a replaced one
        # is rendered anew: its checksum is part of the cache key).
        with self._archive.sessions() as s:
            checksum = s.scalar(
                select(Instance.checksum_sha256).where(
                    Instance.sop_instance_uid == sop_instance_uid, Instance.deleted_at.is_(None)
                )
            )
        if checksum is None:
            raise NotFound(f"no instance {sop_instance_uid}")
        return self.renderer.render(sop_instance_uid, params, version=checksum)

    def read_dataset(self, sop_instance_uid: str):
        """The stored object as a pydicom Dataset, whichever tier holds it (a copy: the caller may change it)."""
        from archive_core.render import parse_dataset

        return parse_dataset(self.read_instance(sop_instance_uid))

    # reports that arrived over DICOM ------------------------------------------------------------

    def study_documents(self, study_uid: str) -> list[DicomDocument]:
        """Encapsulated PDFs and structured reports stored in the study, oldest first."""
        docs = []
        for ref in self.study_instances(study_uid):
            if ref.sop_class_uid != ENCAPSULATED_PDF and ref.sop_class_uid not in SR_CLASSES:
                continue
            ds = self.read_dataset(ref.sop_instance_uid)
            is_pdf = ref.sop_class_uid == ENCAPSULATED_PDF
            title = str(ds.get("DocumentTitle", "") or "")
            if not title and "ConceptNameCodeSequence" in ds and ds.ConceptNameCodeSequence:
                title = str(ds.ConceptNameCodeSequence[0].get("CodeMeaning", ""))
            docs.append(
                DicomDocument(
                    sop_instance_uid=ref.sop_instance_uid,
                    kind="pdf" if is_pdf else "sr",
                    title=title or ("Document PDF" if is_pdf else SR_CLASSES[ref.sop_class_uid]),
                    content_date=da_to_iso(str(ds.get("ContentDate", "") or "")),
                    text="" if is_pdf else _sr_text(ds),
                    verified=str(ds.get("VerificationFlag", "")).upper() == "VERIFIED",
                )
            )
        return docs

    def document_pdf(self, sop_instance_uid: str) -> bytes:
        """The PDF of an Encapsulated PDF object (trailing padding removed)."""
        ds = self.read_dataset(sop_instance_uid)
        if str(ds.get("SOPClassUID", "")) != ENCAPSULATED_PDF:
            raise NotFound(f"{sop_instance_uid} is not an encapsulated PDF")
        data = bytes(ds.EncapsulatedDocument)
        end = data.rfind(b"%%EOF")
        return data[: end + 5] if end >= 0 else data

    # sending to workstations ----------------------------------------------------------------------

    def send_studies(self, peer_ae_title: str, study_uids: list[str], *, progress=None, cancelled=lambda: False):
        """Push the studies to a registered peer (:class:`archive_core.net.scu.SendResult`), as retrieve-to-peer does."""
        from archive_core.peers import get_peer

        with self._archive.sessions() as s:
            peer = get_peer(s, peer_ae_title)
            query = Query(root=STUDY_ROOT, level="STUDY", conditions={"StudyInstanceUID": list(study_uids)})
            instances = instances_to_retrieve(s, query) if study_uids else []
        return self._push(peer, instances, progress=progress, cancelled=cancelled)

    def _push(self, peer, instances, *, progress=None, cancelled=lambda: False):
        from archive_core.net import tls
        from archive_core.net.scu import all_failed, send_instances

        settings = self._archive.settings
        try:
            tls_args = tls.tls_args(settings, peer)
        except tls.TLSConfigError as exc:  # nothing goes out in clear to a --tls peer
            return all_failed(instances, str(exc))
        return send_instances(
            lambda inst: self._archive.store_for(inst.tier).open(inst.storage_key), instances,
            host=peer.host, port=peer.port, called_ae=peer.ae_title, calling_ae=settings.DICOM_AE_TITLE,
            loop_delay=settings.DICOM_DUL_LOOP_DELAY, timeout=settings.DICOM_NETWORK_TIMEOUT,
            progress=progress, cancelled=cancelled, tls_args=tls_args,
        )

    def count_instances(self, study_uids: list[str]) -> int:
        with self._archive.sessions() as s:
            return s.scalar(select(func.coalesce(func.sum(Study.num_instances), 0)).where(
                    Study.study_uid.in_(study_uids), Study.deleted_at.is_(None)
                )) or 0

    def studies_received_since(self, since, *, include_external: bool = False, limit: int = 1000) -> list[StudySummary]:
        """Studies indexed at or after *since* (UTC), oldest first: what a prefetch looks at."""
        q = (
            select(Study, Patient)
            .join(Patient, Study.patient_pk == Patient.id)
            .where(Study.received_at >= since, Study.deleted_at.is_(None))
        )
        if not include_external:
            q = q.where(Study.external.is_(False))
        with self._archive.sessions() as s:
            return [_summary(st, pat) for st, pat in s.execute(q.order_by(Study.received_at, Study.id).limit(limit))]

    # CD/USB media -------------------------------------------------------------------------------

    def write_media(self, study_uids: list[str], dest, *, practice: dict[str, str] | None = None):
        """Write the studies as an IHE PDI file set (DICOMDIR, README.TXT) into the folder *dest*."""
        from archive_core.media import build_media

        return build_media(self, list(study_uids), dest, practice=practice or {})

    def media_zip(self, study_uids: list[str], workdir, *, practice: dict[str, str] | None = None) -> bytes:
        """The same file set zipped (built in the empty folder *workdir*, removed afterwards)."""
        from archive_core.media import build_media_zip

        return build_media_zip(self, list(study_uids), workdir, practice=practice or {})

__all__ += ["StudySummary", "SeriesSummary", "StudyDetail", "PriorStudy", "InstanceRef", "StudyPage", "DicomDocument"]
# -- end radiology ---------------------------------------------------------------------------------


# -- query/retrieve (issue 3) ----------------------------------------------------------------------
# Finding studies with C-FIND's matching rules, one study with its series and instances, priors of a
# study, and retrieve-to-peer. Study summaries are the radiology area's StudySummary.

from archive_core.index.matching import fold_text, wildcard_match  # noqa: E402
from archive_core.index.query import STUDY_ROOT, Query, find, instances_to_retrieve  # noqa: E402

__all__ += ["InstanceSummary", "PriorSummary", "RetrieveResult", "SeriesContents", "StudyContents"]


@dataclass(frozen=True)
class InstanceSummary:
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    transfer_syntax_uid: str
    size_bytes: int


@dataclass(frozen=True)
class SeriesContents:
    series_uid: str
    modality: str
    series_number: int | None
    series_description: str
    body_part_examined: str
    num_instances: int
    instances: tuple[InstanceSummary, ...]


@dataclass(frozen=True)
class StudyContents:
    study: StudySummary
    series: tuple[SeriesContents, ...]


@dataclass(frozen=True)
class PriorSummary:
    """Another study of the same patient, with what a caller needs to mark the relevant ones."""

    study_uid: str
    study_date: str
    study_time: str
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]
    description: str
    accession_number: str
    num_instances: int
    external: bool


@dataclass(frozen=True)
class RetrieveResult:
    completed: int
    failed: int
    warning: int
    failed_sop_instance_uids: tuple[str, ...]


def _row_summary(row: dict[str, Any]) -> StudySummary:
    return StudySummary(
        study_uid=row["StudyInstanceUID"],
        study_date=row["StudyDate"],
        study_time=row["StudyTime"],
        accession_number=row["AccessionNumber"],
        description=row["StudyDescription"],
        patient_id=row["PatientID"] or "",
        patient_name=row["PatientName"],
        patient_birth_date=row["PatientBirthDate"],
        patient_sex=row["PatientSex"],
        referring_physician_name=row["ReferringPhysicianName"],
        modalities=tuple(m for m in (row["ModalitiesInStudy"] or "").split("\\") if m),
        num_series=row["NumberOfStudyRelatedSeries"] or 0,
        num_instances=row["NumberOfStudyRelatedInstances"] or 0,
        external=bool(row["_external"]),
    )


class _QueryRetrieveMixin:
    _archive: Archive

    def find_studies(self, *, patient_id: str | None = None, patient_name: str | None = None,
                      date_from: str | None = None, date_to: str | None = None, modality: str | None = None,
                      accession_number: str | None = None, text: str | None = None, limit: int = 100,
                      offset: int = 0) -> list[StudySummary]:
        """Studies matching every criterion given, with C-FIND's matching rules (``*``/``?`` wildcards,
        person names case- and accent-insensitive); *text* looks for a fragment in the patient's
        name or ID, the accession number or the description. Dates are ``YYYYMMDD``, bounds included."""
        conditions: dict[str, Any] = {}
        if patient_id:
            conditions["PatientID"] = patient_id
        if patient_name:
            conditions["PatientName"] = patient_name
        if date_from or date_to:
            conditions["StudyDate"] = f"{date_from or ''}-{date_to or ''}"
        if modality:
            conditions["ModalitiesInStudy"] = modality
        if accession_number:
            conditions["AccessionNumber"] = accession_number
        with self._archive.sessions() as s:
            dialect = s.get_bind().dialect.name
            extra = []
            if text and text.strip():
                fragment = text.strip().replace("*", "").replace("?", "")
                extra.append(
                    or_(
                        wildcard_match(Patient.patient_name_search, f"*{fold_text(fragment)}*", dialect),
                        wildcard_match(Patient.patient_id, f"*{fragment}*", dialect),
                        wildcard_match(Study.accession_number, f"*{fragment}*", dialect),
                        wildcard_match(Study.study_description, f"*{fragment}*", dialect),
                    )
                )
            query = Query(root=STUDY_ROOT, level="STUDY", conditions=conditions)
            rows = find(s, query, limit=limit, offset=offset, extra=extra)
        return [_row_summary(r) for r in rows]

    def get_study(self, study_uid: str) -> StudyContents:
        """One study with its series and instances; :class:`NotFound` if it is not in the archive."""
        with self._archive.sessions() as s:
            rows = find(s, Query(root=STUDY_ROOT, level="STUDY", conditions={"StudyInstanceUID": study_uid}))
            if not rows:
                raise NotFound(f"no study {study_uid}")
            series_rows = s.execute(
                select(Series)
                .where(Series.study_pk == rows[0]["_study_pk"], Series.deleted_at.is_(None))
                .order_by(Series.series_number, Series.id)
            ).scalars().all()
            instances: dict[int, list[InstanceSummary]] = {}
            stmt = (
                select(Instance.series_pk, Instance.sop_instance_uid, Instance.sop_class_uid, Instance.instance_number,
                       Instance.transfer_syntax_uid, Instance.size_bytes)
                .join(Series, Instance.series_pk == Series.id)
                .where(Series.study_pk == rows[0]["_study_pk"], Instance.deleted_at.is_(None))
                .order_by(Instance.instance_number, Instance.id)
            )
            for series_pk, *values in s.execute(stmt):
                instances.setdefault(series_pk, []).append(InstanceSummary(*values))
            series = tuple(
                SeriesContents(
                    series_uid=se.series_uid,
                    modality=se.modality or "",
                    series_number=se.series_number,
                    series_description=se.series_description or "",
                    body_part_examined=se.body_part_examined or "",
                    num_instances=se.num_instances,
                    instances=tuple(instances.get(se.id, ())),
                )
                for se in series_rows
            )
        return StudyContents(study=_row_summary(rows[0]), series=series)

    def priors(self, study_uid: str) -> list[PriorSummary]:
        """The other studies of the same patient, newest first; :class:`NotFound` for an unknown study."""
        with self._archive.sessions() as s:
            patient_pk = s.scalar(
                select(Study.patient_pk).where(Study.study_uid == study_uid, Study.deleted_at.is_(None))
            )
            if patient_pk is None:
                raise NotFound(f"no study {study_uid}")
            studies = s.execute(
                select(Study)
                .where(Study.patient_pk == patient_pk, Study.study_uid != study_uid, Study.deleted_at.is_(None))
                .order_by(func.coalesce(Study.study_date, "").desc(), func.coalesce(Study.study_time_norm, "").desc(),
                          Study.id.desc())
            ).scalars().all()
            body_parts: dict[int, set[str]] = {}
            if studies:
                stmt = (
                    select(Series.study_pk, Series.body_part_examined)
                    .where(
                        Series.study_pk.in_([st.id for st in studies]),
                        Series.body_part_examined.is_not(None),
                        Series.deleted_at.is_(None),
                    )
                    .distinct()
                )
                for study_pk, part in s.execute(stmt):
                    body_parts.setdefault(study_pk, set()).add(part)
            return [
                PriorSummary(
                    study_uid=st.study_uid,
                    study_date=st.study_date or "",
                    study_time=st.study_time or "",
                    modalities=tuple(m for m in st.modalities_in_study.split("\\") if m),
                    body_parts=tuple(sorted(body_parts.get(st.id, ()))),
                    description=st.study_description or "",
                    accession_number=st.accession_number or "",
                    num_instances=st.num_instances,
                    external=st.external,
                )
                for st in studies
            ]

    def retrieve_to_peer(self, study_uids: list[str], ae_title: str, *,
                          actor: str = "system", actor_kind: str = "system") -> RetrieveResult:
        """Send whole studies to a registered peer (C-STORE, one association); audited per study.

        Raises :class:`~archive_core.errors.UnknownPeer` for an AE that is not registered and
        :class:`NotFound` when none of the studies is in the archive.
        """
        from archive_core.peers import get_peer

        with self._archive.sessions() as s:
            peer = get_peer(s, ae_title)
            query = Query(root=STUDY_ROOT, level="STUDY", conditions={"StudyInstanceUID": list(study_uids)})
            instances = instances_to_retrieve(s, query) if study_uids else []
        if not instances:
            raise NotFound("none of these studies is in the archive")
        result = self._push(peer, instances)
        with write_session(self._archive.sessions) as s:
            for uid in sorted({i.study_uid for i in instances}):
                detail = {"service": "retrieve_to_peer", "destination": peer.ae_title,
                          "completed": result.completed, "failed": result.failed}
                _audit.record(s, "study.retrieved", actor=actor, actor_kind=actor_kind, study_uid=uid, detail=detail)
        return RetrieveResult(result.completed, result.failed, result.warning, tuple(result.failed_uids))


# -- end query/retrieve ----------------------------------------------------------------------------


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


_INDEXER_START = threading.Lock()


class _DicomwebMixin:
    """DICOMweb (PS3.18) for the web edge: the core work is in :mod:`archive_core.dicomweb`."""

    _archive: Archive

    def qido_search(self, resource: str, params, *, base_url: str, study_uid: str | None = None,
                    series_uid: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
        """The QIDO-RS answer (DICOM JSON objects) and the match keys ignored; InvalidQuery for bad parameters."""
        from archive_core import dicomweb

        request = dicomweb.parse_qido(resource, params, study_uid=study_uid, series_uid=series_uid)
        with self._archive.sessions() as s:
            rows = find(s, request.query, limit=request.limit, offset=request.offset)
        return [dicomweb.qido_answer(request, row, base_url) for row in rows], request.ignored

    def stored_instances(self, study_uid: str, series_uid: str | None = None,
                         sop_instance_uid: str | None = None) -> list:
        """The stored instances a WADO-RS URL names, in study/series/instance order; NotFound when none."""
        from archive_core import dicomweb

        query = dicomweb.retrieve_query(study_uid, series_uid, sop_instance_uid)
        with self._archive.sessions() as s:
            found = instances_to_retrieve(s, query)
        if not found:
            raise NotFound("no such study, series or instance")
        return found

    def open_stored(self, stored) -> "io.BufferedIOBase":
        """The stored file of *stored* (from :meth:`stored_instances`), open for reading."""
        store = self._archive.store_for(stored.tier)
        if not store.exists(stored.storage_key):
            raise BlobMissing(f"file of {stored.sop_instance_uid} missing in the {stored.tier} tier")
        return store.open(stored.storage_key)

    def instance_metadata(self, found: list, *, base_url: str) -> list[dict[str, Any]]:
        """The DICOM JSON (PS3.18 F.2) of each stored instance, bulk data as BulkDataURIs under *base_url*."""
        from archive_core import dicomweb

        answers = []
        for stored in found:
            with self.open_stored(stored) as f:
                answers.append(dicomweb.metadata(f, stored, base_url))
        return answers

    def bulk_value(self, stored, tag: str) -> bytes:
        from archive_core import dicomweb

        with self.open_stored(stored) as f:
            return dicomweb.bulk_value(f, tag)

    def instance_frames(self, stored, frame_list: str, *, syntaxes: frozenset[str]) -> tuple[list[bytes], str]:
        """Frames ``1,3,..`` of a stored image (:func:`archive_core.dicomweb.frames`); InvalidQuery: a bad list."""
        from archive_core import dicomweb

        numbers = dicomweb.parse_frame_list(frame_list)
        with self.open_stored(stored) as f:
            return dicomweb.frames(f, numbers, syntaxes=syntaxes)

    def render_frame(self, sop_instance_uid: str, frame: int, *, window: tuple[float, float] | None,
                     viewport: int | None, quality: int, fmt: str) -> bytes:
        """Frame *frame* (from 1) rendered at full size or to fit *viewport*; InvalidQuery for bad parameters."""
        from archive_core.render import MAX_SIZE, RenderError, RenderParams

        try:
            params = RenderParams(frame=frame - 1, window_center=window[0] if window else None,
                                  window_width=window[1] if window else None,
                                  size=min(viewport or MAX_SIZE, MAX_SIZE), fmt=fmt, quality=quality)
            return self.render_instance(sop_instance_uid, params)
        except RenderError as exc:
            raise InvalidQuery(str(exc)) from None

    def stow(self, stream: BinaryIO, content_type: str, *, study_uid: str | None, actor: str,
             base_url: str) -> tuple[int, dict[str, Any], list[str]]:
        """STOW-RS: (HTTP status, PS3.18 response, failure reasons). The body is read from *stream*
        part by part into files under ``instance/spool`` (memory stays flat), which are removed on
        return. InvalidQuery for a malformed request (nothing stored); objects go through the C-STORE
        ingest path and are indexed on return."""
        import tempfile

        from archive_core import dicomweb

        spool = self._archive.settings.instance_path / "spool"
        spool.mkdir(mode=0o700, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="stow-", dir=spool) as directory:
            parts = dicomweb.spool_multipart(stream, content_type, Path(directory))
            with _INDEXER_START:
                if not self._archive.ingestor.running:
                    self._archive.ingestor.start(replay=False)  # as ``archive import``: the journal is the server's
            result = dicomweb.stow(self._archive, parts, study_uid=study_uid, actor=actor)
        status = 200 if not result.failed else 202 if result.stored else 409
        return status, dicomweb.stow_response(result, base_url, study_uid), [f[3] for f in result.failed]

    def converted_instance(self, stored, target_ts: str) -> bytes:
        """The Part 10 file of *stored* converted to an uncompressed *target_ts*, UIDs kept (the DIMSE
        sender's conversion); ValueError when *target_ts* is not one we convert to."""
        from pydicom import dcmwrite

        from archive_core.net.scu import convert

        with self.open_stored(stored) as f:
            ds = convert(f.read(), stored.transfer_syntax_uid, target_ts)
        ds.file_meta.MediaStorageSOPClassUID = stored.sop_class_uid
        ds.file_meta.MediaStorageSOPInstanceUID = stored.sop_instance_uid
        out = io.BytesIO()
        dcmwrite(out, ds, enforce_file_format=True)
        return out.getvalue()


class ArchiveFacade(_RadiologyMixin, _QueryRetrieveMixin, _DicomwebMixin):
    """One object per process; sessions it hands out are owned by the caller (the edge commits)."""

    def __init__(self, archive: Archive) -> None:
        self._archive = archive

    @classmethod
    def open(cls, settings: Settings) -> "ArchiveFacade":
        return cls(Archive.open(settings))

    @property
    def settings(self) -> Settings:
        return self._archive.settings

    @property
    def archive(self) -> Archive:
        return self._archive

    def new_session(self, *, write: bool = False) -> Session:
        """A session for the caller to commit; *write* takes SQLite's write lock at its first statement."""
        session = self._archive.sessions()
        if write and session.get_bind().dialect.name == "sqlite":
            session.connection(execution_options={"sqlite_immediate": True})
        return session

    def audit(self, session: Session, action: str, *, actor: str, actor_kind: str = "user", **fields: Any) -> None:
        """Append to the audit trail inside the caller's (write) transaction."""
        _audit.record(session, action, actor=actor, actor_kind=actor_kind, **fields)

    def audit_now(self, action: str, *, actor: str, actor_kind: str = "user", **fields: Any) -> None:
        """Append to the audit trail in a transaction of its own (for reads: a page that was viewed)."""
        with write_session(self._archive.sessions) as s:
            _audit.record(s, action, actor=actor, actor_kind=actor_kind, **fields)

    def audit_checkpoint(self, *, reason: str = "periodic", force: bool = False) -> int | None:
        """Sign the audit chain's head (key and log outside the database); the checkpoint's number, or
        None when nothing was appended since the last one (idempotent: a job may run it at any time)."""
        return _audit.checkpoint_instance(self._archive.sessions, self._archive.settings, reason=reason, force=force)

    def audit_details(self, session: Session, action_prefix: str) -> list[tuple[int, dict[str, Any]]]:
        """(event id, detail) of the audit events whose action starts with *action_prefix*, oldest first
        (``billing verify`` holds the billing records against what these events recorded)."""
        rows = session.execute(select(_audit.AuditEvent.id, _audit.AuditEvent.detail)
                               .where(_audit.AuditEvent.action.startswith(action_prefix, autoescape=True))
                               .order_by(_audit.AuditEvent.id)).all()
        out = []
        for event_id, detail in rows:
            try:
                parsed = json.loads(detail or "{}")
            except ValueError:
                parsed = {}
            out.append((event_id, parsed if isinstance(parsed, dict) else {}))
        return out

    def audit_verify(self) -> "_audit.ChainReport":
        """The audit chain held against every signed checkpoint (see :func:`archive_core.audit.verify`)."""
        return _audit.verify_instance(self._archive.sessions, self._archive.settings)

    def audit_events(self, session: Session, *, patient_id: str | None = None, actor: str | None = None,
                     action: str | None = None, since: datetime | None = None, before: datetime | None = None,
                     limit: int | None = None) -> Iterable[AuditEntry]:
        """Audit events matching every criterion given, newest first (*since* included, *before* excluded)."""
        return _audit.search(session, patient_id=patient_id, actor=actor, action=action, since=since, before=before,
                             limit=limit)

    def audit_actions(self, session: Session) -> list[str]:
        """The actions the audit trail holds, each once."""
        return _audit.actions(session)

    def stats(self) -> ArchiveStats:
        with self._archive.sessions() as s:
            return ArchiveStats(
                patients=s.scalar(select(func.count(Patient.id)).where(Patient.deleted_at.is_(None))) or 0,
                studies=s.scalar(select(func.count(Study.id)).where(Study.deleted_at.is_(None))) or 0,
                instances=s.scalar(select(func.count(Instance.id)).where(Instance.deleted_at.is_(None))) or 0,
                bytes_stored=s.scalar(
                    select(func.coalesce(func.sum(Instance.size_bytes), 0)).where(Instance.deleted_at.is_(None))
                ) or 0,
            )

    def journal_backlog(self) -> int:
        """How many received objects wait in the ingest journal (only while the archive is down)."""
        return len(self._archive.store.incoming())

    def list_studies(
        self,
        *,
        study_date: str | None = None,
        patient_id: str | None = None,
        study_uids: tuple[str, ...] | None = None,
        include_undated: bool = False,
        limit: int = 5000,
    ) -> list[StudySummary]:
        """Visible studies filtered by exact date (YYYYMMDD), exact Patient ID and/or UIDs, oldest first.

        *include_undated* adds the studies that carry no Study Date with those of *study_date*.
        """
        query = (
            select(Study, Patient)
            .join(Patient, Study.patient_pk == Patient.id)
            .where(Study.deleted_at.is_(None), Patient.deleted_at.is_(None))
        )
        if study_date is not None:
            dated = Study.study_date == study_date
            if include_undated:
                dated = or_(dated, Study.study_date.is_(None), Study.study_date == "")
            query = query.where(dated)
        if patient_id is not None:
            query = query.where(Patient.patient_id == patient_id)
        if study_uids is not None:
            query = query.where(Study.study_uid.in_(study_uids))
        with self._archive.sessions() as s:
            rows = s.execute(query.order_by(Study.id).limit(limit)).all()
            return [_summary(st, p) for st, p in rows]

    def search_patients(self, session: Session, text: str, limit: int = 100, offset: int = 0) -> PatientSearchPage:
        """The one patient search of every page and the API: name words in any order, case and
        accents, partial words, birth date (``12/03/1961`` or ISO), patient ID; best first."""
        return _patient_search.search(session, text, limit=limit, offset=offset)

    def find_patient(self, session: Session, patient_id: str) -> PatientMatch | None:
        """The visible patient with exactly this Patient ID (the first by issuer), or None."""
        if not patient_id:
            return None
        return next((m for m in _patient_search.search(session, patient_id, limit=20).items
                     if m.patient_id == patient_id), None)

    # -- modality worklist ------------------------------------------------------------------------

    def schedule_procedure_step(self, session: Session, *, patient_id: str, patient_name: str | None,
                                patient_birth_date: str | None, patient_sex: str | None, modality: str,
                                start: datetime, created_by: str, station_ae_title: str | None = None,
                                procedure_description: str | None = None,
                                accession_number: str | None = None) -> ScheduledStep:
        """A scheduled procedure step (SCHEDULED) the modality's worklist query finds, in the caller's
        transaction: *patient_name* in DICOM PN form (``DUPRÉ^Jean``), *patient_birth_date* as DA,
        *start* local wall-clock time. The accession number is generated unless given (then it must be new:
        :class:`DuplicateAccession`)."""
        return _worklist.schedule(session, patient_id=patient_id, patient_name=patient_name,
                                  patient_birth_date=patient_birth_date, patient_sex=patient_sex, modality=modality,
                                  start=start, created_by=created_by, station_ae_title=station_ae_title,
                                  procedure_description=procedure_description, accession_number=accession_number)

    def procedure_steps(self, session: Session, accession_numbers: list[str]) -> dict[str, ScheduledStep]:
        """The worklist items of these accession numbers (status SCHEDULED, IN PROGRESS, COMPLETED, ...)."""
        return _worklist.steps_by_accession(session, [a for a in accession_numbers if a])

    def patient_names(self, session: Session, patient_ids: Iterable[str]) -> dict[str, str]:
        """DICOM Patient's Name (``NOM^Prénom``) of each visible patient among *patient_ids* (one query)."""
        wanted = sorted({p for p in patient_ids if p})
        if not wanted:
            return {}
        rows = session.execute(select(Patient.patient_id, Patient.patient_name)
                               .where(Patient.patient_id.in_(wanted), Patient.deleted_at.is_(None))).all()
        return {pid: name for pid, name in rows if name}

    # -- retention: records, tiers, tombstones, purge, corrections ------------------------------

    def patient_records(self, session: Session, *, patient_id: str | None = None,
                        patient_pks: Iterable[int] | None = None) -> list[PatientRecord]:
        """Every visible patient (or those with *patient_id*, or of row ids *patient_pks*), with what the
        retention rule needs."""
        if patient_pks is not None:
            wanted = sorted(set(patient_pks))
            out: list[PatientRecord] = []
            for start in range(0, len(wanted), 2000):  # bound the parameters of one statement
                out.extend(self._patient_records(session, patient_id, wanted[start:start + 2000]))
            return out
        return self._patient_records(session, patient_id, None)

    def _patient_records(self, session: Session, patient_id: str | None,
                         patient_pks: list[int] | None) -> list[PatientRecord]:
        query = select(Patient).where(Patient.deleted_at.is_(None)).order_by(Patient.id)
        if patient_id is not None:
            query = query.where(Patient.patient_id == patient_id)
        if patient_pks is not None:
            if not patient_pks:
                return []
            query = query.where(Patient.id.in_(patient_pks))
        patients = list(session.scalars(query))
        if not patients:
            return []
        pks = [p.id for p in patients] if patient_id is not None or patient_pks is not None else None
        studies = select(Study.patient_pk, Study.study_date, Study.external).where(Study.deleted_at.is_(None))
        usage = (
            select(Study.patient_pk, Instance.tier, func.count(Instance.id), func.coalesce(func.sum(Instance.size_bytes), 0))
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
            .where(Instance.deleted_at.is_(None))
            .group_by(Study.patient_pk, Instance.tier)
        )
        if pks is not None:
            # For a few patients, by patient: without statistics SQLite would walk the deleted_at index (every
            # row NULL) and look at every study and image (100 patients of 100,000: 190 ms instead of 5 ms).
            # The tombstoned rows are left out here instead of by the query.
            studies = (select(Study.patient_pk, Study.study_date, Study.external, Study.deleted_at.is_(None))
                       .where(Study.patient_pk.in_(pks)))
            alive = Instance.deleted_at.is_(None)
            usage = (
                select(Study.patient_pk, Instance.tier, func.count(Instance.id),
                       func.coalesce(func.sum(Instance.size_bytes), 0), alive)
                .join(Series, Instance.series_pk == Series.id)
                .join(Study, Series.study_pk == Study.id)
                .where(Study.patient_pk.in_(pks))
                .group_by(Study.patient_pk, Instance.tier, alive)
            )
        visits: dict[int, list[str]] = {}
        counts: dict[int, int] = {}
        for pk, study_date, external, *visible in session.execute(studies):
            if visible and not visible[0]:
                continue
            counts[pk] = counts.get(pk, 0) + 1
            if not external and study_date:
                visits.setdefault(pk, []).append(study_date)
        tiers: dict[int, dict[str, tuple[int, int]]] = {}
        for pk, tier, n, size, *visible in session.execute(usage):
            if visible and not visible[0]:
                continue
            tiers.setdefault(pk, {})[tier] = (n, int(size))
        return [
            PatientRecord(
                patient_pk=p.id,
                patient_id=p.patient_id,
                issuer_of_patient_id=p.issuer_of_patient_id,
                birth_date=p.patient_birth_date,
                visit_dates=tuple(sorted(visits.get(p.id, []))),
                studies=counts.get(p.id, 0),
                instances_active=tiers.get(p.id, {}).get("active", (0, 0))[0],
                instances_archive=tiers.get(p.id, {}).get("archive", (0, 0))[0],
                bytes_total=sum(size for _n, size in tiers.get(p.id, {}).values()),
                patient_name=p.patient_name,
            )
            for p in patients
        ]

    def patients_with_active_images(self, session: Session) -> set[int]:
        """Row ids of the patients who have at least one visible image still in the active tier (the
        tier moves' candidates; served by the instance index on deleted_at, tier)."""
        query = (select(Study.patient_pk).distinct()
                 .join(Series, Series.study_pk == Study.id)
                 .join(Instance, Instance.series_pk == Series.id)
                 .where(Instance.deleted_at.is_(None), Instance.tier == "active"))
        return set(session.scalars(query))

    def studies_by_day_and_modalities(self, session: Session, since: str, until: str) -> list[tuple[str, str, int]]:
        """(Study Date, Modalities in Study as stored, number of studies) of the practice's own visible
        studies dated *since*..*until* (DICOM DA, inclusive); outside priors are not the practice's work."""
        rows = session.execute(
            select(Study.study_date, Study.modalities_in_study, func.count(Study.id))
            .where(Study.study_date >= since, Study.study_date <= until, Study.deleted_at.is_(None),
                   Study.external.is_(False))
            .group_by(Study.study_date, Study.modalities_in_study)
        ).all()
        return [(d, m or "", int(n)) for d, m, n in rows]

    def data_version(self, session: Session) -> tuple:
        """Changes whenever a study or image arrives, is tombstoned or moves tier (cheap: indexed maxima).

        A figure computed from studies and images may be reused as long as this is unchanged.
        """
        return (
            session.scalar(select(func.max(Study.id))), session.scalar(select(func.max(Study.deleted_at))),
            session.scalar(select(func.max(Instance.id))), session.scalar(select(func.max(Instance.deleted_at))),
            session.scalar(select(func.max(_audit.AuditEvent.id)).where(_audit.AuditEvent.action == "tier.moved")),
        )

    def storage_history(self, session: Session, boundaries: list[datetime]) -> tuple[dict[str, int], list[int]]:
        """Visible bytes per tier today, and for each instant of *boundaries* the bytes received after it
        (what the store held at that instant is today's total less that, tombstoned data aside)."""
        per_tier = dict(session.execute(
            select(Instance.tier, func.coalesce(func.sum(Instance.size_bytes), 0))
            .where(Instance.deleted_at.is_(None)).group_by(Instance.tier)).all())
        if not boundaries:
            return {t: int(b) for t, b in per_tier.items()}, []
        sums = [func.coalesce(func.sum(case((Instance.received_at >= b, Instance.size_bytes), else_=0)), 0)
                for b in boundaries]
        after = session.execute(select(*sums).where(Instance.deleted_at.is_(None),
                                                    Instance.received_at >= min(boundaries))).one()
        return {t: int(b) for t, b in per_tier.items()}, [int(a) for a in after]

    def storage_usage(self, session: Session) -> list[StorageUsage]:
        """Visible data by tier, study year and modality."""
        year = func.coalesce(func.substr(Study.study_date, 1, 4), "")
        modality = func.coalesce(Series.modality, "")
        rows = session.execute(
            select(Instance.tier, year, modality, func.count(Instance.id), func.coalesce(func.sum(Instance.size_bytes), 0))
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
            .where(Instance.deleted_at.is_(None))
            .group_by(Instance.tier, year, modality)
            .order_by(Instance.tier, year, modality)
        ).all()
        return [StorageUsage(t, y, m, n, int(b)) for t, y, m, n, b in rows]

    def peers(self, session: Session) -> list[PeerInfo]:
        """The registered DICOM peers, by AE title."""
        return _peers.list_peers(session)

    def find_peer(self, session: Session, ae_title: str) -> PeerInfo | None:
        """The registered peer of that AE title, if any."""
        return _peers.find_peer(session, ae_title)

    def move_patient_to_archive(self, patient_pk: int, *, actor: str = "scheduler",
                                actor_kind: str = "system") -> TierMove:
        """Copy and verify, then switch the index and audit ``tier.moved`` in one transaction, then drop the
        active copies: the patient's files now live in the archive tier (owns its transactions)."""
        from archive_core.tiers import move_patient_to_archive

        return move_patient_to_archive(self._archive, patient_pk, actor=actor, actor_kind=actor_kind)

    def read_instance(self, sop_instance_uid: str) -> bytes:
        """The stored Part 10 file of an instance, whichever tier holds it."""
        from archive_core.tiers import read_instance

        return read_instance(self._archive, sop_instance_uid)

    def tombstone_patient(self, session: Session, patient_id: str, issuer: str, *, at: datetime) -> TombstoneResult:
        from archive_core.purge import tombstone_patient

        return tombstone_patient(session, patient_id, issuer, at=at)

    def tombstone_study(self, session: Session, study_uid: str, *, at: datetime) -> TombstoneResult:
        from archive_core.purge import tombstone_study

        return tombstone_study(session, study_uid, at=at)

    def delete_tombstoned_files(self, sop_instance_uids: list[str] | tuple[str, ...]) -> int:
        """Delete files of tombstoned instances only (committed tombstones; idempotent)."""
        from archive_core.purge import delete_tombstoned_files

        deleted = delete_tombstoned_files(self._archive, sop_instance_uids)
        for uid in sop_instance_uids:  # renders of purged images go with them (radiology)
            self.renderer.cache.forget(uid)
        return deleted

    def study_owner(self, session: Session, study_uid: str) -> tuple[str, str] | None:
        """(patient ID, issuer) of a visible study."""
        row = session.execute(
            select(Patient.patient_id, Patient.issuer_of_patient_id)
            .join(Study, Study.patient_pk == Patient.id)
            .where(Study.study_uid == study_uid, Study.deleted_at.is_(None))
        ).first()
        return (row[0], row[1]) if row else None

    def visible_studies(self, session: Session, *, patient: tuple[str, str] | None = None,
                        study_uids: tuple[str, ...] | None = None) -> list[StudySummary]:
        """Visible studies of one patient (ID, issuer) and/or with these UIDs, in the caller's transaction."""
        query = (
            select(Study, Patient).join(Patient, Study.patient_pk == Patient.id)
            .where(Study.deleted_at.is_(None), Patient.deleted_at.is_(None))
        )
        if patient is not None:
            query = query.where(Patient.patient_id == patient[0], Patient.issuer_of_patient_id == patient[1])
        if study_uids is not None:
            query = query.where(Study.study_uid.in_(study_uids))
        return [_summary(st, p) for st, p in session.execute(query.order_by(Study.study_uid)).all()]

    def move_study(self, session: Session, study_uid: str, to_patient_id: str, to_issuer: str = "") -> str:
        """File a study under another patient; its stored files are rewritten with that patient's identity.

        The replaced files are deleted when *session* commits (the new ones if it rolls back).
        """
        from archive_core.corrections import move_study

        return move_study(session, self._archive, study_uid, to_patient_id, to_issuer)[0]

    def merge_patients(self, session: Session, source_id: str, target_id: str, *, at: datetime) -> int:
        """Merge *source* into *target*: studies moved and their files rewritten (as :meth:`move_study`)."""
        from archive_core.corrections import merge_patients

        return merge_patients(session, self._archive, source_id, target_id, at=at)[0]
