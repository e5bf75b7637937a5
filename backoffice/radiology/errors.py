"""Radiology's one table from a domain error to its HTTP status and the sentence a person reads.

Services raise :class:`~backoffice.radiology.services.RadiologyError` (or one of its kinds) with an
English message (the API's and the log's) and a code plus data; the pages answer with this table's
sentence through one handler per blueprint (:func:`backoffice.errors.answer_domain_errors`).
"""

from __future__ import annotations

from flask_babel import lazy_gettext as _l

from backoffice.errors import HTTP_MESSAGES, ErrorTable
from backoffice.radiology.services import RadiologyError, ShareDenied

ERRORS = {
    # reports
    "report_fields": _l("Champ de compte rendu inconnu."),
    "amendment_reason": _l("le compte rendu est signé : un avenant doit en donner le motif"),
    "no_draft": _l("aucun brouillon à signer"),
    "empty_report": _l("un compte rendu vide ne se signe pas"),
    # key images, paper reproduction
    "too_many_key_images": _l("%(count)s images au plus"),
    "layout": _l("Images par page : %(layouts)s."),
    # share links
    "share_days": _l("durée de 1 à %(days)s jours"),
    "share_unknown": _l("lien inconnu"),
    "unknown_link": _l("lien inconnu"),
    "share_revoked": _l("lien révoqué"),
    "share_expired": _l("lien expiré"),
    "share_locked": _l("lien bloqué après trop de codes erronés"),
}

# A refused link is 410 (Gone), another refusal 409, unless its code says otherwise (a bad value: 400).
KINDS = {ShareDenied: 410, RadiologyError: 409}
STATUSES = {"report_fields": 400, "layout": 400, "share_days": 400, "unknown_link": 404}
GENERAL = {status: HTTP_MESSAGES[status][1] for status in (400, 404, 409, 410)}

TABLE = ErrorTable(rows=ERRORS, kinds=KINDS, general=GENERAL, statuses=STATUSES)
