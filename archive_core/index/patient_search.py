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

Ranking: exact patient ID, then exact name (either order), then family name equal to a word
typed, then family name starting with it, then any other match; ties by name then ID.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from sqlalchemy import and_, case, func, literal, or_, select
from sqlalchemy.orm import Session

from archive_core.index.matching import fold_text
from archive_core.index.models import Patient

MAX_WORDS = 8  # a desk types two or three; more only make the query longer
_WORD_SPLIT = re.compile(r"[^0-9A-Z]+")
_DATE_FR = re.compile(r"^(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{4})$")
_DATE_ISO = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
# What separates the words of a stored (folded) name: components, spaces, hyphens, apostrophes.
_SEPARATORS = ("^", " ", "-", "'", ",", ".")


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


def human_name(dicom_name: str | None) -> str:
    """``DUPRÉ^JEAN-FRANÇOIS^^DR`` -> ``DUPRÉ Jean-François``: what a French desk writes.

    The family name in capitals; given and middle names as stored, or capitalised when the
    modality wrote them all in capitals. Only the alphabetic group (PS3.5 6.2.1.2).
    """
    if not dicom_name:
        return ""
    alphabetic = dicom_name.split("=")[0]
    parts = (alphabetic.split("^") + ["", "", "", ""])[:5]
    family, given, middle = parts[0].strip(), parts[1].strip(), parts[2].strip()

    def given_form(value: str) -> str:
        return value.title() if value.isupper() else value

    return " ".join(p for p in (family.upper(), given_form(given), given_form(middle)) if p)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_")


def _word_start(column, word: str):
    """*word* starts some word of the folded name in *column*."""
    w = _escape(word)
    return or_(column.like(w + "%", escape="\\"),
               *(column.like("%" + _escape(sep) + w + "%", escape="\\") for sep in _SEPARATORS))


def _match_conditions(parsed: ParsedQuery, *, id_prefix: bool = False) -> list:
    """Any of these finds a patient: the exact ID; every name word and the birth date; the ID's start."""
    col = Patient.patient_name_search
    matches = [Patient.patient_id == parsed.text]
    name_and_date = []
    if parsed.words:
        name_and_date.extend(_word_start(col, w) for w in parsed.words)
    if parsed.birth_date:
        name_and_date.append(Patient.patient_birth_date == parsed.birth_date)
    if name_and_date:
        matches.append(and_(*name_and_date))
    if id_prefix and " " not in parsed.text and len(parsed.text) >= 2:
        # substr, not LIKE: SQLite's LIKE ignores case, PostgreSQL's does not; IDs are exact on both.
        matches.append(func.substr(Patient.patient_id, 1, len(parsed.text)) == parsed.text)
    return matches


def search(session: Session, text: str, *, limit: int = 100, offset: int = 0) -> PatientSearchPage:
    """Visible patients matching *text*, best first (see the module docstring)."""
    parsed = parse_query(text)
    if not parsed.text:
        return PatientSearchPage((), False)
    col = Patient.patient_name_search
    raw = parsed.text
    words = parsed.words

    matches = _match_conditions(parsed, id_prefix=True)

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
        .where(Patient.deleted_at.is_(None), or_(*matches))
        .order_by(rank, col, Patient.patient_id, Patient.id)
        .limit(limit + 1)
        .offset(max(offset, 0))
    )
    rows = session.execute(query).all()
    items = tuple(
        PatientMatch(
            patient_id=p.patient_id,
            issuer_of_patient_id=p.issuer_of_patient_id or "",
            name=human_name(p.patient_name),
            dicom_name=p.patient_name,
            birth_date=_iso(p.patient_birth_date),
            sex=p.patient_sex,
            rank=int(r),
        )
        for p, r in rows[:limit]
    )
    return PatientSearchPage(items, len(rows) > limit)


def _iso(dicom_date: str | None) -> str | None:
    if dicom_date and len(dicom_date) == 8 and dicom_date.isdigit():
        return f"{dicom_date[:4]}-{dicom_date[4:6]}-{dicom_date[6:]}"
    return None


def matching_patient_pks(text: str):
    """A subquery of the primary keys of the patients *text* finds (for filters on other tables)."""
    return select(Patient.id).where(Patient.deleted_at.is_(None), or_(*_match_conditions(parse_query(text))))
