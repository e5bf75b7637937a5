"""The one patient search of the archive: what a person types at a desk, ranked.

Every page and the JSON API reach it through ``ArchiveFacade.search_patients``. It reads the
folded name column that C-FIND matches on (``patient_name_search``: upper case, no accents,
filled by the index from the same :func:`~archive_core.index.matching.fold_text`), so "dupre",
"Dupré" and "DUPRE" are one query. What it understands:

- words of a name in any order and case, with or without accents, hyphens or apostrophes
  ("martin lucas", "Lucas MARTIN", "jean-francois", "jean francois"), each word the start of a
  word of the name ("dupr");
- a birth date as a French desk types it (``12/03/1961``, ``12-03-1961``, ``12.03.1961``) or in
  ISO 8601 (``1961-03-12``), alone or with name words;
- a patient ID (exact, or its start).

Speed: each typed word is looked up in ``patient_name_token`` (the words of every folded name,
indexed; a prefix range on SQLite with GLOB, on PostgreSQL with LIKE and a ``varchar_pattern_ops``
index), so a search reads the matching patients only, not the whole table. The table is kept in
step with ``patient_name_search`` by an ORM flush hook below, in whichever process writes patients.

Ranking: exact patient ID, then exact name (either order), then family name equal to a word
typed, then family name starting with it, then any other match; ties by name then ID.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from sqlalchemy import case, event, inspect, literal, or_, select, union
from sqlalchemy.orm import Session

from archive_core.index.matching import fold_text, wildcard_match
from archive_core.index.models import Patient, PatientNameToken
from archive_core.values import da_to_iso, person_name

MAX_WORDS = 8  # a desk types two or three; more only make the query longer
_WORD_SPLIT = re.compile(r"[^0-9A-Z]+")
_DATE_FR = re.compile(r"^(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{4})$")
_DATE_ISO = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")


@dataclass(frozen=True)
class PatientMatch:
    """One patient found, as people read it."""

    patient_id: str
    issuer_of_patient_id: str
    name: str  # "DUPRÉ Jean-François": family name in capitals, then the given names
    dicom_name: str | None  # as stored (``DUPRÉ^JEAN-FRANÇOIS``)
    birth_date: str | None  # ISO 8601
    sex: str | None
    rank: int  # 0 exact ID, 1 exact name, 2 family name, 3 family name prefix, 4 other


@dataclass(frozen=True)
class PatientSearchPage:
    items: tuple[PatientMatch, ...]
    has_more: bool


@dataclass(frozen=True)
class ParsedQuery:
    text: str
    words: tuple[str, ...]  # folded name words
    birth_date: str | None  # DICOM DA


def parse_birth_date(token: str) -> str | None:
    """``12/03/1961``, ``12-03-1961``, ``12.03.1961`` or ``1961-03-12`` as ``19610312``; else None."""
    m = _DATE_FR.match(token)
    if m:
        day, month, year = int(m.group(1)), int(m.group(2)), int(m.group(3))
    else:
        m = _DATE_ISO.match(token)
        if not m:
            return None
        year, month, day = int(m.group(1)), int(m.group(2)), int(m.group(3))
    try:
        return date(year, month, day).strftime("%Y%m%d")
    except ValueError:
        return None


def parse_query(text: str) -> ParsedQuery:
    """The words and birth date of what was typed."""
    text = (text or "").strip()
    words: list[str] = []
    birth: str | None = None
    for token in text.split():
        as_date = parse_birth_date(token)
        if as_date and birth is None:
            birth = as_date
            continue
        for word in _WORD_SPLIT.split(fold_text(token) or ""):
            if word and word not in words:
                words.append(word)
    return ParsedQuery(text=text, words=tuple(words[:MAX_WORDS]), birth_date=birth)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_")


def name_tokens(folded: str | None) -> set[str]:
    """The words of a folded name's alphabetic group: ``DUPRE^JEAN-FRANCOIS`` -> {DUPRE, JEAN, FRANCOIS}."""
    if not folded:
        return set()
    return {w[:64] for w in _WORD_SPLIT.split(folded.split("=")[0]) if w}


@event.listens_for(Session, "before_flush")
def _keep_tokens_in_step(session: Session, _context, _instances) -> None:
    """Rewrite the name words of every patient whose folded name is new or changed in this flush."""
    for obj in list(session.new) + list(session.dirty):
        if not isinstance(obj, Patient):
            continue
        state = inspect(obj)
        if not state.pending and not state.attrs.patient_name_search.history.has_changes():
            continue
        wanted = name_tokens(obj.patient_name_search)
        have = {t.token for t in obj.name_tokens}
        if wanted == have:
            continue
        obj.name_tokens[:] = [t for t in obj.name_tokens if t.token in wanted] + [
            PatientNameToken(token=w) for w in sorted(wanted - have)]


