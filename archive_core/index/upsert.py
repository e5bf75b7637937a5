"""The index upsert: patient, study, series and instance rows of a batch of journal entries, in one transaction.

A new study is filed under its patient (a merged duplicate: under the survivor); attributes fill
blanks, the patient's newest win; an object received again replaces its row (duplicate policy
``overwrite``) and comes back from a purge; the counts of the series and studies touched are
refreshed. An entry that contradicts the index (:func:`~archive_core.index.identity.contradiction`)
is not indexed.

SQLAlchemy Core statements, not the ORM: the batch's rows are read in three statements, a new
patient, study or series is inserted when its first object comes, the batch's new instances in one
``executemany``, and only the columns whose values change are updated (the triggers of
``retention_stale`` fire on the columns an UPDATE sets). The ORM's flush of a few hundred instance
objects was half of the indexing process's CPU (docs/performance.md). The one ORM hook on these
tables, the patient name words (:mod:`~archive_core.index.patient_search`), is kept here by hand.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from archive_core.db import write_session
from archive_core.errors import IdentityConflict
from archive_core.index.entries import Job
from archive_core.index.identity import IndexedStudy, contradiction
from archive_core.index.models import Instance, Patient, PatientNameToken, Peer, Series, Study
from archive_core.index.patient_search import name_tokens

INDEX_LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")

_P, _ST, _SE, _I, _T = (Patient.__table__, Study.__table__, Series.__table__, Instance.__table__,
                        PatientNameToken.__table__)
_PATIENT_KEY = ("patient_id", "issuer_of_patient_id")

# Built once: the statement cache then finds them without building a cache key from new objects.
_STUDIES = select(_ST.c.id, _ST.c.study_uid, _ST.c.patient_pk, _ST.c.deleted_at, _P.c.patient_id,
                  _P.c.issuer_of_patient_id).select_from(_ST.join(_P, _P.c.id == _ST.c.patient_pk)).where(
    _ST.c.study_uid.in_(bindparam("uids", expanding=True)))
_SERIES = select(_SE.c.id, _SE.c.series_uid, _SE.c.study_pk, _SE.c.deleted_at).where(
    _SE.c.series_uid.in_(bindparam("uids", expanding=True)))
# The columns indexing writes into an instance row (besides its SOP Instance UID).
_INSTANCE_COLUMNS = ("series_pk", "deleted_at", "sop_class_uid", "instance_number", "image_rows", "image_columns",
                     "number_of_frames", "transfer_syntax_uid", "size_bytes", "checksum_sha256", "storage_key", "tier",
                     "source_ae")
_INSTANCES = select(_I.c.id, _I.c.sop_instance_uid, *(_I.c[c] for c in _INSTANCE_COLUMNS)).where(
    _I.c.sop_instance_uid.in_(bindparam("uids", expanding=True)))
_PATIENT_BY_KEY = select(_P).where(_P.c.patient_id == bindparam("pid"), _P.c.issuer_of_patient_id == bindparam("issuer"))
_PATIENT_BY_ID = select(_P).where(_P.c.id == bindparam("pk"))
_EXTERNAL_AES = select(Peer.__table__.c.ae_title).where(Peer.__table__.c.external.is_(True))
_INSERT_PATIENT, _INSERT_STUDY, _INSERT_SERIES, _INSERT_INSTANCE, _INSERT_TOKEN = (
    insert(_P), insert(_ST), insert(_SE), insert(_I), insert(_T))
_TOKENS_OF = select(_T.c.token).where(_T.c.patient_pk == bindparam("pk"))
_SERIES_COUNTS = update(_SE).where(_SE.c.id.in_(bindparam("ids", expanding=True))).values(
    num_instances=select(func.count(_I.c.id)).where(_I.c.series_pk == _SE.c.id).scalar_subquery())
_SERIES_OF_STUDIES = select(_SE.c.study_pk, _SE.c.modality, _SE.c.num_instances).where(
    _SE.c.study_pk.in_(bindparam("ids", expanding=True)))
_STUDY_COUNTS = update(_ST).where(_ST.c.id == bindparam("b_id")).values(
    num_series=bindparam("b_series"), num_instances=bindparam("b_instances"),
    modalities_in_study=bindparam("b_modalities"))


class _Row:
    """A patient or instance row as read (or inserted) and as the batch leaves it: only changes are written."""

    __slots__ = ("id", "merged_into_pk", "stored", "values")

    def __init__(self, row_id: int, stored: dict[str, Any], merged_into_pk: int | None = None) -> None:
        self.id = row_id
        self.merged_into_pk = merged_into_pk
        self.stored = stored
        self.values = dict(stored)

    def changes(self) -> dict[str, Any]:
        return {c: v for c, v in self.values.items() if v != self.stored.get(c)}


class _SeriesRow:
    __slots__ = ("id", "study_pk", "deleted_at")

    def __init__(self, row_id: int, study_pk: int, deleted_at: Any) -> None:
        self.id, self.study_pk, self.deleted_at = row_id, study_pk, deleted_at


def index_jobs(
    sessions: sessionmaker[Session],
    batch: list[Job],
    *,
    conflicts: list[tuple[Job, IdentityConflict]] | None = None,
) -> set[str]:
    """Create or update the index rows of *batch* in one write transaction; return the study UIDs touched.

    A job that contradicts the index (:func:`~archive_core.index.identity.contradiction`) is not
    indexed: it is appended to *conflicts*, or raised as :class:`IdentityConflict` when no list is given.
    """
    with write_session(sessions) as s:
        return _Batch(s.connection()).index(batch, conflicts)


def refused(sessions: sessionmaker[Session], job: Job) -> IdentityConflict | None:
    """The conflict indexing *job* now would meet (:func:`~archive_core.index.identity.contradiction`), or None."""
    ident = job.identity
    with sessions() as s:
        conn = s.connection()
        study = next(iter(_read_studies(conn, [ident.study_uid]).values()), None)
        se = next(iter(_read_series(conn, [ident.series_uid]).values()), None)
        conflict = contradiction(conn, ident, study, se.study_pk if se is not None else None)
        s.rollback()
    return conflict


def _read_studies(conn: Connection, uids: list[str]) -> dict[str, IndexedStudy]:
    return {r.study_uid: IndexedStudy(r.id, r.patient_pk, (r.patient_id, r.issuer_of_patient_id), r.deleted_at)
            for r in conn.execute(_STUDIES, {"uids": uids})}


def _read_series(conn: Connection, uids: list[str]) -> dict[str, _SeriesRow]:
    return {r.series_uid: _SeriesRow(r.id, r.study_pk, r.deleted_at) for r in conn.execute(_SERIES, {"uids": uids})}


class _Batch:
    """One batch's indexing on one connection (what the ORM's identity map and unit of work did)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.patients: dict[int, _Row] = {}  # by primary key: one record per row, as an identity map
        self.external_aes: set[str] | None = None

    def index(self, batch: list[Job], conflicts: list[tuple[Job, IdentityConflict]] | None) -> set[str]:
        conn = self.conn
        study_uids = list(dict.fromkeys(j.identity.study_uid for j in batch))
        series_uids = list(dict.fromkeys(j.identity.series_uid for j in batch))
        sop_uids = list(dict.fromkeys(j.identity.sop_instance_uid for j in batch))
        studies = _read_studies(conn, study_uids)
        series = _read_series(conn, series_uids)
        instances: dict[str, _Row] = {}
        for r in conn.execute(_INSTANCES, {"uids": sop_uids}):
            row = r._asdict()
            instances[r.sop_instance_uid] = _Row(row.pop("id"), row)
        new_instances: list[dict[str, Any]] = []  # in the batch's order: their ids follow it
        by_key: dict[tuple[str, str], _Row] = {}
        revived_studies: set[int] = set()
        revived_series: set[int] = set()
        moved_from_series: set[int] = set()
        refused_jobs: set[int] = set()
        for job in batch:
            ident = job.identity
            study = studies.get(ident.study_uid)
            se = series.get(ident.series_uid)
            conflict = contradiction(conn, ident, study, se.study_pk if se is not None else None)
            if conflict is not None:
                if conflicts is None:
                    raise conflict
                conflicts.append((job, conflict))
                refused_jobs.add(id(job))
                continue
            if study is None:
                study = self._new_study(job, by_key)
                studies[ident.study_uid] = study
            if se is None:
                values = {"series_uid": ident.series_uid, "study_pk": study.id}
                values.update(_filled(job.row("SERIES"), skip=("series_uid",)))
                se = _SeriesRow(conn.execute(_INSERT_SERIES, values).inserted_primary_key[0], study.id, None)
                series[ident.series_uid] = se
            irow = job.row("IMAGE")
            values = {
                "series_pk": se.id,
                # A tombstoned row received again is visible again (and a pending purge skips its file).
                "deleted_at": None,
                "sop_class_uid": ident.sop_class_uid,
                "instance_number": irow["instance_number"],
                "image_rows": irow["image_rows"],
                "image_columns": irow["image_columns"],
                "number_of_frames": irow["number_of_frames"],
                "transfer_syntax_uid": job.transfer_syntax_uid,
                "size_bytes": job.size_bytes,
                "checksum_sha256": job.checksum,
                "storage_key": ident.key,
                "tier": "active",
                "source_ae": job.source_ae,
            }
            inst = instances.get(ident.sop_instance_uid)
            if inst is None:
                values["sop_instance_uid"] = ident.sop_instance_uid
                new_instances.append(values)
                pending = instances[ident.sop_instance_uid] = _Row(0, {})
                pending.values = values  # a second copy in the batch updates the row to insert
            else:
                current = inst.values
                if current["storage_key"] and current["storage_key"] != ident.key:
                    job.replaced_key = current["storage_key"]
                    moved_from_series.add(current["series_pk"])
                current.update(values)
            if study.deleted_at is not None:  # received again after a purge: a new visit, visible again
                study.deleted_at = None
                revived_studies.add(study.id)
                self._patient_by_id(study.patient_pk).values["deleted_at"] = None
            if se.deleted_at is not None:
                se.deleted_at = None
                revived_series.add(se.id)

        for patient in self.patients.values():
            self._write_patient(patient)
        if revived_studies:
            conn.execute(update(_ST).where(_ST.c.id.in_(sorted(revived_studies))).values(deleted_at=None))
        if revived_series:
            conn.execute(update(_SE).where(_SE.c.id.in_(sorted(revived_series))).values(deleted_at=None))
        if new_instances:
            conn.execute(_INSERT_INSTANCE, new_instances)
        for inst in instances.values():
            if inst.id:
                changes = inst.changes()
                if changes:
                    conn.execute(update(_I).where(_I.c.id == inst.id).values(**changes))

        series_ids = {se.id for se in series.values()} | moved_from_series
        touched = {j.identity.study_uid for j in batch if id(j) not in refused_jobs}
        study_ids = {studies[u].id for u in touched}
        if moved_from_series:
            study_ids |= set(conn.scalars(select(_SE.c.study_pk).where(_SE.c.id.in_(sorted(moved_from_series)))))
        refresh_counts(conn, series_ids, study_ids)
        return touched

    def _new_study(self, job: Job, by_key: dict[tuple[str, str], _Row]) -> IndexedStudy:
        """Insert the study of *job*, filed under its patient (created, or updated: the newest values win)."""
        conn = self.conn
        ident = job.identity
        prow = job.row("PATIENT")
        pkey = ident.patient_key
        patient = by_key.get(pkey) or self._patient_by_key(pkey)
        if patient is not None and patient.merged_into_pk is not None:
            patient = self._patient_by_id(patient.merged_into_pk)  # a merged duplicate: file under the survivor
        elif patient is None:
            values = {"patient_id": pkey[0], "issuer_of_patient_id": pkey[1]}
            values.update(_filled(prow, skip=_PATIENT_KEY))
            patient = _Row(conn.execute(_INSERT_PATIENT, values).inserted_primary_key[0], values)
            self.patients[patient.id] = patient
            _write_tokens(conn, patient.id, name_tokens(values.get("patient_name_search")), have=set())
        else:
            patient.values.update(_filled(prow, skip=_PATIENT_KEY))
            patient.values["deleted_at"] = None  # a purged patient who comes back is a new visit
        by_key[pkey] = patient
        if job.external is not None:
            external = job.external
        else:
            if self.external_aes is None:
                self.external_aes = set(conn.scalars(_EXTERNAL_AES))
            external = (job.source_ae or "") in self.external_aes
        values = {"study_uid": ident.study_uid, "patient_pk": patient.id, "external": external}
        values.update(_filled(job.row("STUDY"), skip=("study_uid",)))
        study_pk = conn.execute(_INSERT_STUDY, values).inserted_primary_key[0]
        owner_key = (patient.values["patient_id"], patient.values["issuer_of_patient_id"])
        return IndexedStudy(study_pk, patient.id, owner_key, None)

    def _patient_by_key(self, key: tuple[str, str]) -> _Row | None:
        row = self.conn.execute(_PATIENT_BY_KEY, {"pid": key[0], "issuer": key[1]}).first()
        return self._known(row) if row is not None else None

    def _patient_by_id(self, pk: int) -> _Row:
        if pk in self.patients:
            return self.patients[pk]
        row = self.conn.execute(_PATIENT_BY_ID, {"pk": pk}).first()
        if row is None:
            raise LookupError(f"patient row {pk} (survivor of a merge) does not exist")
        return self._known(row)

    def _known(self, row: Any) -> _Row:
        if row.id not in self.patients:
            stored = row._asdict()
            stored.pop("id")
            self.patients[row.id] = _Row(row.id, stored, merged_into_pk=row.merged_into_pk)
        return self.patients[row.id]

    def _write_patient(self, patient: _Row) -> None:
        changes = patient.changes()
        if not changes:
            return
        self.conn.execute(update(_P).where(_P.c.id == patient.id).values(**changes))
        if "patient_name_search" in changes:
            # What patient_search's flush hook does for ORM writers: the name words follow the folded name.
            have = set(self.conn.scalars(_TOKENS_OF, {"pk": patient.id}))
            _write_tokens(self.conn, patient.id, name_tokens(changes["patient_name_search"]), have=have)
        patient.stored = dict(patient.values)


