"""The manager's retention pages: storage per tier, due dates, holds, batches, certificates, audit search."""

from __future__ import annotations

import io
from datetime import date, datetime, timedelta

from flask import Blueprint, Response, abort, current_app, flash, redirect, render_template, request, send_file, url_for
from flask_login import current_user
from flask_babel import gettext as _, lazy_gettext as _l
from flask_wtf import FlaskForm
from sqlalchemy import select
from wtforms import BooleanField, DateField, HiddenField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length

from archive_core.values import paris_midnight
from backoffice.auth import roles_required
from backoffice.extensions import db, facade
from backoffice.retention import answers, services
from backoffice.retention.certificate import certificates_dir, render_certificate
from backoffice.retention.clock import now_utc, today
from backoffice.retention.errors import RetentionError
from backoffice.retention.models import PurgeBatch

bp = Blueprint("retention", __name__, url_prefix="/retention")
MANAGER = ("manager",)
AUDITORS = ("manager", "admin")
PAGE = 100
MAX_PAGE = 2**31 // PAGE  # the offset stays a 32-bit integer on every engine


class HoldForm(FlaskForm):
    patient_id = StringField(_l("Identifiant patient"), validators=[DataRequired(), Length(max=64)])
    reason = TextAreaField(_l("Motif (réclamation, enquête…)"), validators=[DataRequired()])


class DeathForm(FlaskForm):
    patient_id = StringField(_l("Identifiant patient"), validators=[DataRequired(), Length(max=64)])
    death_date = DateField(_l("Date du décès"), validators=[DataRequired()])
    # Set only by the confirmation step that follows a date ending retention sooner.
    confirm_shortening = HiddenField(default="")


class ReasonForm(FlaskForm):
    reason = TextAreaField(_l("Motif de la décision"), validators=[DataRequired()])


class ConfirmForm(FlaskForm):
    """Only the CSRF token."""


class ExecuteForm(FlaskForm):
    confirmed = BooleanField(_l("Je confirme la destruction définitive des dossiers et examens listés ci-dessus"))


class MoveForm(FlaskForm):
    study_uid = StringField(_l("UID de l'examen"), validators=[DataRequired(), Length(max=64)])
    patient_id = StringField(_l("Rattacher au patient"), validators=[DataRequired(), Length(max=64)])
    reason = TextAreaField(_l("Motif"), validators=[DataRequired()])


class MergeForm(FlaskForm):
    source = StringField(_l("Patient en double (disparaît)"), validators=[DataRequired(), Length(max=64)])
    target = StringField(_l("Patient conservé"), validators=[DataRequired(), Length(max=64)])
    reason = TextAreaField(_l("Motif"), validators=[DataRequired()])


class DeletionForm(FlaskForm):
    study_uid = StringField(_l("UID de l'examen envoyé par erreur"), validators=[DataRequired(), Length(max=64)])
    reason = TextAreaField(_l("Motif"), validators=[DataRequired()])


@bp.errorhandler(RetentionError)
def _retention_error(exc: RetentionError):
    """The area's one page handler: roll back the request's work, say why, go back where the form was."""
    db().rollback()
    flash(exc.message(), "error")
    batch_id = (request.view_args or {}).get("batch_id")
    if batch_id is not None and db().get(PurgeBatch, batch_id) is not None:
        return redirect(url_for("retention.batch", batch_id=batch_id))
    back = request.referrer
    if back and back.startswith(request.host_url) and request.method == "POST":
        return redirect(back)
    return redirect(url_for("retention.index"))


def _form_errors(form: FlaskForm) -> None:
    for field, errors in form.errors.items():
        flash(f"{getattr(form, field).label.text if hasattr(form, field) else field} : {', '.join(errors)}", "error")


# -- overview ------------------------------------------------------------------------------------------


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


def _fresh_answers() -> None:
    """Decide again the patients whose facts changed, then read in a transaction that sees the result."""
    if answers.refresh_now(facade()):
        db().rollback()  # the request's read transaction began before the refresh committed


