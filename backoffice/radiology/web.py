"""What every radiology page module shares: the two blueprints, their one error handler, template
helpers, the forms used on more than one page, and the study lookup with its audit line."""

from __future__ import annotations

from datetime import date

from babel.dates import format_date
from flask import Blueprint, render_template, request, url_for
from flask_babel import get_locale, lazy_gettext as _l
from flask_login import current_user
from flask_wtf import FlaskForm
from jinja2 import pass_context
from wtforms import StringField, TextAreaField

from archive_core.values import paris_time
from backoffice.errors import answer_domain_errors, error_page, wants_json
from backoffice.extensions import db, facade
from backoffice.radiology import services
from backoffice.radiology.errors import TABLE
from backoffice.radiology.presets import preset_label
from backoffice.radiology.signature import signature_line

bp = Blueprint("radiology", __name__, url_prefix="/radiology")
bp.add_app_template_global(signature_line, "report_signature")
bp.add_app_template_filter(paris_time, "paris_time")
bp.add_app_template_filter(preset_label, "preset_label")
# The only unauthenticated routes of the application: a referring doctor's time-limited, revocable link.
share_bp = Blueprint("share", __name__, url_prefix="/share")

READERS = ("radiologist", "front_desk")


def _back() -> str | None:
    """Where a refused form post goes back to when it came from no page of ours: its study's page."""
    study_uid = (request.view_args or {}).get("study_uid")
    return url_for("radiology.study", study_uid=study_uid, _anchor="report") if study_uid else None


answer_domain_errors(bp, services.RadiologyError, TABLE, back=_back)


@share_bp.errorhandler(services.ShareDenied)
def _share_denied(exc: services.ShareDenied):
    """An unknown, revoked, expired or locked link: the doctor's own page says which (410 Gone)."""
    if wants_json():
        return error_page(410, message=TABLE.message(exc))
    return render_template("radiology/share_denied.html", reason=TABLE.message(exc)), 410


# -- template helpers ------------------------------------------------------------------------------


@bp.app_template_filter("dicom_date")
@pass_context
def dicom_date_filter(context, value: str | None) -> str:
    """dd/mm/yyyy; Babel's English date on English pages, never in documents (rendered with ``document=True``)."""
    if value and len(value) == 8 and value.isdigit():
        y, m, d = value[:4], value[4:6], value[6:]
    elif value and len(value) == 10 and value[4] == "-":
        y, m, d = value[:4], value[5:7], value[8:]
    else:
        return "—"
    if not context.get("document") and str(get_locale() or "fr") != "fr":  # English: Mar 5, 2026
        try:
            return format_date(date(int(y), int(m), int(d)), "medium", locale=str(get_locale()))
        except ValueError:
            pass
    return f"{d}/{m}/{y}"


# -- shared by the page modules --------------------------------------------------------------------


def study_detail(study_uid: str):
    """The study (an unknown UID is archive_core's NotFound: the app's handler answers 404)."""
    return facade().study_detail(db(), study_uid)


def peers():
    return [p for p in facade().peers(db()) if not p.external]


def audit_view(action: str, detail, **extra) -> None:
    facade().audit_now(action, actor=current_user.login, patient_id=detail.study.patient_id,
                       study_uid=detail.study.study_uid, detail=extra or None)


class ReportForm(FlaskForm):
    indication = TextAreaField(_l("Indication"))
    technique = TextAreaField(_l("Technique"))
    findings = TextAreaField(_l("Résultats"))
    conclusion = TextAreaField(_l("Conclusion"))
    amendment_reason = StringField(_l("Motif de l'avenant"))


class ActionForm(FlaskForm):
    """CSRF only (buttons)."""
