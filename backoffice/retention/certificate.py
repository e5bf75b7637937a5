"""The destruction certificate: a PDF (WeasyPrint) of what a purge destroyed, why, and who decided."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from flask import current_app, render_template

from archive_core.values import paris_time
from backoffice.practice import practice_identity
from backoffice.pdf import html_to_pdf
from backoffice.retention.models import PurgeBatch
from backoffice.sizes import format_size

BASIS_FR = {
    "last_visit_20y": "CSP art. R1112-7 : 20 ans après le dernier passage",
    "birthday_28": "CSP art. R1112-7 : jusqu'au 28e anniversaire",
    "death_10y": "CSP art. R1112-7 : 10 ans après le décès",
    "correction": "correction : examen envoyé par erreur",
}


def certificates_dir() -> Path:
    """Where certificates are kept: ``instance/documents/certificates``."""
    return Path(current_app.instance_path) / "documents" / "certificates"


def paris(value: datetime | None) -> str:
    """A stored instant (UTC; SQLite gives it back naive) as the certificate prints it: 01/12/2026 à 14:56."""
    if value is None:
        return "—"
    return paris_time(value).strftime("%d/%m/%Y à %H:%M")


def render_certificate(batch: PurgeBatch) -> bytes:
    """The certificate is a French document whatever the reader's language: French units and dates."""
    items = [
        {"item": item, "basis": BASIS_FR.get(item.basis, item.basis), "studies": json.loads(item.manifest)}
        for item in batch.items
    ]
    html = render_template("retention/certificate.html", batch=batch, items=items, practice=practice_identity(),
                           paris=paris, size=lambda n: format_size(n, "fr"), printed_at=paris(datetime.now(timezone.utc)))
    return html_to_pdf(html)
