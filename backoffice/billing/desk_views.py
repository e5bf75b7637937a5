"""The front desk's day: the exam groups of a day (or of a patient searched), check-in, an exam group's
page with its consent and study moves, and issuing its invoice."""

from __future__ import annotations

from datetime import timedelta

from flask import abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _, lazy_gettext as _l
from flask_login import current_user

from backoffice.auth import roles_required
from backoffice.billing import checkin as checkin_service
from backoffice.billing import listings, operations
from backoffice.billing import services as S
from backoffice.billing.arrivals import sync_from_archive
from backoffice.billing.errors import message_for
from backoffice.billing.models import ExamGroup
from backoffice.billing.web import DESK, PAGE_SIZE, STATE_LABELS, bp, form_int
from backoffice.errors import db_int
from backoffice.extensions import db, facade, rollback


@bp.route("/")
@roles_required(*DESK)
def today():
    """The day's exam groups with their state; patient search by ID or name."""
    day = S.parse_date(request.args["date"], "date") if request.args.get("date") else S.paris_today()
    query_text = (request.args.get("q") or "").strip()
    after = request.args.get("after", 0, type=db_int)
    if query_text:
        # The archive's one patient search (accents, word order, birth date, ID); a group checked in
        # before any image arrived is not in the archive yet: its typed name is looked up as before.
        patients = facade().search_patients(db(), query_text, limit=PAGE_SIZE).items
        groups = listings.search_groups(db(), query_text, [m.patient_id for m in patients], after=after,
                                        limit=PAGE_SIZE + 1)
        facade().audit_now("billing.search", actor=current_user.login, detail={"results": len(groups)})
    else:
        sync_from_archive(visit_date=day, patient_id=None)
        groups = S.list_exam_groups(db(), visit_date=day, after_id=after, limit=PAGE_SIZE + 1)
    more = len(groups) > PAGE_SIZE
    groups = groups[:PAGE_SIZE]
    states = S.group_states(db(), groups)
    rows = [(g, states[g.id]) for g in groups]
    return render_template("billing/today.html", day=day, rows=rows, q=query_text,
                           patients=patients if query_text else (), labels=S.exam_group_labels(db()),
                           states=STATE_LABELS, next_after=groups[-1].id if more else None,
                           prev_day=day - timedelta(days=1), next_day=day + timedelta(days=1))


SEXES = {"F": _l("Féminin"), "M": _l("Masculin"), "O": _l("Autre")}
PROCEDURE_LABELS = {"SCHEDULED": _l("sur la liste de travail"), "IN PROGRESS": _l("examen en cours"),
                    "COMPLETED": _l("examen terminé"), "DISCONTINUED": _l("examen interrompu")}


def _checkin_page(*, q: str = "", patients=(), typed=None, near=(), status: int = 200):
    session = db()
    labels = S.exam_group_labels(session)
    today_ = S.paris_today()
    fees = {code: S.fee_for(session, code, today_) for code in labels}
    stations = [p for p in facade().peers(session) if not p.external]
    return render_template("billing/checkin.html", labels=labels, fees=fees, today=today_, q=q, patients=patients,
                           typed=typed or {}, near=near, sexes=SEXES, modalities=checkin_service.MODALITIES,
                           stations=stations), status