@bp.route("/")
@roles_required(*MANAGER)
def index():
    day = today()
    _fresh_answers()
    session = db()
    held = answers.held_today(session, facade(), day)
    counts = {days: answers.count(session, "due", day, days, held) for days in WITHIN_DAYS}
    due = answers.listing(session, facade(), "due", today=day, days=365, limit=10, held=held)
    waiting = list(db().scalars(select(PurgeBatch).where(PurgeBatch.status.in_(("proposed", "approved", "tombstoned")))
                                .order_by(PurgeBatch.id)))
    # A full scan of the images: reused while no study or image arrived, went or moved tier (as the dashboard).
    from backoffice.home.figures import Memo

    memo = current_app.extensions.setdefault("dashboard_memo", Memo())
    usage = memo.get("retention_usage", facade().data_version(db()), lambda: facade().storage_usage(db()))
    tier_totals = {}
    for row in usage:
        tier_totals[row.tier] = tier_totals.get(row.tier, 0) + row.bytes_total
    return render_template(
        "retention/index.html", today=day, due=due.rows, counts=counts,
        overdue=answers.count(session, "overdue", day, 0, held), review=answers.count(session, "review", day, 0, held),
        on_hold=len(held), total=answers.count(session, "all", day, 0, held), holds=services.active_holds(db()),
        waiting=waiting, usage=usage, tier_totals=tier_totals, hold_form=HoldForm(), death_form=DeathForm(),
    )


@bp.route("/patients")
@roles_required(*MANAGER)
def patients():
    """One list of records: due within N days, overdue, on hold, to review or all; name, dates, basis, tier.

    A page of PAGE rows (``page=N``), read from the stored answers (backoffice/retention/answers.py).
    """
    kind = request.args.get("list", "due")
    if kind not in LISTS:
        kind = "due"
    days = request.args.get("days", type=int) or 365
    if days not in WITHIN_DAYS:
        days = 365
    # Past the last page is an empty page, not an error (page=10**30 once overflowed the database integer).
    page = min(max(request.args.get("page", type=int) or 1, 1), MAX_PAGE)
    day = today()
    _fresh_answers()
    chosen = answers.listing(db(), facade(), kind, today=day, days=days, offset=(page - 1) * PAGE, limit=PAGE)
    shown = chosen.rows
    facade().audit_now("retention.viewed", actor=current_user.login,
                       detail={"list": kind, "days": days if kind == "due" else None, "results": len(shown)})
    return render_template("retention/patients.html", today=day, kind=kind, days=days, title=str(LISTS[kind]) % {"days": days},
                           rows=shown, total=chosen.total, page=page, more=chosen.total > page * PAGE,
                           lists=LISTS, within=WITHIN_DAYS)


# The preview shows the first records the batch would name (all are counted; the overdue list pages them).
SWEEP_SHOWN = 100


@bp.route("/sweep", methods=["GET", "POST"])
@roles_required(*MANAGER)
def sweep():
    """GET: the dry run (who moves to the archive tier, who is proposed for destruction); POST: run it."""
    day = today()
    form = ConfirmForm()
    if request.method == "GET":
        _fresh_answers()
        plan = services.sweep_plan(db(), facade(), today=day, shown=SWEEP_SHOWN)
        return render_template("retention/sweep.html", today=day, plan=plan, form=form)
    if not form.validate_on_submit():
        abort(400)
    login = current_user.login
    # The sweep owns its transactions (moves, then the proposal): release the request's session first.
    db().rollback()
    report = services.sweep(facade(), today=day, actor=login, actor_kind="user")
    flash(_("Balayage fait : %(moved)s images déplacées vers l'archive intermédiaire, %(due)s dossiers proposés "
            "à la destruction.", moved=report.moved_instances, due=report.due), "info")
    if report.proposed_batch_id is not None:
        return redirect(url_for("retention.batch", batch_id=report.proposed_batch_id))
    return redirect(url_for("retention.index"))


# -- one patient: answer, holds, death -----------------------------------------------------------------


