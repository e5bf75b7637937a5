"""Radiology pages: the study browser, the study page and its report; the routes of the viewer
(viewing.py), share links (sharing.py) and what leaves the study page (output.py) join the same
blueprints, defined with their one error handler in web.py.

A refused action (a :class:`~backoffice.radiology.services.RadiologyError`) is answered once, by
that handler: the transaction rolled back, the sentence from radiology/errors.py flashed on the page
the form came from (or the error's status and sentence to a script).
"""

from __future__ import annotations

from flask import Response, abort, flash, jsonify, redirect, render_template, request, session, url_for
from flask_babel import gettext as _, lazy_gettext as _l
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import DateField, IntegerField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import NumberRange, Optional

from archive_core.values import paris_time
from backoffice.auth import roles_required
from backoffice.extensions import db, facade
from backoffice.radiology import output, services, sharing, viewing  # noqa: F401 (their routes join bp)
from backoffice.radiology.sending import failures_of, jobs_for
from backoffice.radiology.web import READERS, ActionForm, ReportForm, audit_view, bp, peers, share_bp, study_detail

PAGE_SIZE = 50


# -- study browser ---------------------------------------------------------------------------------


MODALITY_CHOICES = [("", _l("toutes")), ("CT", _l("Scanner (CT)")), ("MR", _l("IRM")), ("US", _l("Échographie")),
                    ("CR", _l("Radio (CR)")), ("DX", _l("Radio (DX)")), ("MG", _l("Mammographie")),
                    ("NM", _l("Médecine nucléaire")), ("OT", _l("Autre"))]


class SearchForm(FlaskForm):
    class Meta:
        csrf = False  # a GET search changes nothing

    patient = StringField(_l("Patient (nom ou identifiant)"))
    date_from = DateField(_l("Du"), validators=[Optional()])
    date_to = DateField(_l("Au"), validators=[Optional()])
    modality = SelectField(_l("Modalité"), choices=[SelectChoice(v, label) for v, label in MODALITY_CHOICES])
    accession = StringField(_l("N° d'examen"))
    description = StringField(_l("Description"))
    page = IntegerField(default=1, validators=[Optional(), NumberRange(min=1)])


@bp.route("/")
@roles_required(*READERS)
def studies():
    form = SearchForm(request.args)
    page_number = max(form.page.data or 1, 1) if form.validate() else 1
    criteria = {
        "patient": form.patient.data or "",
        "date_from": form.date_from.data,
        "date_to": form.date_to.data,
        "modality": form.modality.data or "",
        "accession": form.accession.data or "",
        "description": form.description.data or "",
    }
    results = facade().browse_studies(db(), **criteria, limit=PAGE_SIZE, offset=(page_number - 1) * PAGE_SIZE)
    if any(criteria.values()):
        facade().audit_now("study.search", actor=current_user.login,
                           detail={"results": len(results.items), "page": page_number})
    args = {k: v for k, v in request.args.items() if k != "page"}
    return render_template("radiology/studies.html", form=form, results=results, page=page_number, args=args)


# -- study page ------------------------------------------------------------------------------------


@bp.route("/studies/<study_uid>")
@roles_required(*READERS)
def study(study_uid: str):
    detail = study_detail(study_uid)
    s = db()
    draft = services.current_draft(s, study_uid)
    form = ReportForm(obj=draft) if draft else ReportForm(obj=services.signed_report(s, study_uid))
    audit_view("study.view", detail)
    radiologist = current_user.role == "radiologist"
    return render_template(
        "radiology/study.html",
        detail=detail,
        study=detail.study,
        priors=facade().prior_studies(db(), study_uid),
        reports=services.reports_of(s, study_uid),
        signed=services.signed_report(s, study_uid),
        draft=draft,
        documents=facade().study_documents(db(), study_uid),
        key_images=services.key_images(s, study_uid),
        share_links=services.share_links_of(s, study_uid) if radiologist else [],
        form=form,
        action_form=ActionForm(),
        share_form=sharing.ShareForm(),
        new_share=session.pop("new_share", None),
        peers=peers() if radiologist else [],
        send_jobs=(jobs := jobs_for(s, study_uid) if radiologist else []),
        send_failures={job.id: failures_of(s, job.id) for job in jobs if job.failed},
        job_statuses={code: str(label) for code, label in output.JOB_STATUSES.items()},
        layouts=(1, 2, 4, 6),
    )


# -- the report ------------------------------------------------------------------------------------


def _save_draft(study_uid: str, form: ReportForm):
    return services.save_draft(db(), study_uid, author=current_user.login,
                               amendment_reason=form.amendment_reason.data or "",
                               **{f: getattr(form, f).data or "" for f in services.REPORT_FIELDS})


@bp.route("/studies/<study_uid>/report", methods=["POST"])
@roles_required("radiologist")
def save_report(study_uid: str):
    detail = study_detail(study_uid)
    form = ReportForm()
    if not form.validate_on_submit():
        abort(400)
    draft = _save_draft(study_uid, form)
    facade().audit(db(), "report.draft", actor=current_user.login, patient_id=detail.study.patient_id,
                   study_uid=study_uid, detail={"version": draft.version})
    flash(_("Brouillon enregistré."), "info")
    return redirect(url_for(".study", study_uid=study_uid, _anchor="report"))


@bp.route("/studies/<study_uid>/report/autosave", methods=["POST"])
@roles_required("radiologist")
def autosave_report(study_uid: str):
    """The report editor's draft, saved as it is typed (the page's script posts it every few seconds, with
    its CSRF token). Answers JSON; the audit trail records the draft once, when it is created, not each
    keystroke's save."""
    detail = study_detail(study_uid)
    form = ReportForm()
    if not form.validate_on_submit():
        return jsonify({"error": {"code": "bad_request", "message": _("Brouillon non enregistré : rechargez la page.")}}), 400
    created = services.current_draft(db(), study_uid) is None
    draft = _save_draft(study_uid, form)
    if created:
        facade().audit(db(), "report.draft", actor=current_user.login, patient_id=detail.study.patient_id,
                       study_uid=study_uid, detail={"version": draft.version, "autosave": True})
    return jsonify({"saved": True, "version": draft.version,
                    "saved_at": paris_time(draft.updated_at).strftime("%H:%M:%S")})


@bp.route("/studies/<study_uid>/report/sign", methods=["POST"])
@roles_required("radiologist")
def sign_report(study_uid: str):
    detail = study_detail(study_uid)
    if not ActionForm().validate_on_submit():
        abort(400)
    report = services.sign_report(db(), study_uid, signed_by=current_user.login,
                                  signer_name=current_user.full_name, signer_rpps=current_user.rpps)
    facade().audit(db(), "report.sign", actor=current_user.login, patient_id=detail.study.patient_id,
                   study_uid=study_uid, detail={"version": report.version})
    flash(_("Compte rendu signé (version %(version)s).", version=report.version), "info")
    return redirect(url_for(".study", study_uid=study_uid, _anchor="report"))


@bp.route("/documents/<sop_instance_uid>.pdf")
@roles_required(*READERS)
def document_pdf(sop_instance_uid: str):
    study_uid = facade().instance_study_uid(db(), sop_instance_uid)  # an unknown object: NotFound, 404
    data = facade().document_pdf(sop_instance_uid)
    audit_view("document.view", study_detail(study_uid), sop_instance_uid=sop_instance_uid)
    return Response(data, mimetype="application/pdf")


__all__ = ["bp", "share_bp"]
