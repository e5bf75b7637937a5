"""The facade the back-office uses: plain frozen dataclasses in, plain frozen dataclasses out.

A table of contents: :class:`ArchiveFacade` names every job the back-office may ask of the core and
delegates each in a line or two to the module that does it:

- :mod:`~archive_core.api.types`: the data classes and the SOP classes the pages treat apart;
- :mod:`~archive_core.api.studies`: the study listings (one query of visible studies behind them);
- :mod:`~archive_core.api.contents`: one study's series and instances, priors;
- :mod:`~archive_core.api.reports`: PDFs and structured reports that arrived over DICOM;
- :mod:`~archive_core.api.records`: figures over the index (retention records, storage, counts);
- :mod:`~archive_core.api.transfer`: sending studies to a peer; :mod:`~archive_core.api.web`: DICOMweb;
- and the core modules themselves (audit, worklist, patient search, peers, tiers, purge, corrections, media).

The back-office imports this package only (never a submodule): everything it needs is re-exported here
(tests/unit/test_boundary.py holds it to that). This module is longer than the house's ~400 lines on
purpose: it is the index of every call (68 methods of a line or two each, with their signatures and
docstrings, and the re-exports); splitting the class by area would bring the mixins back, or hand the
back-office several facades to find its way among.

Every method that reads or writes the index takes the caller's *session*: the edge (the Flask request,
the scheduler job, the CLI command) owns the transaction and commits it. The few that open their own say
why (see :class:`ArchiveFacade`).
"""

from __future__ import annotations

import io
from datetime import date as _date
from datetime import datetime
from functools import partial
from types import SimpleNamespace
from typing import Any, BinaryIO, Iterable

from sqlalchemy.orm import Session

from archive_core import audit as _audit
from archive_core import commands  # the core's own commands; the flask CLI wraps them
from archive_core import corrections as _corrections
from archive_core import peers as _peers
from archive_core import purge as _purge
from archive_core import tiers as _tiers
from archive_core import worklist as _worklist
from archive_core.api import contents as _contents
from archive_core.api import records as _records
from archive_core.api import reports as _reports
from archive_core.api import studies as _studies
from archive_core.api import transfer as _transfer
from archive_core.api import web as _web
from archive_core.api.studies import escape_like
from archive_core.api.types import (
    ENCAPSULATED_PDF,
    NON_IMAGE_CLASSES,
    SR_CLASSES,
    ArchiveStats,
    DicomDocument,
    InstanceRef,
    InstanceSummary,
    PatientRecord,
    PriorStudy,
    PriorSummary,
    RetrieveResult,
    SeriesContents,
    SeriesSummary,
    StorageUsage,
    StudyContents,
    StudyDetail,
    StudyPage,
    StudySummary,
)
from archive_core.archive import Archive
from archive_core.audit import AuditEntry, ChainReport
from archive_core.commands import CommandFailed
from archive_core.config import Settings, ensure_instance, instance_path_from_env, private_files
from archive_core.db import Base, UtcDateTime
from archive_core.errors import (
    ArchiveError,
    BlobMissing,
    DuplicateConflict,
    IdentityConflict,
    InvalidDataset,
    InvalidIdentifier,
    InvalidQuery,
    JournalBusy,
    NotFound,
    ObjectTooLarge,
    StorageFull,
    StorageRefused,
    StorageUnavailable,
    TooManyMatches,
    UnknownPeer,
)
from archive_core.index import patient_search as _patient_search
from archive_core.index.matching import fold_text
from archive_core.index.patient_search import PatientMatch, PatientSearchPage
from archive_core.audit_writer import AuditWriter
from archive_core.peers import PeerInfo
from archive_core.purge import TombstoneResult
from archive_core.render import PRESETS, RenderError, RenderParams
from archive_core.retention import (
    ACTIVE_TIER_YEARS, HoldPeriod, RetentionDecision, RetentionFacts, add_years, decide,
)
from archive_core.tiers import TierMove
from archive_core.values import utcnow
from archive_core.worklist import DuplicateAccession, ScheduledStep, WorklistError

__all__ = ["ArchiveFacade", "Base", "UtcDateTime", "utcnow", "escape_like", "fold_text", "Settings", "commands",
           "CommandFailed", "ensure_instance", "instance_path_from_env", "private_files"]
