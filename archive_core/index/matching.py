"""The matching rules of PS3.4 C.2.2.2, each in one place: value forms, normalisation, SQL conditions."""

from __future__ import annotations

import unicodedata
from typing import Any

from sqlalchemy import and_, or_
from sqlalchemy.sql.elements import ColumnElement

from archive_core.errors import InvalidQuery
from archive_core.values import normalize_da, normalize_tm

# VRs for which * and ? are wildcards (PS3.4 C.2.2.2.4); elsewhere they are plain characters.
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
RANGE_VRS = frozenset({"DA", "TM", "DT"})


# -- normalisation (the same function fills the index and reads the query) ----------------------


def fold_text(text: str | None) -> str | None:
    """Upper case without accents: the form person names are matched in ("Dupré" -> "DUPRE")."""
    if text is None:
        return None
    decomposed = unicodedata.normalize("NFKD", str(text))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper()


def fold_name_group(text: str | None) -> str | None:
    """An ideographic or phonetic person name group in the form it is matched in: NFC, upper case,
    empty trailing components dropped. Not folded like the alphabetic group: stripping marks would
    turn kana with dakuten (だ) into other kana (た)."""
    if text is None:
        return None
    return unicodedata.normalize("NFC", str(text)).upper().rstrip("^") or None


def name_groups(text: str | None) -> tuple[str, str, str]:
    """The alphabetic, ideographic and phonetic component groups of a PN value (PS3.5 6.2.1.2)."""
    groups = (str(text or "").split("=") + ["", ""])[:3]
    return groups[0], groups[1], groups[2]


def fold_person_name(text: str | None) -> str | None:
    """A person name folded, without the empty trailing components (``DUPONT^JEAN^^^`` -> ``DUPONT^JEAN``)."""
    folded = fold_text(text)
    if not folded:
        return None
    groups = [g.rstrip("^") for g in folded.split("=")]
    return "=".join(groups).rstrip("=") or None


# -- value forms ----------------------------------------------------------------------------------


