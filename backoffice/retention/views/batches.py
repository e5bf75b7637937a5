"""Purge batches: the batch page, the four-eyes decision, the purge's confirmation step, certificates."""

from __future__ import annotations

import io

from flask import abort, flash, redirect, render_template, request, send_file, url_for
from flask_babel import gettext as _
from flask_login import current_user
from sqlalchemy import select

from backoffice.auth import roles_required
from backoffice.extensions import db, facade
from backoffice.retention import batches
from backoffice.retention.certificate import certificates_dir, render_certificate
from backoffice.retention.clock import today
from backoffice.retention.errors import RetentionError, message_for
from backoffice.retention.models import PurgeBatch
from backoffice.retention.purge import run_purge
from backoffice.retention.views import MANAGER, PAGE, bp
from backoffice.retention.views.forms import ConfirmForm, ExecuteForm, ReasonForm


def _batch_or_404(batch_id: int) -> PurgeBatch:
    batch = db().get(PurgeBatch, batch_id)
    if batch is None:
        abort(404)
    return batch


def _items(b: PurgeBatch) -> list[dict]:
    day = today()
    return [{"item": i, **batches.item_view(db(), facade(), i, day)} for i in b.items]


@bp.route("/batches/<int:batch_id>")
@roles_required(*MANAGER)
def batch(batch_id: int):
    b = _batch_or_404(batch_id)
    return render_template("retention/batch.html", batch=b, items=_items(b), reason_form=ReasonForm(),
                           confirm=ConfirmForm())


@bp.route("/batches/<int:batch_id>/approve", methods=["POST"])
@roles_required(*MANAGER)
def approve(batch_id: int):
    return _decide(batch_id, "approve")


@bp.route("/batches/<int:batch_id>/reject", methods=["POST"])
@roles_required(*MANAGER)
def reject(batch_id: int):
    return _decide(batch_id, "reject")


def _decide(batch_id: int, decision: str):
    form = ReasonForm()
    if not form.validate_on_submit():
        flash(_("Un motif est requis pour décider."), "error")
        return redirect(url_for("retention.batch", batch_id=batch_id))
    batches.decide_batch(db(), facade(), batch_id, approve=decision == "approve", reason=form.reason.data,
                         actor=current_user.login, today=today())
    approved = decision == "approve"
    flash(_("Lot approuvé : un autre responsable que le demandeur peut maintenant l'exécuter.") if approved
          else _("Lot refusé."), "info")
    return redirect(url_for("retention.batch", batch_id=batch_id))


@bp.route("/batches/<int:batch_id>/execute", methods=["GET", "POST"])
@roles_required(*MANAGER)
def execute(batch_id: int):
    """GET: the confirmation step (who and what will be destroyed, by name); POST: execute."""
    b = _batch_or_404(batch_id)
    form = ExecuteForm()
    if request.method == "GET":
        if b.status not in ("approved", "tombstoned"):
            flash(message_for(RetentionError("not_approved")), "error")
            return redirect(url_for("retention.batch", batch_id=batch_id))
        if b.status == "approved":
            batches.check_executor(b, current_user.login)  # said before the confirmation, not after
        return render_template("retention/execute.html", batch=b, items=_items(b), form=form)
    if not form.validate_on_submit():
        abort(400)
    login = current_user.login
    # The purge owns its transactions (tombstones committed before any file goes): release the
    # request's write lock first; the request itself only read the signed-in user and the batch.
    db().rollback()
    run_purge(facade(), batch_id, certificates=certificates_dir(), render=render_certificate, actor=login,
              today=today(), confirmed=bool(form.confirmed.data))
    flash(_("Destruction exécutée ; le certificat est disponible."), "info")
    return redirect(url_for("retention.batch", batch_id=batch_id))


@bp.route("/batches/<int:batch_id>/certificate.pdf")
@roles_required(*MANAGER)
def certificate(batch_id: int):
    b = _batch_or_404(batch_id)
    if not b.certificate_name:
        abort(404)
    data = (certificates_dir() / b.certificate_name).read_bytes()  # small; no file handle left open
    return send_file(io.BytesIO(data), mimetype="application/pdf", download_name=b.certificate_name)


@bp.route("/history")
@roles_required(*MANAGER)
def history():
    done = list(db().scalars(select(PurgeBatch).where(PurgeBatch.status.in_(("executed", "rejected")))
                             .order_by(PurgeBatch.id.desc()).limit(PAGE)))
    return render_template("retention/history.html", batches=done)
