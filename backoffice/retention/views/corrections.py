"""Corrections: move a study, merge two records, propose the deletion of a study sent by mistake."""

from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user

from backoffice.auth import roles_required
from backoffice.extensions import db, facade
from backoffice.retention import batches, corrections as correcting
from backoffice.retention.views import MANAGER, bp, form_errors
from backoffice.retention.views.forms import DeletionForm, MergeForm, MoveForm


@bp.route("/corrections", methods=["GET", "POST"])
@roles_required(*MANAGER)
def corrections():
    forms = {"move": MoveForm(prefix="move"), "merge": MergeForm(prefix="merge"), "delete": DeletionForm(prefix="delete")}
    if request.method == "POST":
        action = request.form.get("action", "")
        form = forms.get(action)
        if form is None or not form.validate_on_submit():
            if form is not None:
                form_errors(form)
            else:
                flash(_("Action inconnue."), "error")
            return redirect(url_for("retention.corrections"))
        if action == "move":
            correcting.move_study(db(), facade(), form.study_uid.data.strip(), form.patient_id.data.strip(),
                                  form.reason.data, actor=current_user.login)
            flash(_("Examen rattaché au bon patient."), "info")
        elif action == "merge":
            n = correcting.merge_patients(db(), facade(), form.source.data.strip(), form.target.data.strip(),
                                          form.reason.data, actor=current_user.login)
            flash(_("Patients fusionnés (%(count)s examens déplacés).", count=n), "info")
        else:
            b = batches.request_study_deletion(db(), facade(), form.study_uid.data.strip(), form.reason.data,
                                               actor=current_user.login)
            flash(_("Suppression proposée : elle attend l'approbation d'un autre responsable."), "info")
            return redirect(url_for("retention.batch", batch_id=b.id))
        return redirect(url_for("retention.corrections"))
    return render_template("retention/corrections.html", forms=forms)
