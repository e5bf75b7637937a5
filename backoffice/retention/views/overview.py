"""The overview (storage per tier, due dates, holds, waiting batches), the lists and the sweep."""

from __future__ import annotations

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user
from sqlalchemy import select

from backoffice.auth import roles_required
from backoffice.extensions import db, facade
from backoffice.retention import answers, records
from backoffice.retention.clock import today
from backoffice.retention.models import PurgeBatch
from backoffice.retention.sweep import sweep as run_sweep, sweep_plan
from backoffice.retention.views import LISTS, MANAGER, MAX_PAGE, PAGE, WITHIN_DAYS, bp, fresh_answers
from backoffice.retention.views.forms import ConfirmForm, DeathForm, HoldForm


@bp.route("/")
@roles_required(*MANAGER)
def index():
    day = today()
    fresh_answers()
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
        on_hold=len(held), total=answers.count(session, "all", day, 0, held), holds=records.active_holds(db()),
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
    fresh_answers()
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
        fresh_answers()
        plan = sweep_plan(db(), facade(), today=day, shown=SWEEP_SHOWN)
        return render_template("retention/sweep.html", today=day, plan=plan, form=form)
    if not form.validate_on_submit():
        abort(400)
    login = current_user.login
    # The sweep owns its transactions (moves, then the proposal): release the request's session first.
    db().rollback()
    report = run_sweep(facade(), today=day, actor=login, actor_kind="user")
    flash(_("Balayage fait : %(moved)s images déplacées vers l'archive intermédiaire, %(due)s dossiers proposés "
            "à la destruction.", moved=report.moved_instances, due=report.due), "info")
    if report.proposed_batch_id is not None:
        return redirect(url_for("retention.batch", batch_id=report.proposed_batch_id))
    return redirect(url_for("retention.index"))
