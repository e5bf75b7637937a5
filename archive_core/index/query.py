"""Query/retrieve identifiers against the index: parsing, one SQL query per level.

The information models (Patient Root, Study Root), the hierarchy of levels and which keys a
level allows live here; the matching rule of each key is in :mod:`archive_core.index.matching`
and which column a keyword reads in :mod:`archive_core.index.keywords`; the answers built from the
rows in :mod:`archive_core.index.answers`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from sqlalchemy import Integer, bindparam, column, exists, func, literal_column, or_, select
from sqlalchemy.orm import Session

from archive_core.errors import InvalidQuery
from archive_core.index.keywords import ATTRIBUTES, BY_KEYWORD, COMPUTED_BY_KEYWORD
from archive_core.index.matching import (
    equality_value, has_wildcards, is_universal, key_condition, text_condition, values_of,
)
from archive_core.index.models import Instance, Patient, Series, Study

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
MODELS = {"PATIENT": Patient, "STUDY": Study, "SERIES": Series, "IMAGE": Instance}
UNIQUE_KEYS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
PATIENT_ROOT, STUDY_ROOT = "PATIENT", "STUDY"
# (0008,0005) Specific Character Set and (0008,0052) Query/Retrieve Level are not keys.
_NOT_KEYS = {0x00080005, 0x00080052}
_PATIENT_COUNTS = ("NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries", "NumberOfPatientRelatedInstances")
_CHUNK = 500


@dataclass(frozen=True)
class RequestedKey:
    tag: BaseTag
    keyword: str
    vr: str


@dataclass
class Query:
    """A parsed identifier: level, the keys to return, the values to match."""

    root: str
    level: str
    keys: list[RequestedKey] = field(default_factory=list)
    conditions: dict[str, Any] = field(default_factory=dict)
    # Optional keys given a value we do not match on: answers are sent with status 0xFF01.
    unmatched_keys: list[str] = field(default_factory=list)
    # How answers are laid out (index.answers.answer_elements), worked out there at the first answer.
    answer_plan: Any = field(default=None, repr=False, compare=False)

    @property
    def depth(self) -> int:
        return LEVELS.index(self.level)

    def wants(self, keyword: str) -> bool:
        return any(k.keyword == keyword for k in self.keys)

    @property
    def has_sequence_keys(self) -> bool:
        return any(k.vr == "SQ" for k in self.keys)


def _level_of(level: str, root: str) -> str:
    # In the Study Root model, patient attributes are attributes of the study.
    return "STUDY" if root == STUDY_ROOT and level == "PATIENT" else level


def _decoded(elem) -> Any:
    value = elem.value
    if value is None or isinstance(value, (bytes, bytearray)):
        return None if not value else "\x00unreadable"
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]
    return str(value)


def _universal_item(item: Dataset) -> bool:
    """Every attribute of a sequence item is zero length (or ``*``), nested sequences included."""
    for elem in item:
        if elem.VR == "SQ":
            if not all(_universal_item(sub) for sub in elem.value or []):
                return False
        elif not is_universal(_decoded(elem), elem.VR):
            return False
    return True


def _check_retrieve_key(keyword: str, value: Any) -> None:
    """A retrieve names entities by their unique keys (PS3.4 C.4.2.2.1): single value or UID list
    matching only. A wildcard would make ``PatientID=*`` or ``?*`` a request for every patient."""
    values = values_of(value)
    if any(has_wildcards(v) for v in values):
        raise InvalidQuery(f"no wildcard in a retrieve key ({keyword})")
    if keyword == "PatientID" and len(values) > 1:
        raise InvalidQuery("one PatientID per retrieve")
    if keyword != "PatientID" and any(v and not _UID_CHARS.issuperset(v) for v in values):
        raise InvalidQuery(f"{keyword} must be UIDs (no range in a retrieve key)")


_UID_CHARS = frozenset("0123456789.")
# The keyword of each tag the index answers (pydicom's DataElement.keyword looks it up in its dictionary each time).
_KEYWORD_OF = {int(tag_for_keyword(k)): k for k in (*BY_KEYWORD, *COMPUTED_BY_KEYWORD)}


def parse_identifier(identifier: Dataset, root: str, *, retrieve: bool = False, relational: bool = False) -> Query:
    """Check *identifier* against the information model *root* and read its keys.

    The identifier is decoded with its own Specific Character Set. Raises :class:`InvalidQuery`
    for a missing or unknown level, a key below the level, or a unique key missing above it.
    For a retrieve (C-MOVE, C-GET), the unique key of the level is required too and only unique
    keys are matched (PS3.4 C.4.2.2.1). A *relational* query (QIDO-RS ``/series``, ``/instances``)
    needs no unique key above its level.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
        if level not in LEVELS:
            raise InvalidQuery(f"invalid Query/Retrieve Level {level!r}")
        if root == STUDY_ROOT and level == "PATIENT":
            raise InvalidQuery("the Study Root model has no PATIENT level")
        query = Query(root=root, level=level)
        depth = query.depth
        seen: set[int] = set()
        for tag in list(identifier.keys()):
            number = int(tag)  # BaseTag's own == is Python code: sets of plain ints
            if number in _NOT_KEYS or number >> 16 == 0x0002 or number in seen:
                continue
            seen.add(number)
            try:
                elem = identifier[tag]
            except (ValueError, TypeError, OverflowError):  # pydicom cannot read it as its VR (IS "1*")
                raise InvalidQuery(f"{BaseTag(tag)}: not a valid value of its VR") from None
            keyword = _KEYWORD_OF.get(number) or elem.keyword or ""
            attr = BY_KEYWORD.get(keyword)
            computed = COMPUTED_BY_KEYWORD.get(keyword)
            key_level = attr.level if attr else computed.level if computed else None
            if key_level not in (None, "ANY") and LEVELS.index(_level_of(key_level, root)) > depth:
                raise InvalidQuery(f"{keyword} is below the {level} level")
            if elem.VR == "SQ":
                query.keys.append(RequestedKey(tag, keyword, "SQ"))
                # An item whose attributes are all zero length is universal matching (PS3.4 C.2.2.2.6):
                # every entity matches. A value inside an item is a match we do not make: 0xFF01.
                if not all(_universal_item(item) for item in elem.value or []):
                    query.unmatched_keys.append(keyword or str(tag))
                continue
            value = _decoded(elem)
            query.keys.append(RequestedKey(tag, keyword, attr.vr if attr else computed.vr if computed else elem.VR))
            if retrieve and keyword in UNIQUE_KEYS.values():
                _check_retrieve_key(keyword, value)
            if is_universal(value, elem.VR):
                continue
            if retrieve:
                if keyword in UNIQUE_KEYS.values():
                    query.conditions[keyword] = value
            elif attr is not None or keyword in ("ModalitiesInStudy", "SOPClassesInStudy"):
                # Check the value's form now (a bad range is an identifier error, not a failure later).
                if attr is not None and equality_value(value, attr.vr) is None:
                    key_condition(column("v"), column("v"), value, attr.vr, "sqlite")
                query.conditions[keyword] = value
            else:
                query.unmatched_keys.append(keyword or str(tag))
    first = LEVELS.index(PATIENT_ROOT if root == PATIENT_ROOT else STUDY_ROOT)
    required = [] if relational else LEVELS[first : query.depth + (1 if retrieve else 0)]
    for needed in required:
        if UNIQUE_KEYS[needed] not in query.conditions:
            where = f"above the {level} level" if needed != level else f"to retrieve at the {level} level"
            raise InvalidQuery(f"{UNIQUE_KEYS[needed]} is required {where}")
    return query