@bp.route("/patient")
@roles_required(*MANAGER)
def patient():
    patient_id = request.args.get("patient_id", "").strip()
    if not patient_id:
        return redirect(url_for("retention.index"))
    try:
        answer = services.patient_retention(db(), facade(), patient_id, today=today())
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
        _form_errors(form)
        return redirect(url_for("retention.index"))
    services.place_hold(db(), facade(), form.patient_id.data.strip(), form.reason.data, actor=current_user.login,
                        today=today(), now=now_utc())
    flash(_("Séquestre posé : rien de ce patient ne sera détruit tant qu'il tient."), "info")
    return _back_to(form.patient_id.data.strip())


@bp.route("/holds/<int:hold_id>/release", methods=["POST"])
@roles_required(*MANAGER)
def release_hold(hold_id: int):
    form = ConfirmForm()
    if not form.validate_on_submit():
        abort(400)
    hold = services.release_hold(db(), facade(), hold_id, actor=current_user.login, now=now_utc())
    flash(_("Séquestre levé : sa durée s'ajoute à l'échéance."), "info")
    return _back_to(hold.patient_id)


@bp.route("/deaths", methods=["POST"])
@roles_required(*MANAGER)
def record_death():
    form = DeathForm()
    if not form.validate_on_submit():
        _form_errors(form)
        return redirect(url_for("retention.index"))
    patient_id = form.patient_id.data.strip()
    try:
        services.record_death(db(), facade(), patient_id, form.death_date.data, actor=current_user.login,
                              today=today(), confirm_shortening=form.confirm_shortening.data == "yes")
    except RetentionError as exc:
        if exc.key != "shortening_needs_confirmation":
            raise
        # The second confirmation: the same date again, with what it changes, before anything is written.
        db().rollback()
        answer = services.patient_retention(db(), facade(), patient_id, today=today())
        return render_template("retention/death_confirm.html", p=answer, error=exc.message(),
                               death_date=form.death_date.data, before=exc.params["before"],
                               after=exc.params["after"],
                               form=DeathForm(formdata=None, patient_id=patient_id,
                                              death_date=form.death_date.data, confirm_shortening="yes")), 409
    flash(_("Décès enregistré."), "info")
    return _back_to(patient_id)


# -- batches ----------------------------------------------------------------------------------------------


def _batch_or_404(batch_id: int) -> PurgeBatch:
    batch = db().get(PurgeBatch, batch_id)
    if batch is None:
        abort(404)
    return batch


