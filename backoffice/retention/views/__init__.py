"""The manager's retention pages: storage per tier, due dates, holds, batches, certificates, audit search.

One blueprint; its routes live in one module per job (overview and lists with the sweep, one patient,
batches and the purge, corrections, the audit search). Views never commit: the request's session is
committed at its end (backoffice/extensions.py), and the area's one error handler below rolls it back
and answers from the error table (backoffice/retention/errors.py).
The sweep and the purge own their transactions (backoffice/retention/sweep.py, purge.py).
"""

from __future__ import annotations

from flask import Blueprint, flash, redirect, request, url_for
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm

from backoffice.extensions import db, facade
from backoffice.retention import answers
from backoffice.retention.errors import RetentionError, message_for
from backoffice.retention.models import PurgeBatch

bp = Blueprint("retention", __name__, url_prefix="/retention")
MANAGER = ("manager",)
AUDITORS = ("manager", "admin")
PAGE = 100
MAX_PAGE = 2**31 // PAGE  # the offset stays a 32-bit integer on every engine


@bp.errorhandler(RetentionError)
def _retention_error(exc: RetentionError):
    """The area's one page handler: roll back the request's work, say why, go back where the form was."""
    db().rollback()
    flash(message_for(exc), "error")
    batch_id = (request.view_args or {}).get("batch_id")
    if batch_id is not None and db().get(PurgeBatch, batch_id) is not None:
        return redirect(url_for("retention.batch", batch_id=batch_id))
    back = request.referrer
    if back and back.startswith(request.host_url) and request.method == "POST":
        return redirect(back)
    return redirect(url_for("retention.index"))


def form_errors(form: FlaskForm) -> None:
    for field, errors in form.errors.items():
        flash(f"{getattr(form, field).label.text if hasattr(form, field) else field} : {', '.join(errors)}", "error")


# -- labels the templates use ------------------------------------------------------------------------------


BASIS_LABELS = {
    "last_visit_20y": _l("20 ans après le dernier passage"),
    "birthday_28": _l("jusqu'au 28e anniversaire"),
    "death_10y": _l("10 ans après le décès"),
    "no_visit": _l("aucun passage au cabinet (à vérifier)"),
    "correction": _l("correction : examen envoyé par erreur"),
}
TIER_LABELS = {"active": _l("base active"), "archive": _l("archive intermédiaire")}
# The lists a manager opens from the overview's counts: (title, which answers).
LISTS = {
    "due": _l("Échéances dans les %(days)s jours"),
    "overdue": _l("Échues : destructibles, à proposer ou en attente de décision"),
    "hold": _l("Sous séquestre"),
    "review": _l("À vérifier (jamais proposés à la destruction)"),
    "all": _l("Tous les dossiers"),
}
WITHIN_DAYS = (30, 90, 365)


@bp.app_template_filter("size")
def _size(size_bytes: int | None) -> str:
    from backoffice.sizes import format_size

    return format_size(size_bytes)


@bp.app_template_filter("basis_label")
def _basis_label(basis: str | None) -> str:
    return str(BASIS_LABELS.get(basis or "", basis or "—"))


@bp.app_template_filter("tier_label")
def _tier_label(tier: str | None) -> str:
    return str(TIER_LABELS.get(tier or "", tier or "—"))


def fresh_answers() -> None:
    """Decide again the patients whose facts changed, then read in a transaction that sees the result."""
    if answers.refresh_now(facade()):
        db().rollback()  # the request's read transaction began before the refresh committed


# The routes, one module per job, attach themselves to bp.
from backoffice.retention.views import audit, batches, corrections, overview, patient  # noqa: E402,F401