# the data classes
__all__ += ["ArchiveStats", "DicomDocument", "InstanceRef", "InstanceSummary", "PatientRecord", "PriorStudy",
            "PriorSummary", "RetrieveResult", "SeriesContents", "SeriesSummary", "StorageUsage", "StudyContents",
            "StudyDetail", "StudyPage", "StudySummary", "ENCAPSULATED_PDF", "NON_IMAGE_CLASSES", "SR_CLASSES"]
# the domain errors the back-office maps at its edges
__all__ += ["ArchiveError", "BlobMissing", "DuplicateConflict", "IdentityConflict", "InvalidDataset",
            "InvalidIdentifier", "InvalidQuery", "JournalBusy", "NotFound", "ObjectTooLarge", "StorageFull",
            "StorageRefused", "StorageUnavailable", "TooManyMatches", "UnknownPeer"]
# what other core modules hand out through the facade
__all__ += ["AuditEntry", "ChainReport", "PatientMatch", "PatientSearchPage", "PeerInfo", "DuplicateAccession",
            "ScheduledStep", "WorklistError", "PRESETS", "RenderError", "RenderParams", "HoldPeriod",
            "RetentionDecision", "RetentionFacts", "decide", "ACTIVE_TIER_YEARS", "add_years", "TierMove", "TombstoneResult"]


