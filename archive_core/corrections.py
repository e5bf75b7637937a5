"""Corrections: a study filed under the wrong patient, duplicate patients merged.

The index says which patient a study belongs to, and the stored files must say the same: a file
handed out later (C-MOVE/C-GET, a CD, the viewer) carries its own Patient module. So a move or a
merge rewrites each file's Patient module from the target patient into a *new* file (its own key,
written durably), keeps the replaced values in the file's Original Attributes Sequence (PS3.3
C.12.1.1.9, reason CORRECT), and points the index row at it in the caller's transaction. Each
(old key, new key) pair is recorded durably before the new file is written
(:mod:`archive_core.filechanges`). The old file goes once that transaction commits; if it rolls
back, the new file goes instead. A process killed in between leaves an intent that ``archive fsck``
lists as pending and ``--repair`` finishes from the committed index: never a row whose file says
another patient, never a file left over.

Deleting a study sent by mistake is not here: it goes through a tombstone and an approved purge
(archive_core.purge).
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from archive_core import filechanges
from archive_core.archive import Archive
from archive_core.errors import ArchiveError, NotFound
from archive_core.index.identity import storage_key
from archive_core.index.models import Instance, Patient, Series, Study
from archive_core.part10 import dataset_offset
from archive_core.purge import find_patient

log = logging.getLogger(__name__)

# Patient-module attribute -> Patient column; IssuerOfPatientID is type 3 (dropped when empty).
PATIENT_MODULE = {
    "PatientName": "patient_name",
    "PatientID": "patient_id",
    "IssuerOfPatientID": "issuer_of_patient_id",
    "PatientBirthDate": "patient_birth_date",
    "PatientSex": "patient_sex",
}
MODIFYING_SYSTEM = "ARCHIVAGE"
_PENDING = "archivage.rewritten_files"  # session.info key: the intent whose files go after commit / rollback
_ARCHIVE = "archivage.archive"


@dataclass(frozen=True)
class Rewrite:
    """What a correction did to the stored files: how many rewritten, and the identity they had before."""

    files: int
    previous: dict[str, str]


def move_study(session: Session, archive: Archive, study_uid: str, to_patient_id: str, to_issuer: str = "", *,
               at: datetime | None = None) -> tuple[str, Rewrite]:
    """File a study under another (existing) patient and rewrite its files' Patient module.

    Returns the patient ID it was under and what the rewrite replaced.
    """
    study = session.scalar(select(Study).where(Study.study_uid == study_uid, Study.deleted_at.is_(None)))
    if study is None:
        raise NotFound("no such study")
    target = find_patient(session, to_patient_id, to_issuer)
    source = session.get(Patient, study.patient_pk)
    if source.id == target.id:
        raise ArchiveError("the study already belongs to this patient")
    study.patient_pk = target.id
    session.flush()
    rewrite = rewrite_patient_module(session, archive, [study.id], target, at=at)
    return source.patient_id, rewrite


def merge_patients(session: Session, archive: Archive, source_id: str, target_id: str, *, at: datetime,
                   source_issuer: str = "", target_issuer: str = "") -> tuple[int, Rewrite]:
    """Move every study of *source* to *target* (files rewritten); the source becomes a tombstone pointing at it."""
    source = find_patient(session, source_id, source_issuer)
    target = find_patient(session, target_id, target_issuer)
    if source.id == target.id:
        raise ArchiveError("a patient cannot be merged into itself")
    study_ids = list(session.scalars(select(Study.id).where(Study.patient_pk == source.id, Study.deleted_at.is_(None))))
    if study_ids:
        session.execute(update(Study).where(Study.id.in_(study_ids)).values(patient_pk=target.id))
    source.deleted_at = at
    source.merged_into_pk = target.id
    if not target.patient_birth_date and source.patient_birth_date:
        target.patient_birth_date = source.patient_birth_date
    session.flush()
    rewrite = rewrite_patient_module(session, archive, study_ids, target, at=at)
    return len(study_ids), rewrite


def rewrite_patient_module(session: Session, archive: Archive, study_pks: list[int], patient: Patient, *,
                           at: datetime | None = None) -> Rewrite:
    """Give every visible file of *study_pks* the Patient module of *patient*, in either tier.

    Each new file is written durably under a key of its own before the index row (key, checksum,
    size) is switched in *session*; the replaced files are deleted after the commit.
    """
    at = at or datetime.now(timezone.utc)
    identity = {keyword: getattr(patient, column) or "" for keyword, column in PATIENT_MODULE.items()}
    rows = session.scalars(
        select(Instance).join(Series, Instance.series_pk == Series.id)
        .where(Series.study_pk.in_(study_pks), Instance.deleted_at.is_(None)).order_by(Instance.id)
    ).all() if study_pks else []
    intent = _intent(session, archive)
    files = 0
    previous: dict[str, str] = {}
    for inst in rows:
        store = archive.store_for(inst.tier)
        old_key = inst.storage_key
        data = store.read_bytes(old_key)
        new_data, replaced = patient_module_rewritten(data, identity, at=at)
        if new_data is None:
            continue
        for keyword, value in replaced.items():
            previous.setdefault(keyword, value)
        checksum = hashlib.sha256(memoryview(new_data)[dataset_offset(new_data):]).hexdigest()
        series_uid, study_uid = session.execute(
            select(Series.series_uid, Study.study_uid).join(Study, Series.study_pk == Study.id)
            .where(Series.id == inst.series_pk)
        ).one()
        canonical = storage_key(study_uid, series_uid, inst.sop_instance_uid)
        new_key = f"{canonical[:-len('.dcm')]}.{checksum[:16]}.dcm"
        intent.add((inst.tier, old_key), (inst.tier, new_key))
        store.put_bytes(new_key, new_data)
        inst.storage_key, inst.checksum_sha256, inst.size_bytes = new_key, checksum, len(new_data)
        files += 1
    session.flush()
    if files:
        log.info("rewrote the Patient module of %d files", files)
    return Rewrite(files, previous)


def patient_module_rewritten(data: bytes, identity: dict[str, str], *,
                             at: datetime) -> tuple[bytes | None, dict[str, str]]:
    """*data* with the Patient module of *identity* and the replaced values in OriginalAttributesSequence.

    Returns ``(None, {})`` when the file already says *identity*. Everything else (meta header,
    transfer syntax, pixel data) is written back as it was read.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the file was accepted at ingest; odd values are not ours to judge
        ds = dcmread(io.BytesIO(data), force=True)
    old = Dataset()
    replaced: dict[str, str] = {}
    for keyword, value in identity.items():
        current = ds.get(keyword)
        current_text = "" if current is None else str(current)
        if current_text == value:
            continue
        if keyword in ds:
            old.add(ds[keyword])
        replaced[keyword] = current_text
    if not replaced:
        return None, {}
    if any(not value.isascii() for value in identity.values()) and ds.get("SpecificCharacterSet") != "ISO_IR 192":
        ds.decode()  # every text value to str, so that it can all be written back in UTF-8
        ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword, value in identity.items():
        if keyword not in replaced:
            continue
        if keyword in ds:
            del ds[keyword]  # a fresh element: the old one now lives in the sequence below
        if value or keyword != "IssuerOfPatientID":
            setattr(ds, keyword, value)
    item = Dataset()
    item.ModifiedAttributesSequence = [old]
    item.AttributeModificationDateTime = at.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S+0000")
    item.ModifyingSystem = MODIFYING_SYSTEM
    meta = getattr(ds, "file_meta", None)
    item.SourceOfPreviousValues = str(meta.get("SourceApplicationEntityTitle", "")) if meta is not None else ""
    item.ReasonForTheAttributeModification = "CORRECT"
    history = list(ds.get("OriginalAttributesSequence", []))
    ds.OriginalAttributesSequence = [*history, item]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue(), replaced


def _intent(session: Session, archive: Archive) -> filechanges.Intent:
    """The session's intent (one per transaction); hooks drop the right files when the transaction ends."""
    session.info[_ARCHIVE] = archive
    if session.info.get(_PENDING) is None:
        session.info[_PENDING] = filechanges.Intent.begin(archive, "correction")
        if not event.contains(session, "after_commit", _drop_replaced):
            event.listen(session, "after_commit", _drop_replaced)
            event.listen(session, "after_rollback", _drop_unused)
    return session.info[_PENDING]


def _drop(session: Session, committed: bool) -> None:
    intent = session.info.pop(_PENDING, None)
    archive = session.info.get(_ARCHIVE)
    if intent is None or archive is None:
        return
    intent.finish(archive, committed=committed)


def _drop_replaced(session: Session) -> None:
    _drop(session, True)


def _drop_unused(session: Session) -> None:
    _drop(session, False)
