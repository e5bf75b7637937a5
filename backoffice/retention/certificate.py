"""The destruction certificate: a PDF (WeasyPrint) of what a purge destroyed, why, and who decided."""

from __future__ import annotations

import json
from pathlib import Path

from flask import current_app, render_template

from backoffice.retention.models import PurgeBatch
from backoffice.pdf import html_to_pdf

BASIS_FR = {
    "last_visit_20y": "CSP art. R1112-7 : 20 ans après le dernier passage",
    "birthday_28": "CSP art. R1112-7 : jusqu'au 28e anniversaire",
    "death_10y": "CSP art. R1112-7 : 10 ans après le décès",
    "correction": "correction : examen envoyé par erreur",
}


def certificates_dir() -> Path:
    """Where certificates are kept: ``instance/documents/certificates``."""
    return Path(current_app.instance_path) / "documents" / "certificates"


def render_certificate(batch: PurgeBatch) -> bytes:
    items = [
        {"item": item, "basis": BASIS_FR.get(item.basis, item.basis), "studies": json.loads(item.manifest)}
        for item in batch.items
    ]
    html = render_template("retention/certificate.html", batch=batch, items=items)
    return html_to_pdf(html)
