"""Closings and what the bank and the accountant receive: the day's closing and its Z report, cheque
remittances, the manager's claims and closings, the exports, and ``flask billing verify``."""

from __future__ import annotations

from datetime import date

import click
from flask import Response, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user

from backoffice.auth import roles_required
from backoffice.billing import documents, exports, listings, operations
from backoffice.billing import services as S
from backoffice.billing.models import Closing, Remittance
from backoffice.billing.web import DESK, MANAGER, METHOD_LABELS, bp, closing_day, euros, form_cents, form_int, fr_date, pdf_response
from backoffice.extensions import db, facade
from backoffice.practice import practice_identity


@bp.route("/closing", methods=["GET", "POST"])
@roles_required(*DESK)
def closing():
    """The day's closing: totals per method, signed off by the user who closes."""
    day = S.paris_today()
    if request.method == "POST":
        day_text = request.form.get("day") or day.isoformat()
        closing = operations.close_period("day", day_text, actor=current_user.login,
                                          counted_cash_cents=form_cents("counted_cash"),
                                          counted_cheque_cents=form_cents("counted_cheque"))
        flash(_("Journée du %(day)s clôturée.", day=fr_date(closing_day(day_text))), "info")
        for label, difference in ((_("espèces"), closing.cash_difference_cents),
                                  (_("chèques"), closing.cheque_difference_cents)):
            if difference:
                flash(_("Écart de caisse (%(what)s) : %(amount)s.", what=label, amount=euros(difference)), "error")
        return redirect(url_for("billing.closing"))
    totals = S.period_totals(db(), "day", day.isoformat())
    closed = listings.closing_of(db(), "day", day.isoformat())
    return render_template("billing/closing.html", day=day, totals=totals, closed=closed, methods=METHOD_LABELS)


@bp.route("/closings/<int:closing_id>/report.pdf")
@roles_required(*DESK)
def closing_report(closing_id: int):
    """The printable Z report of a closing."""
    closing = db().get(Closing, closing_id) or abort(404)
    data = documents.render_closing_report(db(), closing)
    return pdf_response(data, f"cloture-{closing.period}.pdf")


@bp.route("/remittance", methods=["POST"])
@roles_required(*DESK)
def remittance():
    slip = S.create_remittance(db(), created_by=current_user.login)
    flash(_("Bordereau de remise n° %(id)s : %(count)s chèque(s), %(total)s.", id=slip.id, count=slip.count,
            total=euros(slip.total_cents)), "info")
    return redirect(url_for("billing.remittance_slip", slip_id=slip.id))


@bp.route("/remittances/<int:slip_id>")
@roles_required(*DESK)
def remittance_slip(slip_id: int):
    """The printable cheque remittance slip for the bank."""
    slip = db().get(Remittance, slip_id) or abort(404)
    rows = listings.remittance_rows(db(), slip.id)
    return render_template("billing/remittance.html", slip=slip, rows=rows, practice=practice_identity())


@bp.route("/claims", methods=["GET", "POST"])
@roles_required(*MANAGER)
def claims():
    if request.method == "POST":
        if request.form.get("send_insurer"):
            sent = S.send_claims(db(), form_int("send_insurer"))
            flash(_("%(count)s demande(s) envoyée(s).", count=len(sent)), "info")
        else:
            operations.settle_claim(form_int("claim_id"), paid=request.form.get("paid") == "1", actor=current_user.login,
                                    reason=request.form.get("reason"))
            flash(_("Demande mise à jour."), "info")
        return redirect(url_for("billing.claims"))
    open_claims = listings.claims(db(), statuses=("to_send", "sent"))
    insurer_names = {i.id: i.name for i in listings.insurers(db())}
    return render_template("billing/claims.html", outstanding=S.outstanding_claims(db()), claims=open_claims,
                           insurer_names=insurer_names)


@bp.route("/closings", methods=["GET", "POST"])
@roles_required(*MANAGER)
def closings():
    if request.method == "POST":
        kind = request.form.get("kind", "")
        operations.close_period(kind, request.form.get("period", ""), actor=current_user.login)
        flash(_("Clôture enregistrée."), "info")
        return redirect(url_for("billing.closings"))
    rows = listings.recent_closings(db())
    report = S.verify_journal(db())
    return render_template("billing/closings.html", closings=rows, report=report)


@bp.route("/exports")
@roles_required(*MANAGER)
def export_page():
    today = S.paris_today()
    return render_template("billing/exports.html", start=today.replace(day=1), end=today)


def _period_args() -> tuple[date, date]:
    try:
        return S.parse_date(request.args.get("start"), "start"), S.parse_date(request.args.get("end"), "end")
    except S.Invalid:
        abort(400)


@bp.route("/exports/invoices.csv")
@roles_required(*MANAGER)
def export_csv():
    start, end = _period_args()
    return Response(exports.invoices_csv(db(), start, end), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="factures-{start}-{end}.csv"'})


@bp.route("/exports/fec.txt")
@roles_required(*MANAGER)
def export_fec():
    start, end = _period_args()
    siren = str(request.args.get("siren") or "").strip() or "000000000"
    return Response(exports.fec(db(), start, end), mimetype="text/plain",
                    headers={"Content-Disposition": f'attachment; filename="{siren}FEC{end.strftime("%Y%m%d")}.txt"'})


# -- command line --------------------------------------------------------------------------------


@bp.cli.command("verify", help="Check the payment journal's hash chain, the closings, and the invoices, credit notes "
                "and journal heads recorded in the signed audit trail; exit 1 if anything is wrong.")
def verify_command() -> None:
    with facade().new_session() as s:
        report = S.verify_journal(s)
        problems = S.check_anchors(s, facade().audit_details(s, "billing."))
        s.rollback()
    # The anchors are only as good as the audit trail that holds them: its chain and signed checkpoints.
    audit = facade().audit_verify()
    if report.first_bad_id is not None:
        problems.insert(0, f"payment journal broken at entry {report.first_bad_id} "
                           f"(after {report.checked} good entries)")
    elif report.first_bad_closing is not None:
        problems.insert(0, f"closing {report.first_bad_closing} no longer matches the journal")
    if not audit.ok:
        problems.append("the audit trail that records the billing journal's heads is broken: "
                        + "; ".join(audit.problems or (f"event {audit.first_bad_id}",)) + " (see audit verify)")
    if not problems:
        click.echo(f"payment journal intact: {report.checked} entries, {report.closings_checked} closings; "
                   "invoices, credit notes and journal heads match the audit trail")
        return
    for problem in problems:
        click.echo(problem)
    raise SystemExit(1)


__all__ = ["bp"]
