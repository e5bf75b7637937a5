"""Share links: the radiologist creates and revokes them (``radiology`` blueprint); the referring doctor
opens one (``share`` blueprint: secret token in the URL, and a code sent apart, typed once on each device)."""

from __future__ import annotations

from flask import abort, flash, jsonify, redirect, render_template, request, session, url_for
from flask_babel import gettext as _, lazy_gettext as _l
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import BooleanField, IntegerField, StringField
from wtforms.validators import NumberRange

from backoffice.auth import roles_required
from backoffice.extensions import db, facade
from backoffice.radiology import services
from backoffice.radiology.errors import TABLE
from backoffice.radiology.viewing import image_response, render_params_from, viewer_items, viewer_page
from backoffice.radiology.web import ActionForm, ReportForm, bp, share_bp, study_detail


class ShareForm(FlaskForm):
    recipient = StringField(_l("Destinataire (médecin)"))
    days = IntegerField(_l("Durée (jours)"), default=7, validators=[NumberRange(min=1, max=services.SHARE_MAX_DAYS)])
    include_priors = BooleanField(_l("Avec les examens antérieurs (DICOMweb)"), default=False)


class CodeForm(FlaskForm):
    code = StringField(_l("Code reçu séparément"))


@bp.route("/studies/<study_uid>/share", methods=["POST"])
@roles_required("radiologist")
def create_share(study_uid: str):
    detail = study_detail(study_uid)
    form = ShareForm()
    if not form.validate_on_submit():
        flash(_("Durée invalide."), "error")
        return redirect(url_for(".study", study_uid=study_uid, _anchor="share"))
    new = services.create_share_link(db(), study_uid, created_by=current_user.login, days=form.days.data,
                                     recipient=form.recipient.data or "", include_priors=bool(form.include_priors.data))
    facade().audit(db(), "share.create", actor=current_user.login, patient_id=detail.study.patient_id,
                   study_uid=study_uid, detail={"link": new.link.id, "days": form.days.data,
                                                "priors": bool(form.include_priors.data)})
    # Shown once on the next page, never stored in clear.
    session["new_share"] = {"url": url_for("share.open_link", token=new.token, _external=True), "code": new.code}
    return redirect(url_for(".study", study_uid=study_uid, _anchor="share"))


@bp.route("/shares/<int:link_id>/revoke", methods=["POST"])
@roles_required("radiologist")
def revoke_share(link_id: int):
    if not ActionForm().validate_on_submit():
        abort(400)
    link = services.revoke_share_link(db(), link_id)
    facade().audit(db(), "share.revoke", actor=current_user.login, study_uid=link.study_uid, detail={"link": link.id})
    flash(_("Lien révoqué."), "info")
    return redirect(url_for(".study", study_uid=link.study_uid, _anchor="share"))


def _shared_link(token: str):
    """The link if valid and unlocked by its code in this browser session; else None (ShareDenied: 410)."""
    link = services.share_link_for(db(), token)
    return link if session.get("share_ok", {}).get(str(link.id)) else None


@share_bp.route("/<token>", methods=["GET", "POST"])
def open_link(token: str):
    """The doctor's page: the code first (once per device), then the patient, the signed report and the images."""
    s = facade().new_session(write=True)
    try:
        link = services.share_link_for(s, token)
        if session.get("share_ok", {}).get(str(link.id)):
            return _shared_study_page(s, link, token)
        form = CodeForm()
        if form.validate_on_submit():
            ok = services.check_share_code(s, link, form.code.data or "")
            facade().audit(s, "share.open" if ok else "share.bad_code", actor=f"share:{link.id}",
                           actor_kind="share_link", study_uid=link.study_uid, detail={"ip": request.remote_addr})
            s.commit()  # this page's own session (the link's), not the request's: the count of wrong codes stays
            if ok:
                session["share_ok"] = {**session.get("share_ok", {}), str(link.id): True}
                return redirect(url_for(".open_link", token=token))
            left = services.SHARE_MAX_FAILED_CODES - link.failed_codes
            if left <= 0:
                return render_template("radiology/share_denied.html", reason=TABLE.rows["share_locked"]), 410
            flash(_("Code incorrect. Encore %(left)s essai(s) avant que le lien ne soit bloqué.", left=left), "error")
        return render_template("radiology/share_code.html", form=form)
    finally:
        s.close()


def _shared_study_page(s, link, token: str):
    detail = study_detail(link.study_uid)
    facade().audit(s, "study.view", actor=f"share:{link.id}", actor_kind="share_link",
                   patient_id=detail.study.patient_id, study_uid=link.study_uid, detail={"report": True})
    s.commit()  # this page's own session (the link's), not the request's
    return render_template(
        "radiology/shared_study.html", detail=detail, study=detail.study, signed=services.signed_report(s, link.study_uid),
        key_images=services.key_images(s, link.study_uid), report_labels=ReportForm(meta={"csrf": False}),
        expires_at=link.expires_at, token=token,
        image_url=lambda sop, **kw: url_for(".image_shared", token=token, sop_instance_uid=sop, **kw))


@share_bp.route("/<token>/viewer")
def viewer_shared(token: str):
    link = _shared_link(token)
    if link is None:
        return redirect(url_for(".open_link", token=token))
    detail = study_detail(link.study_uid)
    facade().audit_now("study.view", actor=f"share:{link.id}", actor_kind="share_link",
                       patient_id=detail.study.patient_id, study_uid=link.study_uid, detail={"viewer": True})
    return viewer_page(detail, None, key_image_url=None, shared=True)


@share_bp.route("/<token>/series/<series_uid>/instances.json")
def series_shared(token: str, series_uid: str):
    link = _shared_link(token)
    if link is None:
        abort(403)
    detail = study_detail(link.study_uid)
    if series_uid not in {se.series_uid for se in detail.series}:
        abort(404)
    return jsonify({"items": viewer_items(facade().series_instances(db(), series_uid))})


@share_bp.route("/<token>/instances/<sop_instance_uid>/image")
def image_shared(token: str, sop_instance_uid: str):
    link = _shared_link(token)
    if link is None:
        abort(403)
    if facade().instance_study_uid(db(), sop_instance_uid) != link.study_uid:  # unknown object: NotFound, 404
        abort(404)
    return image_response(sop_instance_uid, render_params_from(request.args))
