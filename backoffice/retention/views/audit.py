"""The audit trail's search and CSV export (managers and admins)."""

from __future__ import annotations

import io
from datetime import date, datetime, timedelta

from flask import Response, flash, render_template, request
from flask_babel import gettext as _
from flask_login import current_user

from archive_core.values import paris_midnight
from backoffice.auth import roles_required
from backoffice.extensions import db, facade
from backoffice.retention.views import AUDITORS, PAGE, bp


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
