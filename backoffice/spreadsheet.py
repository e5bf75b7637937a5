"""Cells of every CSV/TSV export made harmless for spreadsheets (OWASP "CSV injection")."""

from __future__ import annotations

import csv
import re
from typing import Any, Iterable

# A cell a spreadsheet would read as a formula (or a DDE call) starts with one of these.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?\d+(?:[.,]\d+)?")


def safe_cell(value: Any) -> str:
    """*value* as text; if a spreadsheet would run it as a formula, a leading apostrophe makes it text.

    Plain numbers (``-12,50``) stay numbers: a credit note's negative total is not a formula.
    """
    text = "" if value is None else str(value)
    if text.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


def safe_row(values: Iterable[Any]) -> list[str]:
    return [safe_cell(v) for v in values]


class SafeWriter:
    """``csv.writer`` whose every cell goes through :func:`safe_cell`."""

    def __init__(self, out, **kwargs) -> None:
        self._writer = csv.writer(out, **kwargs)

    def writerow(self, values: Iterable[Any]) -> None:
        self._writer.writerow(safe_row(values))