def _visible(deleted_at, dialect: str):
    """``deleted_at IS NULL``; on SQLite with a unary plus, which keeps the deleted_at index out of the
    plan: without statistics SQLite would drive every query from that (almost all NULL) index and
    scan the whole table instead of using the index of the key that matches."""
    if dialect == "sqlite":
        return literal_column(f"+{deleted_at.table.name}.{deleted_at.name}").is_(None)
    return deleted_at.is_(None)


def _joined(columns: list, depth: int, dialect: str):
    """*columns* from the levels down to *depth*, joined; tombstoned rows (retention purge, merges) are
    invisible at every level."""
    stmt = select(*columns).select_from(Patient).where(_visible(Patient.deleted_at, dialect))
    if depth >= 1:
        stmt = stmt.join(Study, Study.patient_pk == Patient.id).where(_visible(Study.deleted_at, dialect))
    if depth >= 2:
        stmt = stmt.join(Series, Series.study_pk == Study.id).where(_visible(Series.deleted_at, dialect))
    if depth >= 3:
        stmt = stmt.join(Instance, Instance.series_pk == Series.id).where(_visible(Instance.deleted_at, dialect))
    return stmt


def _conditions(query: Query, dialect: str) -> list:
    """The SQL condition of each matching key of *query*, its values in the statement."""
    conditions = []
    for keyword, value in query.conditions.items():
        if keyword == "ModalitiesInStudy":
            modalities = [v for v in values_of(value) if v]
            cond = exists(
                select(Series.id).where(
                    Series.study_pk == Study.id,
                    Series.deleted_at.is_(None),
                    or_(*[text_condition(Series.modality, m, "CS", dialect) for m in modalities])
                )
            )
        elif keyword == "SOPClassesInStudy":
            cond = exists(
                select(Instance.id)
                .join(Series, Instance.series_pk == Series.id)
                .where(
                    Series.study_pk == Study.id,
                    Instance.deleted_at.is_(None),
                    Instance.sop_class_uid.in_([v for v in values_of(value) if v]),
                )
            )
        else:
            attr = BY_KEYWORD[keyword]
            model = MODELS[attr.level]
            groups = tuple(getattr(model, c) for c in attr.group_columns) if attr.group_columns else None
            cond = key_condition(
                getattr(model, attr.column), getattr(model, attr.match_column or attr.column), value, attr.vr, dialect,
                groups,
            )
        if cond is not None:
            conditions.append(cond)
    return conditions


