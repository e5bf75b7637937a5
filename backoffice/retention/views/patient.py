"""One patient: today's answer, legal holds, the death date (with its second confirmation)."""

from __future__ import annotations

from flask import abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user

from backoffice.auth import roles_required
from backoffice.extensions import db, facade
from backoffice.retention import records
from backoffice.retention.clock import now_utc, today
from backoffice.retention.decisions import patient_retention
from backoffice.retention.errors import RetentionError, message_for
from backoffice.retention.views import MANAGER, bp, form_errors
from backoffice.retention.views.forms import ConfirmForm, DeathForm, HoldForm


@bp.route("/patient")
@roles_required(*MANAGER)
def patient():
    patient_id = request.args.get("patient_id", "").strip()
    if not patient_id:
        return redirect(url_for("retention.index"))
    try:
        answer = patient_retention(db(), facade(), patient_id, today=today())
    except RetentionError as exc:
        if exc.key != "patient_not_found":
            raise
        # Not an ID: a name or a birth date, looked up with the archive's one patient search.
        matches = facade().search_patients(db(), patient_id, limit=50).items
        facade().audit_now("patient.search", actor=current_user.login, detail={"results": len(matches)})
        if len(matches) == 1:
            return redirect(url_for("retention.patient", patient_id=matches[0].patient_id))
        if not matches:
            raise
        return render_template("retention/choose_patient.html", q=patient_id, patients=matches)
    facade().audit_now("retention.viewed", actor=current_user.login, patient_id=patient_id)
    return render_template("retention/patient.html", p=answer, hold_form=HoldForm(patient_id=patient_id),
                           death_form=DeathForm(patient_id=patient_id, death_date=answer.death_date),
                           confirm=ConfirmForm())


def _back_to(patient_id: str | None):
    if patient_id:
        return redirect(url_for("retention.patient", patient_id=patient_id))
    return redirect(url_for("retention.index"))


@bp.route("/holds", methods=["POST"])
@roles_required(*MANAGER)
def place_hold():
    form = HoldForm()
    if not form.validate_on_submit():
        form_errors(form)
        return redirect(url_for("retention.index"))
    records.place_hold(db(), facade(), form.patient_id.data.strip(), form.reason.data, actor=current_user.login,
                       today=today(), now=now_utc())
    flash(_("Séquestre posé : rien de ce patient ne sera détruit tant qu'il tient."), "info")
    return _back_to(form.patient_id.data.strip())


@bp.route("/holds/<int:hold_id>/release", methods=["POST"])
@roles_required(*MANAGER)
def release_hold(hold_id: int):
    form = ConfirmForm()
    if not form.validate_on_submit():
        abort(400)
    hold = records.release_hold(db(), facade(), hold_id, actor=current_user.login, now=now_utc())
    flash(_("Séquestre levé : sa durée s'ajoute à l'échéance."), "info")
    return _back_to(hold.patient_id)


@bp.route("/deaths", methods=["POST"])
@roles_required(*MANAGER)
def record_death():
    form = DeathForm()
    if not form.validate_on_submit():
        form_errors(form)
        return redirect(url_for("retention.index"))
    patient_id = form.patient_id.data.strip()
    try:
        records.record_death(db(), facade(), patient_id, form.death_date.data, actor=current_user.login,
                             today=today(), confirm_shortening=form.confirm_shortening.data == "yes")
    except RetentionError as exc:
        if exc.key != "shortening_needs_confirmation":
            raise
        # The second confirmation: the same date again, with what it changes, before anything is written.
        db().rollback()
        answer = patient_retention(db(), facade(), patient_id, today=today())
        return render_template("retention/death_confirm.html", p=answer, error=message_for(exc),
                               death_date=form.death_date.data, before=exc.params["before"],
                               after=exc.params["after"],
                               form=DeathForm(formdata=None, patient_id=patient_id,
                                              death_date=form.death_date.data, confirm_shortening="yes")), 409
    flash(_("Décès enregistré."), "info")
    return _back_to(patient_id)
