"""The line under a signed report: who signed it (full name and RPPS as they were) and when, in Paris time."""

from __future__ import annotations

from babel.dates import format_date
from flask_babel import get_locale, gettext as _

from archive_core.values import paris_time


def signature_line(report) -> str:
    """'Signé par Dr Prénom NOM (RPPS 10001234567) le 01/12/2026 à 14:56 (heure de Paris)'; the login when
    the signer had no full name on file, no RPPS part when none was recorded."""
    local = paris_time(report.signed_at)
    language = str(get_locale() or "fr")
    date = local.strftime("%d/%m/%Y") if language == "fr" else format_date(local.date(), "medium", locale=language)
    name = f"Dr {report.signer_name}" if report.signer_name else report.signed_by
    if report.signer_rpps:
        return _("Signé par %(name)s (RPPS %(rpps)s) le %(date)s à %(time)s (heure de Paris)", name=name,
                 rpps=report.signer_rpps, date=date, time=local.strftime("%H:%M"))
    return _("Signé par %(name)s le %(date)s à %(time)s (heure de Paris)", name=name, date=date,
             time=local.strftime("%H:%M"))