def _equalities(query: Query) -> dict[str, str | int] | None:
    """keyword -> value when every matching key of *query* is a plain equality on its column
    (:func:`equality_value`), else None."""
    found = {}
    for keyword, value in query.conditions.items():
        attr = BY_KEYWORD.get(keyword)
        single = equality_value(value, attr.vr) if attr is not None else None
        if single is None:
            return None
        found[keyword] = single
    return found


# Statements built once per shape and reused (SQLAlchemy statements are immutable: a call extends one
# into a new statement, or binds its values at execution). Building the ~25 labelled columns, the joins
# and the visibility conditions, then SQLAlchemy's cache key of the whole statement, cost a single-match
# QIDO-RS search or C-FIND more than running it. A dict per process, bounded: emptied when full.
_BASES: dict[tuple, Any] = {}
_STATEMENTS: dict[tuple, Any] = {}
_CACHE_SIZE = 512


def _cached(cache: dict, key: tuple, build):
    found = cache.get(key)
    if found is None:
        if len(cache) >= _CACHE_SIZE:
            cache.clear()
        found = cache[key] = build()
    return found


def _name_prefix_match(keyword: str, value: Any) -> bool:
    """A person-name key whose every value starts with literal characters (``Mar*``, ``DUPONT^J*``):
    matched through the name indexes, each of its three groups a range of its index."""
    attr = BY_KEYWORD.get(keyword)
    if attr is None or not attr.group_columns:
        return False
    values = values_of(value)
    return bool(values) and all(v and v[0] not in "*?" for v in values)


def _index_order(query: Query, dialect: str):
    """The answers' order: by the level's primary key (index order).

    On SQLite, with a person-name prefix among the keys, the key is written ``+table.id``: SQLite
    without statistics (the archive gathers none) would rather walk the table in key order, to
    spare a sort, than read the three name indexes of an ``OR`` and sort the matches; at 100,000
    studies ``PatientName=Mar*`` (1,914 matches) took 58 ms that way and 11 ms through the indexes
    (``A*``, 10,000 matches: 77 and 49 ms). The ``+`` leaves the planner the index plan only
    (tests/unit/test_query_plans.py, without statistics). Other keys keep the plain order: a date
    range already reads its index, and a query that matches most rows is best read in key order.
    """
    key = MODELS[query.level].id
    if dialect == "sqlite" and any(_name_prefix_match(k, v) for k, v in query.conditions.items()):
        return literal_column(f"+{key.table.name}.{key.name}")
    return key


