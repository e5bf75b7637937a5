"""Storage sizes as people read them: decimal units, Mo/Go in French (decimal comma), MB/GB in English."""

from __future__ import annotations

from babel.numbers import format_decimal
from flask_babel import get_locale

UNITS = {"fr": ("o", "ko", "Mo", "Go", "To"), "en": ("B", "kB", "MB", "GB", "TB")}


def format_size(size_bytes: int | None, language: str | None = None) -> str:
    """1500000000 -> "1,5 Go" (fr) or "1.5 GB" (en); one decimal under 100 units, none above."""
    language = language or str(get_locale() or "fr")
    units = UNITS.get(language, UNITS["fr"])
    value = float(size_bytes or 0)
    unit = 0
    while abs(value) >= 1000 and unit < len(units) - 1:
        value /= 1000
        unit += 1
    pattern = "#,##0" if unit == 0 or abs(value) >= 100 else "#,##0.0"
    locale = "fr_FR" if language == "fr" else "en_GB"
    return f"{format_decimal(value, format=pattern, locale=locale)}\u00a0{units[unit]}"