def _write_tokens(conn: Connection, patient_pk: int, wanted: set[str], *, have: set[str]) -> None:
    """Make the name words of patient *patient_pk* (now *have*) exactly *wanted*."""
    gone = have - wanted
    if gone:
        conn.execute(delete(_T).where(_T.c.patient_pk == patient_pk, _T.c.token.in_(sorted(gone))))
    added = sorted(wanted - have)
    if added:
        conn.execute(_INSERT_TOKEN, [{"patient_pk": patient_pk, "token": w} for w in added])


def _filled(values: dict, *, skip: tuple[str, ...]) -> dict[str, Any]:
    """The values of *values* that fill a column (a value absent from the object leaves it as it is)."""
    return {column: value for column, value in values.items() if value is not None and column not in skip}


def refresh_counts(s: Session | Connection, series_ids: set[int], study_ids: set[int]) -> None:
    """Recount the instances of *series_ids*, and the series, instances and modalities of *study_ids*."""
    conn = s.connection() if isinstance(s, Session) else s
    series_ids = {i for i in series_ids if i is not None}
    study_ids = {i for i in study_ids if i is not None}
    if series_ids:
        conn.execute(_SERIES_COUNTS, {"ids": sorted(series_ids)})
    if not study_ids:
        return
    found: dict[int, list[tuple[str | None, int]]] = {pk: [] for pk in study_ids}
    for study_pk, modality, count in conn.execute(_SERIES_OF_STUDIES, {"ids": sorted(study_ids)}):
        found[study_pk].append((modality, count))
    conn.execute(_STUDY_COUNTS, [
        {
            "b_id": pk,
            "b_series": len(rows),
            "b_instances": sum(n for _, n in rows),
            "b_modalities": "\\".join(sorted({m for m, _ in rows if m}))[:128],
        }
        for pk, rows in sorted(found.items())
    ])