def _word_start(word: str, dialect: str):
    """The patients with a name word starting with *word* (an indexed prefix lookup in the word table)."""
    return select(PatientNameToken.patient_pk).where(wildcard_match(PatientNameToken.token, word + "*", dialect))


def _candidates(parsed: ParsedQuery, dialect: str, *, id_prefix: bool = False):
    """The primary keys of the patients *parsed* finds: the exact ID; or every name word and the birth
    date; or the ID's start. A union of indexed lookups (an OR in one WHERE would read every patient)."""
    parts = [select(Patient.id).where(Patient.patient_id == parsed.text)]
    born = select(Patient.id).where(Patient.patient_birth_date == parsed.birth_date) if parsed.birth_date else None
    if parsed.words:
        # The first word's patients, narrowed by each other word (and the birth date): flat, so
        # that SQLite takes it inside the UNION (it refuses a parenthesised INTERSECT there).
        both = _word_start(parsed.words[0], dialect)
        for word in parsed.words[1:]:
            both = both.where(PatientNameToken.patient_pk.in_(_word_start(word, dialect)))
        if born is not None:
            both = both.where(PatientNameToken.patient_pk.in_(born))
        parts.append(both)
    elif born is not None:
        parts.append(born)
    text = parsed.text
    if id_prefix and len(text) >= 2 and not any(c in text for c in " *?[\\"):
        # GLOB on SQLite, LIKE on PostgreSQL: case-sensitive on both, as IDs are; indexed prefixes.
        parts.append(select(Patient.id).where(wildcard_match(Patient.patient_id, text + "*", dialect)))
    return union(*parts)


def search(session: Session, text: str, *, limit: int = 100, offset: int = 0) -> PatientSearchPage:
    """Visible patients matching *text*, best first (see the module docstring)."""
    parsed = parse_query(text)
    if not parsed.text:
        return PatientSearchPage((), False)
    col = Patient.patient_name_search
    raw = parsed.text
    words = parsed.words

    candidates = _candidates(parsed, session.get_bind().dialect.name, id_prefix=True)

    rank_cases = [(Patient.patient_id == raw, 0)]
    if words:
        exact = {"^".join((words[0], " ".join(words[1:]))).rstrip("^"),
                 "^".join((words[0], "-".join(words[1:]))).rstrip("^"),
                 "^".join((words[-1], " ".join(words[:-1]))).rstrip("^"),
                 "^".join((words[-1], "-".join(words[:-1]))).rstrip("^")}
        rank_cases.append((col.in_(sorted(exact)), 1))
        family_exact = [col == words[0], col.like(_escape(words[0]) + "^%", escape="\\")]
        if len(words) > 1:
            family_exact += [col == words[-1], col.like(_escape(words[-1]) + "^%", escape="\\")]
        rank_cases.append((or_(*family_exact), 2))
        family_prefix = [col.like(_escape(words[0]) + "%", escape="\\")]
        if len(words) > 1:
            family_prefix.append(col.like(_escape(words[-1]) + "%", escape="\\"))
        rank_cases.append((or_(*family_prefix), 3))
    elif parsed.birth_date:
        rank_cases.append((Patient.patient_birth_date == parsed.birth_date, 1))
    rank = case(*rank_cases, else_=literal(4)).label("rank")

    query = (
        select(Patient, rank)
        .where(Patient.id.in_(candidates), Patient.deleted_at.is_(None))
        .order_by(rank, col, Patient.patient_id, Patient.id)
        .limit(limit + 1)
        .offset(max(offset, 0))
    )
    rows = session.execute(query).all()
    items = tuple(
        PatientMatch(
            patient_id=p.patient_id,
            issuer_of_patient_id=p.issuer_of_patient_id or "",
            name=person_name(p.patient_name),
            dicom_name=p.patient_name,
            birth_date=da_to_iso(p.patient_birth_date),
            sex=p.patient_sex,
            rank=int(r),
        )
        for p, r in rows[:limit]
    )
    return PatientSearchPage(items, len(rows) > limit)




def matching_patient_pks(text: str, dialect: str):
    """A subquery of the primary keys of the patients *text* finds (for filters on other tables)."""
    return select(Patient.id).where(Patient.id.in_(_candidates(parse_query(text), dialect)),
                                    Patient.deleted_at.is_(None))
