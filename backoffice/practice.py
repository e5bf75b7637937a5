"""The practice's identity as every document prints it: invoices, receipts, reproductions, media, certificates."""

from __future__ import annotations

from flask import current_app

from archive_core.values import NOT_CONFIGURED

# docs/configuration.md lists them; an unset key prints "à configurer" rather than failing a document.
PRACTICE_KEYS = ("PRACTICE_NAME", "PRACTICE_ADDRESS", "PRACTICE_PHONE", "PRACTICE_EMAIL", "PRACTICE_SIRET",
                 "PRACTICE_FINESS", "PRACTICE_RPPS", "VAT_MENTION")


def practice_identity() -> dict[str, str]:
    """Each of :data:`PRACTICE_KEYS` from the app's configuration, "à configurer" when unset."""
    return {key: str(current_app.config.get(key) or NOT_CONFIGURED) for key in PRACTICE_KEYS}
