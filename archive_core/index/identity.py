"""The identity of a received object: its validated UIDs, where it is stored, and the rules it must keep.

An object is filed under UIDs it carries (:meth:`Identity.of`), under a key built from them
(:func:`storage_key`). The identity rule (a series belongs to one study, a study to one patient)
is checked when an object is acknowledged (:meth:`~archive_core.index.ingest.Ingestor.claim`) and
again when it is indexed (:func:`contradiction`); a refused object is written to the audit trail
(:func:`audit_refusal`).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset
from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session, sessionmaker

from archive_core.db import write_session
from archive_core.errors import IdentityConflict, InvalidIdentifier
from archive_core.index.keywords import patient_key
from archive_core.index.models import Patient
from archive_core.uids import clean_uid, require_uid

log = logging.getLogger(__name__)


def storage_key(study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    """Where an instance lives in the store: built from validated UIDs only, fanned out by study."""
    fan = hashlib.sha1(study_uid.encode()).hexdigest()[:2]
    return f"{fan}/{study_uid}/{series_uid}/{sop_instance_uid}.dcm"


@dataclass(frozen=True)
class Identity:
    """The validated UIDs that identify a received object, and the patient it names."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    patient_key: tuple[str, str] = ("", "")  # (Patient ID, Issuer of Patient ID) as indexed

    @classmethod
    def of(
        cls,
        ds: Dataset,
        *,
        sop_class_uid: object = None,
        sop_instance_uid: object = None,
        dataset_must_agree: bool = True,
    ) -> "Identity":
        """Validate the identifying UIDs of *ds* against those the request (C-STORE command, file meta) names.

        The dataset must carry its SOP Class and SOP Instance UIDs, equal to the request's when it
        names them: an object is never filed under a UID it does not carry. *dataset_must_agree*
        false (journal entries acknowledged before this rule) lets the request's values stand in.
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            uids = []
            for name, named, carried in (
                ("SOP Class UID", sop_class_uid, ds.get("SOPClassUID")),
                ("SOP Instance UID", sop_instance_uid, ds.get("SOPInstanceUID")),
            ):
                if dataset_must_agree or not named:
                    if clean_uid(carried) == "" and named:
                        raise InvalidIdentifier(f"dataset has no {name}")
                    uid = require_uid(carried, name)
                    if named and require_uid(named, name) != uid:
                        raise InvalidIdentifier(f"{name} of the dataset differs from the request's")
                else:
                    uid = require_uid(named, name)
                uids.append(uid)
            return cls(
                sop_class_uid=uids[0],
                sop_instance_uid=uids[1],
                study_uid=require_uid(ds.get("StudyInstanceUID"), "Study Instance UID"),
                series_uid=require_uid(ds.get("SeriesInstanceUID"), "Series Instance UID"),
                patient_key=patient_key(ds),
            )

    @property
    def key(self) -> str:
        return storage_key(self.study_uid, self.series_uid, self.sop_instance_uid)


# Refusals written to the audit trail: an object that names the wrong UIDs or another patient's
# study or series (a device mis-configured, a worklist mix-up) is an event a manager must see.
AUDITED_REFUSALS = (IdentityConflict, InvalidIdentifier)


def audit_refusal(
    sessions: sessionmaker[Session],
    exc: Exception,
    ds: Dataset | None,
    *,
    actor: str,
    actor_kind: str,
    via: str,
    sop_instance_uid: object = None,
) -> None:
    """Write a refused object to the audit trail (``dicom.store.refused``) if *exc* is one of :data:`AUDITED_REFUSALS`.

    Only valid UIDs are recorded; the Patient ID the object claimed goes in the row's patient
    column, as for every audited access. Never raises: the refusal is answered either way.
    """
    if not isinstance(exc, AUDITED_REFUSALS):
        return
    from archive_core import audit
    from archive_core.uids import is_valid_uid

    def uid(value: object) -> str | None:
        return clean_uid(value) if is_valid_uid(value) else None

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            carried = ds if ds is not None else Dataset()
            detail = {
                "via": via,
                "reason": str(exc),
                "sop_instance_uid": uid(sop_instance_uid) or uid(carried.get("SOPInstanceUID")),
                "series_uid": uid(carried.get("SeriesInstanceUID")),
            }
            patient_id = patient_key(carried)[0] or None
            study_uid = uid(carried.get("StudyInstanceUID"))
        with write_session(sessions) as s:
            audit.record(s, "dicom.store.refused", actor=actor, actor_kind=actor_kind, patient_id=patient_id,
                         study_uid=study_uid, detail=detail)
    except Exception:
        log.exception("cannot audit the refusal of %s from %s", clean_uid(sop_instance_uid) or "?", actor)


@dataclass
class IndexedStudy:
    """What indexing reads of a study row: its key, its patient's and that patient's identifiers."""

    id: int
    patient_pk: int
    owner_key: tuple[str, str]  # (Patient ID, Issuer of Patient ID) of the patient it is filed under
    deleted_at: datetime | None


_PATIENT_BY_KEY = select(Patient.id, Patient.merged_into_pk).where(
    Patient.patient_id == bindparam("pid"), Patient.issuer_of_patient_id == bindparam("issuer"))
_PATIENT_BY_ID = select(Patient.id, Patient.merged_into_pk).where(Patient.id == bindparam("pk"))


def contradiction(
    conn: Connection, ident: Identity, study: IndexedStudy | None, series_study_pk: int | None
) -> IdentityConflict | None:
    """The identity rule at indexing time: the last guard for objects acknowledged elsewhere (see Ingestor.receive).

    *study*: the indexed study under *ident*'s Study Instance UID; *series_study_pk*: the study
    its Series Instance UID is filed under (None: a new series).
    """
    if series_study_pk is not None and (study is None or series_study_pk != study.id):
        return IdentityConflict("Series Instance UID belongs to another study")
    if study is None:
        return None
    if study.owner_key == ident.patient_key:
        return None
    # A patient merged into the study's owner is the owner (merges followed, at most 16 hops).
    row = conn.execute(_PATIENT_BY_KEY, {"pid": ident.patient_key[0], "issuer": ident.patient_key[1]}).first()
    hops = 0
    while row is not None and row.merged_into_pk is not None and hops < 16:
        row, hops = conn.execute(_PATIENT_BY_ID, {"pk": row.merged_into_pk}).first(), hops + 1
    if row is not None and row.id == study.patient_pk:
        return None
    return IdentityConflict("Study Instance UID is filed under another Patient ID")