class ArchiveFacade:
    """One object per process; sessions it hands out are owned by the caller (the edge commits).

    A method that reads or writes the index takes the caller's *session* (the Flask request, the
    scheduler job, the CLI command owns the transaction and commits it). The few that open their own say
    why in their docstring: ``audit_now`` (an access record written from a read-only request),
    ``audit_checkpoint``/``audit_verify`` (the whole chain, outside any request), ``read_instance`` (the
    renderer's cache miss), ``send_studies``/``retrieve_to_peer`` (no transaction held over a DICOM
    association), ``stow`` (the C-STORE ingest path indexes each object in its own transaction),
    ``move_patient_to_archive`` and ``delete_tombstoned_files`` (files changed around commits).
    """

    def __init__(self, archive: Archive) -> None:
        self._archive = archive
        # Access records of searches, written off the answer path (see audit_soon).
        self._audit_queue = AuditWriter(partial(_audit.append_many_now, archive.engine), name="audit-queue")

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

    # -- audit trail ------------------------------------------------------------------------------

    def audit(self, session: Session, action: str, *, actor: str, actor_kind: str = "user", **fields: Any) -> None:
        """Append to the audit trail inside the caller's (write) transaction."""
        _audit.record(session, action, actor=actor, actor_kind=actor_kind, **fields)

    def audit_now(self, action: str, *, actor: str, actor_kind: str = "user", **fields: Any) -> None:
        """Append to the audit trail in a short write transaction of its own: for a page that was viewed,
        whose request holds a read-only session (on SQLite, upgrading it to write could deadlock with
        another writer), and whose access is recorded even if the page then fails to render."""
        self.audit_flush()  # the searches queued before it come first in the trail
        _audit.append_now(self._archive.engine, action, actor=actor, actor_kind=actor_kind, **fields)

    def audit_soon(self, action: str, *, actor: str, actor_kind: str = "user", **fields: Any) -> None:
        """Queue an access record and return at once: a search's (QIDO-RS), audited as a C-FIND is.

        One writer thread appends what is queued, in one transaction per batch, as soon as it is
        queued (group commit): a search's answer does not wait for the audit trail's fsync, and the
        writer's few statements are all it costs the process. What is queued is written before any
        later :meth:`audit_now` of this process, and by :meth:`audit_flush`, which the web process
        calls when it stops; a process killed outright may lose the events of its last milliseconds
        (docs/conformance.md, DICOMweb). A failed write is logged."""
        self._audit_queue.add({"action": action, "actor": actor, "actor_kind": actor_kind, **fields})

    def audit_flush(self, timeout: float | None = None) -> bool:
        """Wait until every record queued by :meth:`audit_soon` so far is written (or its failure
        logged); False if *timeout* seconds passed first."""
        return self._audit_queue.wait(self._audit_queue.queued, timeout)

    def audit_checkpoint(self, *, reason: str = "periodic", force: bool = False) -> int | None:
        """Sign the audit chain's head (key and log outside the database); the checkpoint's number, or
        None when nothing was appended since the last one (idempotent: a job may run it at any time).
        Owns its transaction: it locks the chain, writes the signed log line, and commits at once."""
        return _audit.checkpoint_instance(self._archive.sessions, self._archive.settings, reason=reason, force=force)

    def audit_details(self, session: Session, action_prefix: str) -> list[tuple[int, dict[str, Any]]]:
        """(event id, detail) of the audit events whose action starts with *action_prefix*, oldest first
        (``billing verify`` holds the billing records against what these events recorded)."""
        return _records.audit_details(session, action_prefix)

    def audit_verify(self) -> "_audit.ChainReport":
        """The audit chain held against every signed checkpoint (see :func:`archive_core.audit.verify`);
        reads it in a read-only session of its own (a command over the whole archive, not a request)."""
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

    # -- figures ----------------------------------------------------------------------------------

    def stats(self, session: Session) -> ArchiveStats:
        """Counts of visible patients, studies, series and images, and the bytes they hold."""
        return _records.stats(session)

    def journal_backlog(self) -> int:
        """How many received objects wait in the ingest journal (only while the archive is down)."""
        return len(self._archive.store.incoming())

    def data_version(self, session: Session) -> tuple:
        """Changes whenever a study or image arrives, is tombstoned or moves tier (cheap: indexed maxima).

        A figure computed from studies and images may be reused as long as this is unchanged.
        """
        return _records.data_version(session)

    def storage_history(self, session: Session, boundaries: list[datetime]) -> tuple[dict[str, int], list[int]]:
        """Visible bytes per tier today, and for each instant of *boundaries* the bytes received after it
        (what the store held at that instant is today's total less that, tombstoned data aside)."""
        return _records.storage_history(session, boundaries)

    def storage_usage(self, session: Session) -> list[StorageUsage]:
        """Visible data by tier, study year and modality."""
        return _records.storage_usage(session)

    # -- study listings ---------------------------------------------------------------------------

    def browse_studies(self, session: Session, *, patient: str = "", date_from: _date | str | None = None,
                       date_to: _date | str | None = None, modality: str = "", accession: str = "",
                       description: str = "", limit: int = 50, offset: int = 0) -> StudyPage:
        """Studies newest first; *patient* is what the patient search understands (see search_patients)."""
        return _studies.browse(session, patient=patient, date_from=date_from, date_to=date_to, modality=modality,
                               accession=accession, description=description, limit=limit, offset=offset)

    def find_studies(self, session: Session, *, patient_id: str | None = None, patient_name: str | None = None,
                     date_from: str | None = None, date_to: str | None = None, modality: str | None = None,
                     accession_number: str | None = None, text: str | None = None, limit: int = 100,
                     offset: int = 0) -> list[StudySummary]:
        """Studies matching every criterion given, with C-FIND's matching rules (``*``/``?`` wildcards,
        person names case- and accent-insensitive); *text* looks for a fragment in the patient's
        name or ID, the accession number or the description. Dates are ``YYYYMMDD``, bounds included."""
        return _studies.find_matching(session, patient_id=patient_id, patient_name=patient_name, date_from=date_from,
                                      date_to=date_to, modality=modality, accession_number=accession_number,
                                      text=text, limit=limit, offset=offset)

    def list_studies(self, session: Session, *, study_date: str | None = None, patient_id: str | None = None,
                     study_uids: tuple[str, ...] | None = None, include_undated: bool = False,
                     limit: int = 5000) -> list[StudySummary]:
        """Visible studies filtered by exact date (YYYYMMDD), exact Patient ID and/or UIDs, oldest first.

        *include_undated* adds the studies that carry no Study Date with those of *study_date*.
        """
        return _studies.exact_list(session, study_date=study_date, patient_id=patient_id, study_uids=study_uids,
                                   include_undated=include_undated, limit=limit)

    def visible_studies(self, session: Session, *, patient: tuple[str, str] | None = None,
                        study_uids: tuple[str, ...] | None = None) -> list[StudySummary]:
        """Visible studies of one patient (ID, issuer) and/or with these UIDs, in the caller's transaction."""
        return _studies.visible(session, patient=patient, study_uids=study_uids)

    def studies_received_since(self, session: Session, since, *, include_external: bool = False,
                               limit: int = 1000) -> list[StudySummary]:
        """Studies indexed at or after *since* (UTC), oldest first: what a prefetch looks at."""
        return _studies.received_since(session, since, include_external=include_external, limit=limit)

    def studies_by_day_and_modalities(self, session: Session, since: str, until: str) -> list[tuple[str, str, int]]:
        """(Study Date, Modalities in Study as stored, number of studies) of the practice's own visible
        studies dated *since*..*until* (DICOM DA, inclusive); outside priors are not the practice's work."""
        return _studies.by_day_and_modalities(session, since, until)

    def study_owner(self, session: Session, study_uid: str) -> tuple[str, str] | None:
        """(patient ID, issuer) of a visible study."""
        return _studies.owner(session, study_uid)

    def count_instances(self, session: Session, study_uids: list[str]) -> int:
        """Visible instances of these studies (a send job's total)."""
        return _studies.count_instances(session, study_uids)

    # -- one study --------------------------------------------------------------------------------

    def study_detail(self, session: Session, study_uid: str) -> StudyDetail:
        """The study, its patient and its series (with the first instance of each, for thumbnails)."""
        return _contents.detail(session, study_uid)

    def get_study(self, session: Session, study_uid: str) -> StudyContents:
        """:meth:`study_detail` whose series carry their instances; :class:`NotFound` if it is not in the archive."""
        return _contents.detail(session, study_uid, with_instances=True)

    def priors(self, session: Session, study_uid: str) -> list[PriorSummary]:
        """The other studies of the same patient, newest first; :class:`NotFound` for an unknown study."""
        return _contents.priors(session, study_uid)

    def prior_studies(self, session: Session, study_uid: str) -> list[PriorStudy]:
        """The patient's other studies (:meth:`priors`, newest first); relevant = same modality or body part."""
        return _contents.prior_studies(session, study_uid)

    def series_instances(self, session: Session, series_uid: str) -> list[InstanceRef]:
        """The instances of a series in reading order (instance number)."""
        return _contents.series_instances(session, series_uid)

    def study_instances(self, session: Session, study_uid: str) -> list[InstanceRef]:
        """The visible instances of a study, series by series in reading order."""
        return _contents.study_instances(session, study_uid)

    def instance_study_uid(self, session: Session, sop_instance_uid: str) -> str:
        """The study an instance belongs to (to check a share link or audit a view)."""
        return _contents.instance_study_uid(session, sop_instance_uid)

    # -- stored objects, rendering, reports -------------------------------------------------------

    def read_instance(self, sop_instance_uid: str) -> bytes:
        """The stored Part 10 file of an instance, whichever tier holds it. Looks its storage key up in a
        read of its own: the renderer calls it on a cache miss, outside any caller's transaction."""
        return _tiers.read_instance(self._archive, sop_instance_uid)

    def read_dataset(self, sop_instance_uid: str):
        """The stored object as a pydicom Dataset, whichever tier holds it (a copy: the caller may change it)."""
        from archive_core.render import parse_dataset

        return parse_dataset(self.read_instance(sop_instance_uid))

    def number_of_frames(self, sop_instance_uid: str) -> int:
        """Frames of a stored object (its header only is read)."""
        from pydicom import dcmread

        from archive_core.render import number_of_frames

        return number_of_frames(dcmread(io.BytesIO(self.read_instance(sop_instance_uid)), stop_before_pixels=True,
                                        force=True))

    @property
    def renderer(self):
        from archive_core.render import RenderCache, Renderer

        if getattr(self, "_renderer", None) is None:
            max_bytes = int(self._archive.settings.extra.get("RENDER_CACHE_MAX_BYTES", 512 * 1024**2))
            cache = RenderCache(self._archive.settings.instance_path / "cache" / "render", max_bytes)
            self._renderer = Renderer(self.read_dataset, cache)
        return self._renderer

    def render_instance(self, session: Session, sop_instance_uid: str, params) -> bytes:
        """One frame of a stored image as PNG/JPEG bytes (:class:`archive_core.render.RenderParams`)."""
        # Every request asks the index (a purged image is never served from the cache; a replaced one
        # is rendered anew: its checksum is part of the cache key).
        checksum = _contents.instance_checksum(session, sop_instance_uid)
        return self.renderer.render(sop_instance_uid, params, version=checksum)

    def study_documents(self, session: Session, study_uid: str) -> list[DicomDocument]:
        """Encapsulated PDFs and structured reports stored in the study, oldest first."""
        return _reports.documents(self.study_instances(session, study_uid), self.read_dataset)

    def document_pdf(self, sop_instance_uid: str) -> bytes:
        """The PDF of an Encapsulated PDF object (trailing padding removed)."""
        return _reports.pdf(self.read_dataset(sop_instance_uid), sop_instance_uid)

    # -- sending to peers, CD/USB media -----------------------------------------------------------

    def send_studies(self, peer_ae_title: str, study_uids: list[str], *, progress=None, cancelled=lambda: False):
        """Push the studies to a registered peer (:class:`archive_core.net.push.SendResult`), as retrieve-to-peer
        does; reads what to send in a transaction of its own, closed before the association opens."""
        return _transfer.send_studies(self._archive, peer_ae_title, study_uids, progress=progress, cancelled=cancelled)

    def retrieve_to_peer(self, study_uids: list[str], ae_title: str, *,
                         actor: str = "system", actor_kind: str = "system") -> RetrieveResult:
        """Send whole studies to a registered peer (C-STORE, one association); audited per study.

        Raises :class:`~archive_core.errors.UnknownPeer` for an AE that is not registered and
        :class:`NotFound` when none of the studies is in the archive. Owns its transactions (none is held
        over the association; the audit is written once the peer answered).
        """
        return _transfer.retrieve_to_peer(self._archive, study_uids, ae_title, actor=actor, actor_kind=actor_kind)

    def write_media(self, session: Session, study_uids: list[str], dest, *, practice: dict[str, str] | None = None):
        """Write the studies as an IHE PDI file set (DICOMDIR, README.TXT) into the folder *dest*."""
        from archive_core.media import build_media

        return build_media(self.media_source(session), list(study_uids), dest, practice=practice or {})

    def media_zip(self, session: Session, study_uids: list[str], workdir, *,
                  practice: dict[str, str] | None = None) -> bytes:
        """The same file set zipped (built in the empty folder *workdir*, removed afterwards)."""
        from archive_core.media import build_media_zip

        return build_media_zip(self.media_source(session), list(study_uids), workdir, practice=practice or {})

    def media_source(self, session: Session) -> SimpleNamespace:
        """What the media writer reads (:class:`archive_core.media.MediaSource`), in the caller's transaction."""
        return SimpleNamespace(study_detail=partial(self.study_detail, session), read_instance=self.read_instance,
                               study_instances=partial(self.study_instances, session),
                               render_instance=partial(self.render_instance, session))

    # -- DICOMweb (PS3.18) for the web edge -------------------------------------------------------

    def qido_search(self, session: Session, resource: str, params, *, base_url: str, study_uid: str | None = None,
                    series_uid: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
        """The QIDO-RS answer (DICOM JSON objects) and the match keys ignored; InvalidQuery for bad parameters."""
        return _web.qido_search(session, resource, params, base_url=base_url, study_uid=study_uid,
                                series_uid=series_uid)

    def stored_instances(self, session: Session, study_uid: str, series_uid: str | None = None,
                         sop_instance_uid: str | None = None) -> list:
        """The stored instances a WADO-RS URL names, in study/series/instance order; NotFound when none."""
        return _web.stored_instances(session, study_uid, series_uid, sop_instance_uid)

    def open_stored(self, stored):
        """The stored file of *stored* (from :meth:`stored_instances`), open for reading."""
        return _web.open_stored(self._archive, stored)

    def local_file_sizes(self, found: list) -> list[int] | None:
        """The size of each stored file of *found* when every one is a file of a local filesystem store
        (:meth:`open_stored` is then cheap and reads at any offset); None when one is in an object
        store. BlobMissing when a file is missing."""
        return _web.local_file_sizes(self._archive, found)

    def instance_metadata(self, found: list, *, base_url: str) -> list[dict[str, Any]]:
        """The DICOM JSON (PS3.18 F.2) of each stored instance, bulk data as BulkDataURIs under *base_url*."""
        return _web.instance_metadata(self._archive, found, base_url=base_url)

    def bulk_value(self, stored, tag: str) -> bytes:
        return _web.bulk_value(self._archive, stored, tag)

    def instance_frames(self, stored, frame_list: str, *, syntaxes: frozenset[str]) -> tuple[list[bytes], str]:
        """Frames ``1,3,..`` of a stored image (:func:`archive_core.dicomweb.frames`); InvalidQuery: a bad list."""
        return _web.instance_frames(self._archive, stored, frame_list, syntaxes=syntaxes)

    def render_frame(self, session: Session, sop_instance_uid: str, frame: int, *, window: tuple[float, float] | None,
                     viewport: int | None, quality: int, fmt: str) -> bytes:
        """Frame *frame* (from 1) rendered at full size or to fit *viewport*; InvalidQuery for bad parameters."""
        return _web.render_frame(partial(self.render_instance, session), sop_instance_uid, frame, window=window,
                                 viewport=viewport, quality=quality, fmt=fmt)

    def stow(self, stream: BinaryIO, content_type: str, *, study_uid: str | None, actor: str,
             base_url: str) -> tuple[int, dict[str, Any], list[str]]:
        """STOW-RS: (HTTP status, PS3.18 response, failure reasons). The body is read from *stream*
        part by part into files under ``instance/spool`` (memory stays flat), which are removed on
        return. InvalidQuery for a malformed request (nothing stored); objects go through the C-STORE
        ingest path and are indexed on return."""
        return _web.stow(self._archive, stream, content_type, study_uid=study_uid, actor=actor, base_url=base_url)

    def converted_instance(self, stored, target_ts: str) -> bytes:
        """The Part 10 file of *stored* converted to an uncompressed *target_ts*, UIDs kept (the DIMSE
        sender's conversion); ValueError when *target_ts* is not one we convert to."""
        return _web.converted_instance(self._archive, stored, target_ts)

    # -- patients and the modality worklist -------------------------------------------------------

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

    def patient_names(self, session: Session, patient_ids: Iterable[str]) -> dict[str, str]:
        """DICOM Patient's Name (``NOM^Prénom``) of each visible patient among *patient_ids* (one query)."""
        return _records.patient_names(session, patient_ids)

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

    # -- peers ------------------------------------------------------------------------------------

    def peers(self, session: Session) -> list[PeerInfo]:
        """The registered DICOM peers, by AE title."""
        return _peers.list_peers(session)

    def find_peer(self, session: Session, ae_title: str) -> PeerInfo | None:
        """The registered peer of that AE title, if any."""
        return _peers.find_peer(session, ae_title)

    # -- retention: records, tiers, tombstones, purge, corrections --------------------------------

    def patient_records(self, session: Session, *, patient_id: str | None = None,
                        patient_pks: Iterable[int] | None = None) -> list[PatientRecord]:
        """Every visible patient (or those with *patient_id*, or of row ids *patient_pks*), with what the
        retention rule needs."""
        return _records.patient_records(session, patient_id=patient_id, patient_pks=patient_pks)

    def patients_with_active_images(self, session: Session) -> set[int]:
        """Row ids of the patients who have at least one visible image still in the active tier (the
        tier moves' candidates; served by the instance index on deleted_at, tier)."""
        return _records.patients_with_active_images(session)

    def move_patient_to_archive(self, patient_pk: int, *, actor: str = "scheduler",
                                actor_kind: str = "system") -> TierMove:
        """Copy and verify, then switch the index and audit ``tier.moved`` in one transaction, then drop the
        active copies: the patient's files now live in the archive tier (owns its transactions)."""
        return _tiers.move_patient_to_archive(self._archive, patient_pk, actor=actor, actor_kind=actor_kind)

    def tombstone_patient(self, session: Session, patient_id: str, issuer: str, *, at: datetime) -> TombstoneResult:
        return _purge.tombstone_patient(session, patient_id, issuer, at=at)

    def tombstone_study(self, session: Session, study_uid: str, *, at: datetime) -> TombstoneResult:
        return _purge.tombstone_study(session, study_uid, at=at)

    def delete_tombstoned_files(self, sop_instance_uids: list[str] | tuple[str, ...]) -> int:
        """Delete files of tombstoned instances only (committed tombstones; idempotent): reads the committed
        tombstones itself, after the caller's commit."""
        deleted = _purge.delete_tombstoned_files(self._archive, sop_instance_uids)
        for uid in sop_instance_uids:  # renders of purged images go with them (radiology)
            self.renderer.cache.forget(uid)
        return deleted

    def move_study(self, session: Session, study_uid: str, to_patient_id: str, to_issuer: str = "") -> str:
        """File a study under another patient; its stored files are rewritten with that patient's identity.

        The replaced files are deleted when *session* commits (the new ones if it rolls back).
        """
        return _corrections.move_study(session, self._archive, study_uid, to_patient_id, to_issuer)[0]

    def merge_patients(self, session: Session, source_id: str, target_id: str, *, at: datetime) -> int:
        """Merge *source* into *target*: studies moved and their files rewritten (as :meth:`move_study`)."""
        return _corrections.merge_patients(session, self._archive, source_id, target_id, at=at)[0]