def _items(b: PurgeBatch) -> list[dict]:
    day = today()
    return [{"item": i, **services.item_view(db(), facade(), i, day)} for i in b.items]


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
    services.decide_batch(db(), facade(), batch_id, approve=decision == "approve", reason=form.reason.data,
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
            flash(RetentionError("not_approved").message(), "error")
            return redirect(url_for("retention.batch", batch_id=batch_id))
        if b.status == "approved":
            services.check_executor(b, current_user.login)  # said before the confirmation, not after
        return render_template("retention/execute.html", batch=b, items=_items(b), form=form)
    if not form.validate_on_submit():
        abort(400)
    if b.status not in ("approved", "tombstoned", "executed"):
        raise RetentionError("not_approved")
    if b.status == "approved" and not form.confirmed.data:
        raise RetentionError("confirmation_required")
    login = current_user.login
    # The purge owns its transactions (tombstones committed before any file goes): release the
    # request's write lock first; the request itself only read the signed-in user and the batch.
    db().rollback()
    services.run_purge(facade(), batch_id, certificates=certificates_dir(), render=render_certificate, actor=login,
                       today=today())
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
    batches = list(db().scalars(select(PurgeBatch).where(PurgeBatch.status.in_(("executed", "rejected")))
                                .order_by(PurgeBatch.id.desc()).limit(PAGE)))
    return render_template("retention/history.html", batches=batches)


# -- corrections ------------------------------------------------------------------------------------------


@bp.route("/corrections", methods=["GET", "POST"])
@roles_required(*MANAGER)
def corrections():
    forms = {"move": MoveForm(prefix="move"), "merge": MergeForm(prefix="merge"), "delete": DeletionForm(prefix="delete")}
    if request.method == "POST":
        action = request.form.get("action", "")
        form = forms.get(action)
        if form is None or not form.validate_on_submit():
            if form is not None:
                _form_errors(form)
            else:
                flash(_("Action inconnue."), "error")
            return redirect(url_for("retention.corrections"))
        if action == "move":
            services.move_study(db(), facade(), form.study_uid.data.strip(), form.patient_id.data.strip(),
                                form.reason.data, actor=current_user.login)
            flash(_("Examen rattaché au bon patient."), "info")
        elif action == "merge":
            n = services.merge_patients(db(), facade(), form.source.data.strip(), form.target.data.strip(),
                                        form.reason.data, actor=current_user.login)
            flash(_("Patients fusionnés (%(count)s examens déplacés).", count=n), "info")
        else:
            b = services.request_study_deletion(db(), facade(), form.study_uid.data.strip(), form.reason.data,
                                                actor=current_user.login)
            flash(_("Suppression proposée : elle attend l'approbation d'un autre responsable."), "info")
            return redirect(url_for("retention.batch", batch_id=b.id))
        return redirect(url_for("retention.corrections"))
    return render_template("retention/corrections.html", forms=forms)


# -- audit search -----------------------------------------------------------------------------------------


def _paris_day_start(day: date) -> datetime:
    """Midnight in Paris of *day* (the manager's days are Paris days), as an aware instant."""
    return paris_midnight(day)


def _audit_filters() -> dict:
    """The audit page's filters as :meth:`~archive_core.api.ArchiveFacade.audit_events` takes them."""
    args = request.args
    filters: dict = {"patient_id": args.get("patient_id", "").strip() or None,
                     "actor": args.get("actor", "").strip() or None, "action": args.get("action") or None}
    for name in ("from", "to"):
        if args.get(name):
            try:
                day = date.fromisoformat(args[name])
            except ValueError:
                flash(_("date invalide : %(value)s", value=args[name]), "error")
                continue
            # "to 01/12" includes the evening of the 1st in Paris.
            if name == "to":
                filters["before"] = _paris_day_start(day + timedelta(days=1))
            else:
                filters["since"] = _paris_day_start(day)
    return filters


@bp.route("/audit")
@roles_required(*AUDITORS)
def audit():
    from backoffice.audit_events import event_label, paris_time, readable_detail
    from backoffice.spreadsheet import SafeWriter

    filters = _audit_filters()
    if request.args.get("format") == "csv":
        facade().audit_now("audit.exported", actor=current_user.login,
                           detail={k: v for k, v in request.args.items() if k != "format"})
        out = io.StringIO()
        writer = SafeWriter(out, delimiter=";")  # actor names come from failed logins: formulas neutralised
        writer.writerow(["id", "date (UTC)", "acteur", "type", "action", "patient", "examen", "détail", "empreinte"])
        for e in facade().audit_events(db(), **filters):
            writer.writerow([e.id, e.at, e.actor, e.actor_kind, e.action, e.patient_id or "", e.study_uid or "",
                             e.detail, e.hash])
        return Response("\ufeff" + out.getvalue(), mimetype="text/csv; charset=utf-8",
                        headers={"Content-Disposition": "attachment; filename=journal-audit.csv"})
    if request.args.get("patient_id"):
        facade().audit_now("patient.viewed", actor=current_user.login, patient_id=request.args["patient_id"].strip(),
                           detail={"page": "audit"})
    events = list(facade().audit_events(db(), **filters, limit=PAGE))
    # The filter offers the event types the trail holds (never a label that matches nothing), by label.
    written = facade().audit_actions(db())
    actions = sorted(((code, event_label(code)) for code in written), key=lambda pair: pair[1].casefold())
    # The manager may see names (the log never does); the admin keeps to identifiers.
    names = facade().patient_names(db(), (e.patient_id for e in events)) if current_user.role == "manager" else {}
    rows = [{"event": e, "at": paris_time(e.at), "label": event_label(e.action), "detail": readable_detail(e.detail),
             "name": names.get(e.patient_id or "")} for e in events]
    return render_template("retention/audit.html", rows=rows, actions=actions, args=request.args)