def values_of(value: Any) -> list[str]:
    """The values of a key as strings (a backslash-separated list is several values)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v).strip() for v in value]
    text = str(value).strip()
    return text.split("\\") if "\\" in text else [text]


def is_universal(value: Any, vr: str) -> bool:
    """Empty, or ``*`` alone: every object matches (PS3.4 C.2.2.2.3)."""
    vals = values_of(value)
    return not vals or vals == [""] or vals == ["*"]


def has_wildcards(text: str) -> bool:
    return "*" in text or "?" in text


# -- SQL ------------------------------------------------------------------------------------------


def wildcard_match(column: ColumnElement, pattern: str, dialect: str) -> ColumnElement[bool]:
    """*column* matches the DICOM wildcard *pattern*, case-sensitively, on SQLite and PostgreSQL.

    Every other character is literal, including SQL's ``%``, ``_`` and escape characters. SQLite's
    ``LIKE`` ignores case, so SQLite gets ``GLOB`` (case-sensitive; its ``[``, ``*``, ``?`` bracketed).
    """
    if dialect == "sqlite":
        glob = "".join(
            c if c in "*?" else ("[" + c + "]" if c in "[" else c) for c in pattern
        )
        return column.op("GLOB")(glob)
    like = "".join(
        "%" if c == "*" else "_" if c == "?" else ("\\" + c if c in "\\%_" else c) for c in pattern
    )
    return column.like(like, escape="\\")


def text_condition(column: ColumnElement, value: str, vr: str, dialect: str) -> ColumnElement[bool]:
    """Single value or wildcard matching of one string value."""
    if vr in WILDCARD_VRS and has_wildcards(value):
        return wildcard_match(column, value, dialect)
    return column == value


def _components_condition(column: ColumnElement, query: str | None, dialect: str) -> ColumnElement[bool] | None:
    """One folded component group of a query against one folded column: components the query
    leaves out (or gives empty) match anything."""
    if not query or query == "*":
        return None
    parts = [c if c else "*" for c in query.split("^")]
    pattern = "^".join(parts)
    if pattern.endswith("*"):
        return wildcard_match(column, pattern, dialect)
    alternatives = [wildcard_match(column, pattern, dialect) if has_wildcards(pattern) else column == pattern]
    alternatives.append(wildcard_match(column, pattern + "^*", dialect))
    alternatives.append(wildcard_match(column, pattern + "=*", dialect))
    return or_(*alternatives)


def person_name_condition(
    column: ColumnElement, value: str, dialect: str, group_columns: tuple[ColumnElement, ColumnElement] | None = None
) -> ColumnElement[bool] | None:
    """Component-aware PN matching, case- and accent-insensitive in the alphabetic group.

    *column* holds the folded name (its alphabetic group first); *group_columns* the folded
    ideographic and phonetic groups. A query with ``=`` matches each group it gives against that
    group (``=山田*`` the ideographic group only, ``Yamada^Taro=山田*`` both); a query of one group
    (``山田*``, ``Dupont``) matches a name when any of its groups matches. Components the query
    leaves out (or gives empty) match anything: ``Dupont`` matches ``Dupont^Jean``.
    """
    alpha, ideographic, phonetic = name_groups(value)
    alpha_cond = _components_condition(column, fold_person_name(alpha), dialect)
    if group_columns is None:
        return alpha_cond
    ideo_col, phon_col = group_columns
    if "=" not in value:
        if alpha_cond is None:
            return None
        other_groups = (_components_condition(c, fold_name_group(alpha), dialect) for c in (ideo_col, phon_col))
        return or_(alpha_cond, *other_groups)
    conditions = [c for c in (
        alpha_cond,
        _components_condition(ideo_col, fold_name_group(ideographic), dialect),
        _components_condition(phon_col, fold_name_group(phonetic), dialect),
    ) if c is not None]
    return and_(*conditions) if conditions else None


def range_condition(column: ColumnElement, value: str, vr: str) -> ColumnElement[bool] | None:
    """DA, TM or DT range (``a-b``, ``-b``, ``a-``), or a single value of those VRs.

    TM compares on the normalized column (``HHMMSS.ffffff``): the bounds are padded, the lower
    one with zeros, the upper one with the highest value its precision leaves open.
    """
    low, dash, high = value.partition("-")
    low, high = low.strip(), high.strip()
    if not dash:
        high = low
    if vr == "TM":
        if has_wildcards(value):
            raise InvalidQuery(f"no wildcards in a time, use a range: {value!r}")
        lo = normalize_tm(low) if low else None
        hi = normalize_tm(high, upper=True) if high else None
        if (low and lo is None) or (high and hi is None):
            raise InvalidQuery(f"not a time range: {value!r}")
    elif vr == "DA":
        if has_wildcards(value):
            raise InvalidQuery(f"no wildcards in a date, use a range: {value!r}")
        lo = normalize_da(low) if low else None
        hi = normalize_da(high) if high else None
        if (low and lo is None) or (high and hi is None):
            raise InvalidQuery(f"not a date or date range: {value!r}")
        if not dash:
            return column == lo
    else:  # DT: compare as text, the upper bound padded to the end of its precision
        if has_wildcards(value):
            raise InvalidQuery(f"no wildcards in a date-time, use a range: {value!r}")
        lo = low or None
        hi = (high + "99999999999999.999999"[len(high):]) if high else None
    conditions = []
    if lo is not None:
        conditions.append(column >= lo)
    if hi is not None:
        conditions.append(column <= hi)
    if not conditions:
        return None
    return and_(*conditions)


_INTEGER_VRS = frozenset({"IS", "US", "UL", "SS", "SL"})


def equality_value(value: Any, vr: str) -> str | int | None:
    """The one value a key is matched against by equality, when its condition is ``column == value``
    (a single UID, a single text value without wildcards, an integer, one date); None for any other
    condition (universal, a UID list, wildcards, a person name, a range, a time), and for a value
    :func:`key_condition` refuses (it raises the error). A date compares the normalized date column.

    The one place that says which keys are plain equalities: :func:`key_condition` builds its condition
    from it, and a query of such keys only reuses a statement built once, the values bound at execution
    (:mod:`archive_core.index.query`)."""
    vals = values_of(value)
    if len(vals) != 1:
        return None
    text = vals[0]
    if not text or text == "*" or vr in ("PN", "TM", "DT"):
        return None
    if vr == "UI":
        return text
    if vr == "DA":
        return None if "-" in text or has_wildcards(text) else normalize_da(text)
    if vr in _INTEGER_VRS:
        try:
            return int(text)
        except ValueError:
            return None
    if vr in WILDCARD_VRS and has_wildcards(text):
        return None
    return text


def key_condition(
    column: ColumnElement, match_column: ColumnElement, value: Any, vr: str, dialect: str,
    group_columns: tuple[ColumnElement, ColumnElement] | None = None,
) -> ColumnElement[bool] | None:
    """The condition one key puts on its column; None for universal matching.

    *group_columns*: for PN, the folded ideographic and phonetic group columns.
    """
    single = equality_value(value, vr)
    if single is not None:
        return (match_column if vr == "DA" else column) == single
    if is_universal(value, vr):
        return None
    vals = values_of(value)
    if vr == "UI":
        uids = [v for v in vals if v]
        return column.in_(uids) if len(uids) > 1 else column == uids[0]
    if len(vals) > 1:
        raise InvalidQuery("several values are only allowed for UIDs")
    text = vals[0]
    if vr == "PN":
        return person_name_condition(match_column, text, dialect, group_columns)
    if vr in RANGE_VRS:
        return range_condition(match_column, text, vr)
    if vr in _INTEGER_VRS:
        try:
            return column == int(text)
        except ValueError:
            raise InvalidQuery(f"not an integer: {text!r}") from None
    return text_condition(column, text, vr, dialect)