@bp.route("/checkin", methods=["GET", "POST"])
@roles_required(*DESK)
def checkin():
    """Look the patient up, then check in: the exam group with its fee and consent question, and the
    worklist item the modality fetches. A near match (a typo of a known patient) is shown, not created."""
    if request.method == "POST":
        form = request.form
        birth = form.get("patient_birth_date") or ""
        try:
            visit = S.parse_date(form.get("visit_date") or S.paris_today().isoformat(), "visit_date")
            result = checkin_service.check_in(
                patient_id=form.get("patient_id") or "", visit_date=visit, exam_group=form.get("exam_group", ""),
                actor=current_user.login, patient_name=(form.get("patient_name") or "").strip() or None,
                patient_birth_date=S.parse_date(birth, "patient_birth_date").strftime("%Y%m%d") if birth else None,
                patient_sex=form.get("patient_sex") or None,
                patient_address=(form.get("patient_address") or "").strip() or None,
                accession_number=(form.get("accession_number") or "").strip() or None,
                modality=form.get("modality") or None, station_ae_title=form.get("station_ae_title") or None,
                start_time=checkin_service.parse_time(form.get("scheduled_time")),
                confirm_new_patient=form.get("confirm_new_patient") == "1",
            )
        except checkin_service.NearMatch as exc:
            rollback()
            flash(message_for(exc), "error")
            return _checkin_page(typed=form.to_dict(), near=exc.candidates, status=409)
        except S.BillingError as exc:  # the form comes back as typed, with the reason in French
            rollback()
            flash(message_for(exc), "error")
            return _checkin_page(typed=form.to_dict(), status=409 if isinstance(exc, S.Conflict) else 400)
        group = result.group
        if result.created:
            facade().audit(db(), "billing.exam_group.created", actor=current_user.login, patient_id=group.patient_id,
                           detail={"exam_group_id": group.id, "accession_number": group.accession_number})
            flash(_("Groupe d'examens créé : accession %(accession)s, sur la liste de travail des appareils.",
                    accession=group.accession_number), "info")
        else:
            flash(_("Ce patient a déjà ce groupe d'examens ce jour-là : le voici."), "info")
        return redirect(url_for("billing.group", group_id=group.id))
    # Look the patient up first (the archive's one patient search), then fill the form from the choice.
    q = (request.args.get("q") or "").strip()
    patients = facade().search_patients(db(), q, limit=20).items if q else ()
    chosen_id = (request.args.get("patient_id") or "").strip()
    chosen = facade().find_patient(db(), chosen_id) if chosen_id else None
    if q or chosen:
        facade().audit_now("patient.search", actor=current_user.login, detail={"results": len(patients)})
    typed = {}
    if chosen is not None:
        typed = {"patient_id": chosen.patient_id, "patient_name": chosen.name, "patient_sex": chosen.sex or "",
                 "patient_birth_date": chosen.birth_date or ""}
    return _checkin_page(q=q, patients=patients, typed=typed)


@bp.route("/groups/<int:group_id>")
@roles_required(*DESK)
def group(group_id: int):
    g = db().get(ExamGroup, group_id) or abort(404)
    facade().audit_now("billing.exam_group.viewed", actor=current_user.login, patient_id=g.patient_id)
    groups = listings.sibling_groups(db(), g)
    step = facade().procedure_steps(db(), [g.accession_number or ""]).get(g.accession_number or "")
    state = S.group_state(db(), g)
    # The split the invoice would carry, shown before it is issued (the issue computes it again).
    preview = S.preview_split(db(), g.id) if state.fee_cents > 0 and not state.invoice_id else None
    return render_template("billing/group.html", g=g, state=state, labels=S.exam_group_labels(db()),
                           states=STATE_LABELS, siblings=groups, step=step, procedure_labels=PROCEDURE_LABELS,
                           preview=preview,
                           patient_balance=S.patient_balance_cents(db(), g.patient_id))


@bp.route("/groups/<int:group_id>/consent", methods=["POST"])
@roles_required(*DESK)
def consent(group_id: int):
    accepted = request.form.get("accepted") == "1"
    g = S.record_consent(db(), group_id, accepted=accepted, recorded_by=current_user.login)
    facade().audit(db(), "billing.consent", actor=current_user.login, patient_id=g.patient_id,
                   detail={"exam_group_id": g.id, "accepted": accepted})
    flash(_("Accord enregistré.") if accepted else _("Refus enregistré : l'examen n'est pas facturé."), "info")
    return redirect(url_for("billing.group", group_id=g.id))


@bp.route("/groups/<int:group_id>/move", methods=["POST"])
@roles_required(*DESK)
def move_study(group_id: int):
    operations.move_study(request.form.get("study_uid", ""), group_id=form_int("target_group_id"),
                          actor=current_user.login)
    flash(_("Examen déplacé."), "info")
    return redirect(url_for("billing.group", group_id=group_id))


@bp.route("/groups/<int:group_id>/invoice", methods=["POST"])
@roles_required(*DESK)
def issue(group_id: int):
    # The request commits at its end; the PDF is rendered after that commit, outside the numbering lock.
    invoice, _state = operations.issue_invoice(group_id, actor=current_user.login,
                                               payer_name=(request.form.get("payer_name") or "").strip() or None)
    flash(_("Facture %(number)s émise.", number=invoice.number), "info")
    return redirect(url_for("billing.invoice", invoice_id=invoice.id))

