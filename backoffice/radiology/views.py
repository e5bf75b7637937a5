"""Radiology pages: study browser, study page, viewer and its image endpoint, reports, key images, share links.

The ``share`` blueprint holds the only unauthenticated routes of the application: a referring doctor's
time-limited, revocable link (secret token in the URL, and a code sent apart, typed once on each device).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from babel.dates import format_date
from click import argument as click_argument
from flask import (Blueprint, Response, abort, flash, jsonify, redirect, render_template, request,
                   session, url_for)
from flask_babel import get_locale, gettext as _, lazy_gettext as _l
from flask_login import current_user
from flask_wtf import FlaskForm
from jinja2 import pass_context
from wtforms import BooleanField, DateField, IntegerField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import NumberRange, Optional

from archive_core.api import PRESETS, NotFound, RenderError, RenderParams
from backoffice.auth import roles_required
from backoffice.extensions import db, facade, rollback
from backoffice.radiology import services
from backoffice.radiology.sending import failures_of, jobs_for
from archive_core.values import paris_time
from backoffice.radiology.presets import preset_label
from backoffice.radiology.signature import signature_line

bp = Blueprint("radiology", __name__, url_prefix="/radiology")
bp.add_app_template_global(signature_line, "report_signature")
bp.add_app_template_filter(paris_time, "paris_time")
bp.add_app_template_filter(preset_label, "preset_label")
share_bp = Blueprint("share", __name__, url_prefix="/share")

READERS = ("radiologist", "front_desk")
PAGE_SIZE = 50


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


def _study_or_404(study_uid: str):
    try:
        return facade().study_detail(db(), study_uid)
    except NotFound:
        abort(404)


def _peers():
    return [p for p in facade().peers(db()) if not p.external]


def _audit_view(action: str, detail, **extra) -> None:
    facade().audit_now(action, actor=current_user.login, patient_id=detail.study.patient_id,
                       study_uid=detail.study.study_uid, detail=extra or None)


def render_params_from(args) -> RenderParams:
    """Window/level, preset, frame, size and format from query parameters (400 when invalid)."""
    try:
        return RenderParams(
            frame=args.get("frame", 0, type=int),
            window_center=args.get("wc", type=float),
            window_width=args.get("ww", type=float),
            preset=args.get("preset") or None,
            size=args.get("size", 512, type=int),
            fmt=args.get("fmt", "png"),
        )
    except RenderError as exc:
        abort(400, str(exc))


MULTIFRAME_SCAN_LIMIT = 10  # series this small are checked for multi-frame objects (cine, enhanced CT/MR)


def viewer_items(refs) -> list[dict]:
    """What the viewer scrolls through: each image, and each frame of a multi-frame object."""
    images = [r for r in refs if r.is_image]
    items = []
    for r in images:
        frames = facade().number_of_frames(r.sop_instance_uid) if len(images) <= MULTIFRAME_SCAN_LIMIT else 1
        items += [{"sop_instance_uid": r.sop_instance_uid, "instance_number": r.instance_number, "frame": n}
                  for n in range(frames)]
    return items


def image_response(sop_instance_uid: str, params: RenderParams) -> Response:
    try:
        data = facade().render_instance(db(), sop_instance_uid, params)
    except NotFound:
        abort(404)
    except RenderError as exc:
        abort(422, str(exc))
    response = Response(data, mimetype=params.content_type)
    # Patient data on shared desk PCs: never kept (the edge sets Cache-Control: no-store on every response).
    return response


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


class ReportForm(FlaskForm):
    indication = TextAreaField(_l("Indication"))
    technique = TextAreaField(_l("Technique"))
    findings = TextAreaField(_l("Résultats"))
    conclusion = TextAreaField(_l("Conclusion"))
    amendment_reason = StringField(_l("Motif de l'avenant"))


class ActionForm(FlaskForm):
    """CSRF only (buttons)."""


class ShareForm(FlaskForm):
    recipient = StringField(_l("Destinataire (médecin)"))
    days = IntegerField(_l("Durée (jours)"), default=7, validators=[NumberRange(min=1, max=services.SHARE_MAX_DAYS)])
    include_priors = BooleanField(_l("Avec les examens antérieurs (DICOMweb)"), default=False)


@bp.route("/studies/<study_uid>")
@roles_required(*READERS)
def study(study_uid: str):
    detail = _study_or_404(study_uid)
    s = db()
    draft = services.current_draft(s, study_uid)
    form = ReportForm(obj=draft) if draft else ReportForm(obj=services.signed_report(s, study_uid))
    _audit_view("study.view", detail)
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
        share_links=services.share_links_of(s, study_uid) if current_user.role == "radiologist" else [],
        form=form,
        action_form=ActionForm(),
        share_form=ShareForm(),
        new_share=session.pop("new_share", None),
        peers=_peers() if current_user.role == "radiologist" else [],
        send_jobs=(jobs := jobs_for(s, study_uid) if current_user.role == "radiologist" else []),
        send_failures={job.id: failures_of(s, job.id) for job in jobs if job.failed},
        job_statuses={code: str(label) for code, label in JOB_STATUSES.items()},
        layouts=(1, 2, 4, 6),
    )


@bp.route("/studies/<study_uid>/report", methods=["POST"])
@roles_required("radiologist")
def save_report(study_uid: str):
    detail = _study_or_404(study_uid)
    form = ReportForm()
    if not form.validate_on_submit():
        abort(400)
    try:
        draft = services.save_draft(db(), study_uid, author=current_user.login,
                                    amendment_reason=form.amendment_reason.data or "",
                                    **{f: getattr(form, f).data or "" for f in services.REPORT_FIELDS})
    except services.RadiologyError as exc:
        rollback()  # a handled error commits nothing the service had already written
        flash(str(exc), "error")
        return redirect(url_for(".study", study_uid=study_uid, _anchor="report"))
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
    detail = _study_or_404(study_uid)
    form = ReportForm()
    if not form.validate_on_submit():
        return jsonify({"error": {"code": "bad_request", "message": _("Brouillon non enregistré : rechargez la page.")}}), 400
    created = services.current_draft(db(), study_uid) is None
    try:
        draft = services.save_draft(db(), study_uid, author=current_user.login,
                                    amendment_reason=form.amendment_reason.data or "",
                                    **{f: getattr(form, f).data or "" for f in services.REPORT_FIELDS})
    except services.RadiologyError as exc:
        rollback()
        return jsonify({"error": {"code": "conflict", "message": str(exc)}}), 409
    if created:
        facade().audit(db(), "report.draft", actor=current_user.login, patient_id=detail.study.patient_id,
                       study_uid=study_uid, detail={"version": draft.version, "autosave": True})
    return jsonify({"saved": True, "version": draft.version,
                    "saved_at": paris_time(draft.updated_at).strftime("%H:%M:%S")})


@bp.route("/studies/<study_uid>/report/sign", methods=["POST"])
@roles_required("radiologist")
def sign_report(study_uid: str):
    detail = _study_or_404(study_uid)
    if not ActionForm().validate_on_submit():
        abort(400)
    try:
        report = services.sign_report(db(), study_uid, signed_by=current_user.login,
                                      signer_name=current_user.full_name, signer_rpps=current_user.rpps)
    except services.RadiologyError as exc:
        rollback()  # a handled error commits nothing the service had already written
        flash(str(exc), "error")
        return redirect(url_for(".study", study_uid=study_uid, _anchor="report"))
    facade().audit(db(), "report.sign", actor=current_user.login, patient_id=detail.study.patient_id,
                   study_uid=study_uid, detail={"version": report.version})
    flash(_("Compte rendu signé (version %(version)s).", version=report.version), "info")
    return redirect(url_for(".study", study_uid=study_uid, _anchor="report"))


@bp.route("/documents/<sop_instance_uid>.pdf")
@roles_required(*READERS)
def document_pdf(sop_instance_uid: str):
    try:
        study_uid = facade().instance_study_uid(db(), sop_instance_uid)
        data = facade().document_pdf(sop_instance_uid)
    except NotFound:
        abort(404)
    _audit_view("document.view", _study_or_404(study_uid), sop_instance_uid=sop_instance_uid)
    return Response(data, mimetype="application/pdf")


# -- key images, print, media ----------------------------------------------------------------------


@bp.route("/studies/<study_uid>/key-images", methods=["POST"])
@roles_required(*READERS)
def add_key_image(study_uid: str):
    _study_or_404(study_uid)
    if not ActionForm().validate_on_submit():
        abort(400)
    sop_uid = request.form.get("sop_instance_uid", "")
    try:
        if facade().instance_study_uid(db(), sop_uid) != study_uid:
            abort(400)
        key = services.add_key_image(db(), study_uid, sop_uid, chosen_by=current_user.login,
                                     frame=request.form.get("frame", 0, type=int),
                                     window_center=request.form.get("wc", type=float),
                                     window_width=request.form.get("ww", type=float))
    except NotFound:
        abort(404)
    except services.RadiologyError as exc:
        return jsonify({"error": str(exc)}), 409
    if request.accept_mimetypes.best == "application/json":
        return jsonify({"position": key.position + 1})
    return redirect(url_for(".study", study_uid=study_uid, _anchor="print"))


@bp.route("/studies/<study_uid>/key-images/clear", methods=["POST"])
@roles_required(*READERS)
def clear_key_images(study_uid: str):
    _study_or_404(study_uid)
    if not ActionForm().validate_on_submit():
        abort(400)
    services.clear_key_images(db(), study_uid)
    return redirect(url_for(".study", study_uid=study_uid, _anchor="print"))


@bp.route("/studies/<study_uid>/reproduction.pdf")
@roles_required(*READERS)
def reproduction(study_uid: str):
    from backoffice.radiology.reproduction import build_reproduction

    detail = _study_or_404(study_uid)
    try:
        pdf = build_reproduction(db(), facade(), study_uid, per_page=request.args.get("per_page", 4, type=int))
    except services.RadiologyError as exc:
        abort(400, str(exc))
    _audit_view("study.print", detail, via="web")
    return Response(pdf, mimetype="application/pdf")


@bp.route("/studies/<study_uid>/media.zip")
@roles_required(*READERS)
def media(study_uid: str):
    from backoffice.api import ApiError
    from backoffice.api.radiology import media_zip

    detail = _study_or_404(study_uid)
    try:
        data = media_zip(detail, request.args.getlist("prior"))
    except ApiError:
        abort(400)
    _audit_view("study.media", detail, via="web")
    return Response(data, mimetype="application/zip",
                    headers={"Content-Disposition": 'attachment; filename="examen-dicom.zip"'})


# -- send to a workstation -------------------------------------------------------------------------


# How a send job's status reads on the page (the JSON keeps the codes of the public contract).
JOB_STATUSES = {"queued": _l("en attente"), "running": _l("envoi en cours"), "done": _l("terminé"), "failed": _l("échec")}


@bp.route("/studies/<study_uid>/send", methods=["POST"])
@roles_required("radiologist")
def send(study_uid: str):
    from backoffice.radiology.sending import create_send_job, start_in_background

    detail = _study_or_404(study_uid)
    if not ActionForm().validate_on_submit():
        abort(400)
    peer = facade().find_peer(db(), request.form.get("peer", ""))
    if peer is None:
        flash(_("Choisissez une station enregistrée."), "error")
        return redirect(url_for(".study", study_uid=study_uid, _anchor="send"))
    allowed = {p.study_uid for p in facade().prior_studies(db(), study_uid)}
    priors = [uid for uid in request.form.getlist("prior") if uid in allowed]
    uids = [study_uid, *priors]
    job = create_send_job(db(), peer.ae_title, uids, requested_by=current_user.login,
                          total=facade().count_instances(db(), uids))
    facade().audit(db(), "study.send.request", actor=current_user.login, patient_id=detail.study.patient_id,
                   study_uid=study_uid, detail={"peer": peer.ae_title, "job": job.id, "priors": priors})
    response = redirect(url_for(".study", study_uid=study_uid, _anchor="send"))
    job_id, the_facade = job.id, facade()
    # After the request has committed the job (after_request), not before: the thread must see it.
    response.call_on_close(lambda: start_in_background(the_facade, job_id))
    return response


@bp.route("/send-jobs/<int:job_id>.json")
@roles_required("radiologist")
def send_job(job_id: int):
    from backoffice.radiology.models import SendJob
    from backoffice.radiology.sending import job_json

    job = db().get(SendJob, job_id)
    if job is None:
        abort(404)
    return jsonify(job_json(db(), job))


# -- viewer ----------------------------------------------------------------------------------------


@bp.route("/studies/<study_uid>/viewer")
@roles_required(*READERS)
def viewer(study_uid: str):
    detail = _study_or_404(study_uid)
    prior = None
    compare = request.args.get("compare")
    if compare:
        if compare not in {p.study_uid for p in facade().prior_studies(db(), study_uid)}:
            abort(404)
        prior = facade().study_detail(db(), compare)
    _audit_view("study.view", detail, viewer=True, compare=compare)
    return viewer_page(detail, prior, key_image_url=url_for(".add_key_image", study_uid=study_uid), shared=False)


def viewer_page(detail, prior, *, key_image_url: str | None, shared: bool) -> Response:
    """The Cornerstone3D viewer (backoffice/static/vendor/viewer, built from viewer/): it reads the images
    through /dicom-web with this browser's session (a share link's session reads its one study only).
    Its page alone may start web workers and compile WebAssembly (the codecs)."""
    from backoffice.security import content_security_policy, csp_nonce

    response = Response(render_template("radiology/viewer.html", detail=detail, prior=prior, presets=PRESETS,
                                        dicomweb_url=url_for("dicomweb.search_studies").rsplit("/", 1)[0],
                                        key_image_url=key_image_url, shared=shared), mimetype="text/html")
    response.headers["Content-Security-Policy"] = content_security_policy(csp_nonce(), viewer=True)
    return response


@bp.route("/series/<series_uid>/instances.json")
@roles_required(*READERS)
def series_instances(series_uid: str):
    try:
        refs = facade().series_instances(db(), series_uid)
    except NotFound:
        abort(404)
    return jsonify({"items": viewer_items(refs)})


@bp.route("/instances/<sop_instance_uid>/image")
@roles_required(*READERS)
def image(sop_instance_uid: str):
    return image_response(sop_instance_uid, render_params_from(request.args))


# -- share links -----------------------------------------------------------------------------------


@bp.route("/studies/<study_uid>/share", methods=["POST"])
@roles_required("radiologist")
def create_share(study_uid: str):
    detail = _study_or_404(study_uid)
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
    try:
        link = services.revoke_share_link(db(), link_id)
    except services.RadiologyError:
        abort(404)
    facade().audit(db(), "share.revoke", actor=current_user.login, study_uid=link.study_uid, detail={"link": link.id})
    flash(_("Lien révoqué."), "info")
    return redirect(url_for(".study", study_uid=link.study_uid, _anchor="share"))


def _shared_link(token: str):
    """The link if valid and unlocked by its code in this browser session; else None (or 404/410)."""
    try:
        link = services.share_link_for(db(), token)
    except services.ShareDenied as exc:
        abort(410, str(exc))
    return link if session.get("share_ok", {}).get(str(link.id)) else None


class CodeForm(FlaskForm):
    code = StringField(_l("Code reçu séparément"))


@share_bp.route("/<token>", methods=["GET", "POST"])
def open_link(token: str):
    """The doctor's page: the code first (once per device), then the patient, the signed report and the images."""
    s = facade().new_session(write=True)
    try:
        try:
            link = services.share_link_for(s, token)
        except services.ShareDenied as exc:
            return render_template("radiology/share_denied.html", reason=str(exc)), 410
        if session.get("share_ok", {}).get(str(link.id)):
            return _shared_study_page(s, link, token)
        form = CodeForm()
        if form.validate_on_submit():
            ok = services.check_share_code(s, link, form.code.data or "")
            facade().audit(s, "share.open" if ok else "share.bad_code", actor=f"share:{link.id}",
                           actor_kind="share_link", study_uid=link.study_uid, detail={"ip": request.remote_addr})
            s.commit()
            if ok:
                session["share_ok"] = {**session.get("share_ok", {}), str(link.id): True}
                return redirect(url_for(".open_link", token=token))
            left = services.SHARE_MAX_FAILED_CODES - link.failed_codes
            if left <= 0:
                return render_template("radiology/share_denied.html",
                                       reason=_("lien bloqué après trop de codes erronés")), 410
            flash(_("Code incorrect. Encore %(left)s essai(s) avant que le lien ne soit bloqué.", left=left), "error")
        return render_template("radiology/share_code.html", form=form)
    finally:
        s.close()