def find(
    session: Session, query: Query, *, limit: int | None = None, offset: int = 0, extra: Iterable = ()
) -> list[dict[str, Any]]:
    """The matches of *query*, one row (keyword -> value) per entity at its level, in index order.

    One SQL statement joins the levels above; computed keys come from the counters ingest
    maintains (SOP classes in study: one more statement per 500 studies). *extra* conditions
    (SQLAlchemy clauses) narrow the match further (the facade's free-text search). Every row
    carries every attribute of its level and above; :func:`stream` reads only the requested keys.
    """
    return list(_rows(session, query, limit=limit, offset=offset, extra=extra, requested_only=False))


def stream(session: Session, query: Query, *, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """The matches of *query* like :func:`find`, read from the cursor as they are consumed.

    Only the requested keys are selected, and nothing is built for a row before it is asked
    for: a C-FIND sends its first answers while later rows are still in the database, and
    stopping early (cancel, too many matches) reads no further. The session's transaction
    stays open until the iterator is exhausted or closed; close it (``contextlib.closing``) when
    stopping early, before the session ends.
    """
    return _rows(session, query, limit=limit, requested_only=True)


def _level_statement(depth: int, wanted: frozenset[str] | None, with_counts: bool, dialect: str):
    """The statement of a level's rows, joined, before matching: every attribute of the level and above
    (or the *wanted* ones), the counters, the patient counts when asked."""
    columns = [
        getattr(MODELS[a.level], a.column).label(a.keyword)
        for a in ATTRIBUTES
        if LEVELS.index(a.level) <= depth and (wanted is None or a.keyword in wanted)
    ]
    if depth >= 1:
        columns += [
            Study.id.label("_study_pk"),
            Study.num_series.label("NumberOfStudyRelatedSeries"),
            Study.num_instances.label("NumberOfStudyRelatedInstances"),
            Study.modalities_in_study.label("ModalitiesInStudy"),
            Study.external.label("_external"),
        ]
    if depth >= 2:
        columns.append(Series.num_instances.label("NumberOfSeriesRelatedInstances"))
    if wanted is not None:
        needed = wanted | ({"_study_pk"} if "SOPClassesInStudy" in wanted else set())
        columns = [c for c in columns if c.key in needed] or [MODELS[LEVELS[depth]].id.label("_pk")]
    counts = None
    if with_counts:
        counts = (
            select(
                Study.patient_pk.label("patient_pk"),
                func.count(Study.id).label("studies"),
                func.coalesce(func.sum(Study.num_series), 0).label("series"),
                func.coalesce(func.sum(Study.num_instances), 0).label("instances"),
            )
            .where(Study.deleted_at.is_(None))
            .group_by(Study.patient_pk)
            .subquery()
        )
        columns += [
            func.coalesce(counts.c.studies, 0).label(_PATIENT_COUNTS[0]),
            func.coalesce(counts.c.series, 0).label(_PATIENT_COUNTS[1]),
            func.coalesce(counts.c.instances, 0).label(_PATIENT_COUNTS[2]),
        ]
    stmt = _joined(columns, depth, dialect)
    if counts is not None:
        stmt = stmt.outerjoin(counts, counts.c.patient_pk == Patient.id)
    return stmt


def _equality_statement(base, query: Query, keywords: tuple[str, ...], dialect: str, limit: bool, offset: bool):
    """*base* matching each of *keywords* by equality with a bound parameter ``k_<keyword>``, in index
    order, with bound ``_limit`` and ``_offset`` when asked."""
    stmt = base
    for keyword in keywords:
        attr = BY_KEYWORD[keyword]
        model = MODELS[attr.level]
        column_ = getattr(model, attr.match_column or attr.column) if attr.vr == "DA" else getattr(model, attr.column)
        stmt = stmt.where(column_ == bindparam(f"k_{keyword}"))
    stmt = stmt.order_by(_index_order(query, dialect))
    if limit:
        stmt = stmt.limit(bindparam("_limit", type_=Integer))
    if offset:
        stmt = stmt.offset(bindparam("_offset", type_=Integer))
    return stmt


def _rows(
    session: Session, query: Query, *, limit: int | None, offset: int = 0, extra: Iterable = (),
    requested_only: bool,
) -> Iterator[dict[str, Any]]:
    depth = query.depth
    keywords = frozenset(k.keyword for k in query.keys)
    wanted = keywords if requested_only else None
    with_counts = not keywords.isdisjoint(_PATIENT_COUNTS)
    extra = tuple(extra)
    # A Core execution on the session's connection: no ORM result machinery per row. yield_per reads
    # the rows in batches (a server-side cursor on PostgreSQL; SQLite's cursor is lazy anyway).
    session.flush()  # what session.execute would autoflush (nothing, in a read-only session)
    connection = session.connection()
    dialect = connection.dialect.name
    shape = (depth, wanted, with_counts, dialect)
    base = _cached(_BASES, shape, lambda: _level_statement(depth, wanted, with_counts, dialect))
    equalities = None if extra else _equalities(query)
    if equalities is not None:
        # Every key an equality (a UID, a patient ID...): the whole statement is reused, values bound. SQLAlchemy
        # then neither rebuilds nor re-keys it, nor adapts its compiled form's result columns to a new statement.
        matched = tuple(equalities)
        stmt = _cached(
            _STATEMENTS, (*shape, matched, limit is not None, bool(offset)),
            lambda: _equality_statement(base, query, matched, dialect, limit is not None, bool(offset)),
        )
        params = {f"k_{k}": v for k, v in equalities.items()}
        if limit is not None:
            params["_limit"] = limit
        if offset:
            params["_offset"] = offset
    else:
        stmt = base.where(*_conditions(query, dialect), *extra).order_by(_index_order(query, dialect))
        if limit is not None:
            stmt = stmt.limit(limit)
        if offset:
            stmt = stmt.offset(offset)
        params = None
    result = connection.execute(stmt, params, execution_options={"yield_per": _CHUNK})
    try:
        keys = list(result.keys())
        with_classes = depth >= 1 and "SOPClassesInStudy" in keywords
        for batch in result.partitions():
            rows = [dict(zip(keys, r)) for r in batch]
            if with_classes:
                classes = sop_classes_of(session, {r["_study_pk"] for r in rows})
                for row in rows:
                    row["SOPClassesInStudy"] = classes.get(row["_study_pk"], [])
            yield from rows
    finally:
        result.close()  # a server-side cursor left early (cancel, limit) is closed before its transaction ends


def sop_classes_of(session: Session, study_pks: Iterable[int]) -> dict[int, list[str]]:
    pks = sorted(study_pks)
    found: dict[int, set[str]] = {}
    for start in range(0, len(pks), _CHUNK):
        chunk = pks[start : start + _CHUNK]
        stmt = (
            select(Series.study_pk, Instance.sop_class_uid)
            .join(Instance, Instance.series_pk == Series.id)
            .where(Series.study_pk.in_(chunk), Instance.deleted_at.is_(None))
            .distinct()
        )
        for study_pk, sop_class in session.execute(stmt):
            found.setdefault(study_pk, set()).add(sop_class)
    return {pk: sorted(v) for pk, v in found.items()}


@dataclass(frozen=True)
class StoredInstance:
    """What a retrieve sends: one stored instance."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    storage_key: str
    study_uid: str
    tier: str = "active"
    series_uid: str = ""
    checksum_sha256: str = ""  # of the dataset, as indexed: changes when the object under the key does


def instances_to_retrieve(session: Session, query: Query) -> list[StoredInstance]:
    """Every stored instance under the entities a retrieve identifier names, in study/series/instance order."""
    deep = Query(root=query.root, level="IMAGE", conditions=query.conditions)
    dialect = session.get_bind().dialect.name
    base = _cached(_BASES, ("retrieve", dialect), lambda: _joined(
        [Instance.sop_instance_uid, Instance.sop_class_uid, Instance.transfer_syntax_uid, Instance.storage_key,
         Study.study_uid, Instance.tier, Series.series_uid, Instance.checksum_sha256], 3, dialect,
    ).order_by(Study.id, Series.series_number, Series.id, Instance.instance_number, Instance.id))
    return [StoredInstance(*row) for row in session.execute(base.where(*_conditions(deep, dialect)))]
