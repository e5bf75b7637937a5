"""What leaves the study page: key images and the paper reproduction, the CD/USB media (page and
``flask radiology media``), and sending to a workstation (C-STORE jobs)."""

from __future__ import annotations

from pathlib import Path

from click import argument as click_argument
from flask import Response, abort, flash, jsonify, redirect, request, url_for
from flask_babel import gettext as _, lazy_gettext as _l
from flask_login import current_user

from backoffice.auth import roles_required
from backoffice.extensions import db, facade
from backoffice.radiology import services
from backoffice.radiology.web import READERS, ActionForm, audit_view, bp, study_detail

# How a send job's status reads on the page (the JSON keeps the codes of the public contract).
JOB_STATUSES = {"queued": _l("en attente"), "running": _l("envoi en cours"), "done": _l("terminé"), "failed": _l("échec")}


# -- key images, print, media ----------------------------------------------------------------------


@bp.route("/studies/<study_uid>/key-images", methods=["POST"])
@roles_required(*READERS)
def add_key_image(study_uid: str):
    study_detail(study_uid)
    if not ActionForm().validate_on_submit():
        abort(400)
    sop_uid = request.form.get("sop_instance_uid", "")
    if facade().instance_study_uid(db(), sop_uid) != study_uid:  # an unknown object: NotFound, 404
        abort(400)
    key = services.add_key_image(db(), study_uid, sop_uid, chosen_by=current_user.login,
                                 frame=request.form.get("frame", 0, type=int),
                                 window_center=request.form.get("wc", type=float),
                                 window_width=request.form.get("ww", type=float))
    if request.accept_mimetypes.best == "application/json":
        return jsonify({"position": key.position + 1})
    return redirect(url_for(".study", study_uid=study_uid, _anchor="print"))


@bp.route("/studies/<study_uid>/key-images/clear", methods=["POST"])
@roles_required(*READERS)
def clear_key_images(study_uid: str):
    study_detail(study_uid)
    if not ActionForm().validate_on_submit():
        abort(400)
    services.clear_key_images(db(), study_uid)
    return redirect(url_for(".study", study_uid=study_uid, _anchor="print"))


@bp.route("/studies/<study_uid>/reproduction.pdf")
@roles_required(*READERS)
def reproduction(study_uid: str):
    from backoffice.radiology.reproduction import build_reproduction

    detail = study_detail(study_uid)
    pdf = build_reproduction(db(), facade(), study_uid, per_page=request.args.get("per_page", 4, type=int))
    audit_view("study.print", detail, via="web")
    return Response(pdf, mimetype="application/pdf")


@bp.route("/studies/<study_uid>/media.zip")
@roles_required(*READERS)
def media(study_uid: str):
    from backoffice.api import ApiError
    from backoffice.api.radiology import media_zip

    detail = study_detail(study_uid)
    try:
        data = media_zip(detail, request.args.getlist("prior"))
    except ApiError:  # a prior of another patient: the API's error, a plain 400 here
        abort(400)
    audit_view("study.media", detail, via="web")
    return Response(data, mimetype="application/zip",
                    headers={"Content-Disposition": 'attachment; filename="examen-dicom.zip"'})


# -- send to a workstation -------------------------------------------------------------------------


@bp.route("/studies/<study_uid>/send", methods=["POST"])
@roles_required("radiologist")
def send(study_uid: str):
    from backoffice.radiology.sending import create_send_job, start_in_background

    detail = study_detail(study_uid)
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
    from backoffice.radiology.sending import get_job, job_json

    job = get_job(db(), job_id)
    if job is None:
        abort(404)
    return jsonify(job_json(db(), job))


# -- command line ----------------------------------------------------------------------------------


@bp.cli.command("media")
@click_argument("folder")
@click_argument("study_uids", nargs=-1, required=True)
def media_command(folder: str, study_uids: tuple[str, ...]) -> None:
    """Write a CD/USB file set (DICOMDIR, README.TXT) of STUDY_UIDS (main study first) into FOLDER."""
    import click

    from archive_core.api import NotFound
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