def _shared_study_page(s, link, token: str):
    detail = _study_or_404(link.study_uid)
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
    detail = _study_or_404(link.study_uid)
    facade().audit_now("study.view", actor=f"share:{link.id}", actor_kind="share_link",
                       patient_id=detail.study.patient_id, study_uid=link.study_uid, detail={"viewer": True})
    return viewer_page(detail, None, key_image_url=None, shared=True)


@share_bp.route("/<token>/series/<series_uid>/instances.json")
def series_shared(token: str, series_uid: str):
    link = _shared_link(token)
    if link is None:
        abort(403)
    detail = _study_or_404(link.study_uid)
    if series_uid not in {se.series_uid for se in detail.series}:
        abort(404)
    return jsonify({"items": viewer_items(facade().series_instances(db(), series_uid))})


@share_bp.route("/<token>/instances/<sop_instance_uid>/image")
def image_shared(token: str, sop_instance_uid: str):
    link = _shared_link(token)
    if link is None:
        abort(403)
    try:
        if facade().instance_study_uid(db(), sop_instance_uid) != link.study_uid:
            abort(404)
    except NotFound:
        abort(404)
    return image_response(sop_instance_uid, render_params_from(request.args))



# -- command line ----------------------------------------------------------------------------------


@bp.cli.command("media")
@click_argument("folder")
@click_argument("study_uids", nargs=-1, required=True)
def media_command(folder: str, study_uids: tuple[str, ...]) -> None:
    """Write a CD/USB file set (DICOMDIR, README.TXT) of STUDY_UIDS (main study first) into FOLDER."""
    import click

    from backoffice.practice import practice_identity

    target = Path(folder)
    if target.exists() and any(target.iterdir()):
        raise click.ClickException(f"{folder} is not empty")
    try:
        with facade().new_session() as s:  # the command's read (no request here); the audit below writes
            detail = facade().study_detail(s, study_uids[0])
            allowed = {p.study_uid for p in facade().prior_studies(s, study_uids[0])}
            if not set(study_uids[1:]) <= allowed:
                raise click.ClickException("the other studies must belong to the same patient")
            report = facade().write_media(s, list(study_uids), target, practice=practice_identity())
    except NotFound as exc:
        raise click.ClickException(str(exc)) from exc
    facade().audit_now("study.media", actor="cli", actor_kind="system", patient_id=detail.study.patient_id,
                       study_uid=study_uids[0], detail={"via": "cli", "studies": list(study_uids)})
    click.echo(f"{report.instances} objects written to {target} ({report.converted} re-encoded)")
