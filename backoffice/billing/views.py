"""The billing pages: front-desk check-in, the day's exam groups, invoices, payments, closings;
the manager's tariffs, mapping, insurers, claims, closings and exports; ``flask billing verify``."""

from __future__ import annotations

from datetime import date, timedelta
from functools import wraps

import click
from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _, lazy_gettext as _l
from flask_login import current_user
from sqlalchemy import func, or_, select
from sqlalchemy.orm import selectinload

from archive_core.api import escape_like
from archive_core.values import person_name
from backoffice.auth import roles_required
from backoffice.billing import checkin as checkin_service
from backoffice.billing import documents, exports, money, operations
from backoffice.billing.errors import message_for
from backoffice.billing.arrivals import sync_from_archive
from backoffice.billing import services as S
from backoffice.billing.models import (
    Claim,
    Closing,
    CreditNote,
    ExamGroup,
    ExamGroupMapping,
    Insurer,
    Invoice,
    Membership,
    Payment,
    Remittance,
    RemittanceItem,
    Tariff,
)
from backoffice.extensions import db, facade, rollback
from backoffice.retention import clock
from backoffice.i18n import locale_name
from backoffice.practice import practice_identity
from backoffice.errors import db_int

bp = Blueprint("billing", __name__, url_prefix="/billing", cli_group="billing")

DESK = ("front_desk", "manager")
MANAGER = ("manager",)
PAGE_SIZE = 100
STATE_LABELS = {"to_ask": _l("à demander"), "accepted": _l("accepté"), "refused": _l("refusé"),
                "invoiced": _l("facturé"), "paid": _l("payé"), "free": _l("pris en charge (sans frais)")}
# The pages' labels follow the interface language; the PDFs keep documents' French ones.
INVOICE_STATUS = {"issued": _l("émise"), "partially_paid": _l("partiellement payée"), "paid": _l("payée"),
                  "credited": _l("annulée par avoir")}
CLAIM_LABELS = {"to_send": _l("à envoyer"), "sent": _l("envoyée"), "paid": _l("payée"), "rejected": _l("rejetée"),
                "cancelled": _l("annulée")}
METHOD_LABELS = {"cash": _l("espèces"), "card": _l("carte bancaire"), "cheque": _l("chèque"),
                 "transfer": _l("virement")}


CLOSING_KINDS = {"day": _l("jour"), "month": _l("mois"), "year": _l("année")}


@bp.app_template_filter("method_totals")
def _method_totals(totals_json: str | None) -> str:
    """A closing's totals per payment method as the desk reads them: "carte bancaire : 6,50 € · espèces : 3,00 €"."""
    import json

    try:
        totals = json.loads(totals_json or "{}")
    except ValueError:
        return ""
    return " · ".join(f"{METHOD_LABELS.get(method, method)} : {_euros(cents)}"
                      for method, cents in sorted(totals.items()) if isinstance(cents, int))


@bp.app_template_filter("closing_kind")
def _closing_kind(kind: str) -> str:
    return str(CLOSING_KINDS.get(kind, kind))


@bp.app_template_filter("euros")
def _euros(cents: int | None) -> str:
    return documents.euros(cents or 0, locale=locale_name())


@bp.app_template_filter("fr_date")
def _fr_date(value) -> str:
    return documents.french_date(value, locale=locale_name())


@bp.app_template_filter("fr_datetime")
def _fr_datetime(value) -> str:
    return documents.french_datetime(value, locale=locale_name())


@bp.app_template_filter("percent")
def _percent_filter(bp: int | None) -> str:
    return documents.percent(bp or 0, locale=locale_name())


@bp.app_template_filter("percent_input")
def _percent_input_filter(bp: int | None) -> str:
    return documents.percent_input(bp or 0, locale=locale_name())


@bp.app_template_filter("person")
def _person(value: str | None) -> str:
    return person_name(value, as_stored=True)


# The pages speak the desk's language (billing/errors.py); the API keeps the services' (English) messages.


def domain_errors(back: str):
    """Map billing errors of a form post to a flashed message and a redirect (nothing committed)."""

    def decorate(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            try:
                return view(*args, **kwargs)
            except S.BillingError as exc:
                rollback()
                flash(message_for(exc), "error")
                return redirect(_same_site(request.referrer) or url_for(back))

        return wrapped

    return decorate


def _same_site(url: str | None) -> str | None:
    """The page the form came from, if it is ours (never bounce to another site)."""
    return url if url and url.startswith(request.host_url) else None


def _int(name: str, default: int | None = None) -> int:
    try:
        return int(request.form.get(name, default if default is not None else ""))
    except ValueError:
        raise S.Invalid(f"{name} must be an integer", code="bad_number", field=name) from None


def closing_day(text: str):
    """The closed day for a message ("1 décembre 2026"); the text itself if it is not a date."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        return text


def _percent(name: str) -> int:
    """A rate typed in percent ("50", "50 %", "33,5 %") in basis points, exactly (money.parse_percent)."""
    try:
        return money.parse_percent(request.form.get(name))
    except money.PercentError as exc:
        raise S.Invalid(f"{name}: not a rate in percent ({exc.reason})", code=f"percent_{exc.reason}") from None


def _date(name: str, *, optional: bool = False) -> date | None:
    raw = (request.form.get(name) or "").strip()
    if not raw and optional:
        return None
    return S.parse_date(raw, name)


def _cents(name: str) -> int:
    """A French amount typed at the desk ("4,50") in cents, without floats."""
    raw = (request.form.get(name) or "").strip().replace("€", "").replace(" ", "").replace(",", ".")
    whole, _sep, frac = raw.partition(".")
    if not whole.isdigit() or (frac and (not frac.isdigit() or len(frac) > 2)):
        raise S.Invalid(f"{name} is not an amount", code="bad_amount")
    return int(whole) * 100 + int((frac + "00")[:2])


# -- front desk ----------------------------------------------------------------------------------


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
        groups = list(db().scalars(
            select(ExamGroup).where(or_(ExamGroup.patient_id == query_text,
                                        ExamGroup.patient_id.in_([m.patient_id for m in patients]),
                                        ExamGroup.patient_name.ilike(f"%{escape_like(query_text)}%", escape="\\")))
            .where(ExamGroup.id > after).order_by(ExamGroup.id).limit(PAGE_SIZE + 1)
            .options(selectinload(ExamGroup.studies))))
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
@domain_errors("billing.checkin")
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
    groups = list(db().scalars(select(ExamGroup).where(ExamGroup.patient_id == g.patient_id,
                                                       ExamGroup.visit_date == g.visit_date, ExamGroup.id != g.id)))
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
@domain_errors("billing.today")
def consent(group_id: int):
    accepted = request.form.get("accepted") == "1"
    g = S.record_consent(db(), group_id, accepted=accepted, recorded_by=current_user.login)
    facade().audit(db(), "billing.consent", actor=current_user.login, patient_id=g.patient_id,
                   detail={"exam_group_id": g.id, "accepted": accepted})
    flash(_("Accord enregistré.") if accepted else _("Refus enregistré : l'examen n'est pas facturé."), "info")
    return redirect(url_for("billing.group", group_id=g.id))


@bp.route("/groups/<int:group_id>/move", methods=["POST"])
@roles_required(*DESK)
@domain_errors("billing.today")
def move_study(group_id: int):
    operations.move_study(request.form.get("study_uid", ""), group_id=_int("target_group_id"),
                          actor=current_user.login)
    flash(_("Examen déplacé."), "info")
    return redirect(url_for("billing.group", group_id=group_id))


@bp.route("/groups/<int:group_id>/invoice", methods=["POST"])
@roles_required(*DESK)
@domain_errors("billing.today")
def issue(group_id: int):
    # The request commits at its end; the PDF is rendered after that commit, outside the numbering lock.
    invoice, _state = operations.issue_invoice(group_id, actor=current_user.login,
                                               payer_name=(request.form.get("payer_name") or "").strip() or None)
    flash(_("Facture %(number)s émise.", number=invoice.number), "info")
    return redirect(url_for("billing.invoice", invoice_id=invoice.id))


@bp.route("/invoices")
@roles_required(*DESK)
def invoices():
    """Every invoice, newest first, 100 a page (keyset pagination on the primary key)."""
    before = request.args.get("before", type=db_int)
    patient_id = (request.args.get("patient_id") or "").strip()
    rows, more = operations.list_invoices(patient_id=patient_id, before=before, limit=PAGE_SIZE)
    return render_template("billing/invoices.html", invoices=rows, patient_id=patient_id,
                           next_before=rows[-1].id if more else None)


@bp.route("/invoices/<int:invoice_id>")
@roles_required(*DESK)
def invoice(invoice_id: int):
    inv = db().get(Invoice, invoice_id) or abort(404)
    facade().audit_now("billing.invoice.viewed", actor=current_user.login, patient_id=inv.patient_id,
                       detail={"number": inv.number})
    return render_template("billing/invoice.html", inv=inv, state=S.invoice_state(db(), inv), methods=METHOD_LABELS,
                           status=INVOICE_STATUS, credits=S.credit_notes_of(db(), inv.id), claim_labels=CLAIM_LABELS)


@bp.route("/invoices/<int:invoice_id>/payments", methods=["POST"])
@roles_required(*DESK)
@domain_errors("billing.today")
def pay(invoice_id: int):
    payment, _state, _inv = operations.record_payment(invoice_id, amount_cents=_cents("amount"),
                                                      method=request.form.get("method", ""), actor=current_user.login)
    flash(_("Paiement de %(amount)s enregistré.", amount=_euros(payment.amount_cents)), "info")
    return redirect(url_for("billing.invoice", invoice_id=invoice_id))


@bp.route("/invoices/<int:invoice_id>/credit-note", methods=["POST"])
@roles_required(*DESK)
@domain_errors("billing.today")
def credit_note(invoice_id: int):
    """All of what remains creditable, or the amount typed (a partial credit note)."""
    amount = _cents("amount") if (request.form.get("amount") or "").strip() else None
    note, _inv = operations.issue_credit_note(invoice_id, reason=request.form.get("reason", ""), amount_cents=amount,
                                              actor=current_user.login)
    flash(_("Avoir %(number)s émis.", number=note.number), "info")
    return redirect(url_for("billing.invoice", invoice_id=invoice_id))


@bp.route("/invoices/<int:invoice_id>/refunds", methods=["POST"])
@roles_required(*DESK)
@domain_errors("billing.today")
def refund(invoice_id: int):
    """Give the patient back what they paid beyond what remains owed after a credit note."""
    note = db().get(CreditNote, _int("credit_note_id"))
    if note is None or note.invoice_id != invoice_id:
        raise S.NotFound("no such credit note on this invoice")
    payment, _inv = operations.refund(note.id, amount_cents=_cents("amount"), method=request.form.get("method", ""),
                                      actor=current_user.login)
    flash(_("Remboursement de %(amount)s enregistré.", amount=_euros(-payment.amount_cents)), "info")
    return redirect(url_for("billing.invoice", invoice_id=invoice_id))


@bp.route("/credit-notes/<int:note_id>/credit-note.pdf")
@roles_required(*DESK)
def credit_note_pdf(note_id: int):
    note = db().get(CreditNote, note_id) or abort(404)
    inv = db().get(Invoice, note.invoice_id)
    data = documents.credit_note_pdf(facade().new_session, note.id)
    facade().audit_now("billing.credit_note.printed", actor=current_user.login, patient_id=inv.patient_id,
                       detail={"number": note.number})
    return Response(data, mimetype="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="avoir-{note.number}.pdf"',
                             "Cache-Control": "no-store"})


@bp.route("/invoices/<int:invoice_id>/receipted.pdf")
@roles_required(*DESK)
def receipted_pdf(invoice_id: int):
    """The facture acquittée the patient sends to the mutual insurer (409 until the patient paid)."""
    inv = db().get(Invoice, invoice_id) or abort(404)
    try:
        data = documents.render_receipted_invoice(db(), inv)
    except S.Conflict as exc:
        return Response(message_for(exc), status=409, mimetype="text/plain")
    facade().audit_now("billing.receipted_invoice.printed", actor=current_user.login, patient_id=inv.patient_id,
                       detail={"number": inv.number})
    return Response(data, mimetype="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="facture-acquittee-{inv.number}.pdf"',
                             "Cache-Control": "no-store"})


@bp.route("/invoices/<int:invoice_id>/invoice.pdf")
@roles_required(*DESK)
def invoice_pdf(invoice_id: int):
    inv = db().get(Invoice, invoice_id) or abort(404)
    data = documents.invoice_pdf(facade().new_session, inv.id)
    facade().audit_now("billing.invoice.printed", actor=current_user.login, patient_id=inv.patient_id)
    return Response(data, mimetype="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="facture-{inv.number}.pdf"'})


@bp.route("/invoices/<int:invoice_id>/receipt.pdf")
@roles_required(*DESK)
def receipt_pdf(invoice_id: int):
    inv = db().get(Invoice, invoice_id) or abort(404)
    data = documents.render_receipt(db(), inv, request.args.get("payment_id", type=db_int))
    facade().audit_now("billing.receipt.printed", actor=current_user.login, patient_id=inv.patient_id)
    return Response(data, mimetype="application/pdf",
                    headers={"Content-Disposition": f'attachment; filename="recu-{inv.number}.pdf"'})


@bp.route("/closing", methods=["GET", "POST"])
@roles_required(*DESK)
@domain_errors("billing.closing")
def closing():
    """The day's closing: totals per method, signed off by the user who closes."""
    day = S.paris_today()
    if request.method == "POST":
        day_text = request.form.get("day") or day.isoformat()
        closing = operations.close_period("day", day_text, actor=current_user.login,
                                          counted_cash_cents=_cents("counted_cash"),
                                          counted_cheque_cents=_cents("counted_cheque"))
        flash(_("Journée du %(day)s clôturée.", day=_fr_date(closing_day(day_text))), "info")
        for label, difference in ((_("espèces"), closing.cash_difference_cents),
                                  (_("chèques"), closing.cheque_difference_cents)):
            if difference:
                flash(_("Écart de caisse (%(what)s) : %(amount)s.", what=label, amount=_euros(difference)), "error")
        return redirect(url_for("billing.closing"))
    totals = S.period_totals(db(), "day", day.isoformat())
    closed = db().scalar(select(Closing).where(Closing.kind == "day", Closing.period == day.isoformat()))
    return render_template("billing/closing.html", day=day, totals=totals, closed=closed, methods=METHOD_LABELS)


@bp.route("/closings/<int:closing_id>/report.pdf")
@roles_required(*DESK)
def closing_report(closing_id: int):
    """The printable Z report of a closing."""
    closing = db().get(Closing, closing_id) or abort(404)
    data = documents.render_closing_report(db(), closing)
    return Response(data, mimetype="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="cloture-{closing.period}.pdf"',
                             "Cache-Control": "no-store"})


@bp.route("/remittance", methods=["POST"])
@roles_required(*DESK)
@domain_errors("billing.closing")
def remittance():
    slip = S.create_remittance(db(), created_by=current_user.login)
    flash(_("Bordereau de remise n° %(id)s : %(count)s chèque(s), %(total)s.", id=slip.id, count=slip.count,
            total=_euros(slip.total_cents)), "info")
    return redirect(url_for("billing.remittance_slip", slip_id=slip.id))


@bp.route("/remittances/<int:slip_id>")
@roles_required(*DESK)
def remittance_slip(slip_id: int):
    """The printable cheque remittance slip for the bank."""
    slip = db().get(Remittance, slip_id) or abort(404)
    rows = db().execute(
        select(Payment, Invoice).join(RemittanceItem, RemittanceItem.payment_id == Payment.id)
        .join(Invoice, Invoice.id == Payment.invoice_id)
        .where(RemittanceItem.remittance_id == slip.id).order_by(Payment.id)
    ).all()
    return render_template("billing/remittance.html", slip=slip, rows=rows, practice=practice_identity())


# -- manager -------------------------------------------------------------------------------------


@bp.route("/tariffs", methods=["GET", "POST"])
@roles_required(*MANAGER)
@domain_errors("billing.tariffs")
def tariffs():
    """Prices per exam group from a date. The group is chosen from the list (a new one is created on
    purpose, code and label); a tariff that has not taken effect yet can be corrected or withdrawn."""
    today = clock.today()
    labels = S.exam_group_labels(db())
    if request.method == "POST":
        new_group = request.form.get("new_group") == "1"
        code = (request.form.get("new_code") if new_group else request.form.get("exam_group")) or ""
        label = (request.form.get("label") or "").strip() or labels.get(code.strip(), "")
        tariff = S.set_tariff(db(), exam_group=code, label=label, fee_cents=_cents("fee"),
                              effective_from=_date("effective_from"),
                              national_insurance_paid=request.form.get("national") == "1", new_group=new_group)
        facade().audit(db(), "billing.tariff.created", actor=current_user.login,
                       detail={"tariff": S.tariff_fields(tariff), "new_group": new_group})
        flash(_("Tarif enregistré."), "info")
        return redirect(url_for("billing.tariffs"))
    rows = list(db().scalars(select(Tariff).order_by(Tariff.exam_group, Tariff.effective_from.desc())))
    in_force = {}  # per group, the newest tariff started on or before today: the price of today's visits
    for t in rows:
        if t.effective_from <= today:
            in_force.setdefault(t.exam_group, t.id)
    return render_template("billing/tariffs.html", tariffs=rows, today=today, labels=labels,
                           tomorrow=today + timedelta(days=1), in_force=set(in_force.values()))


@bp.route("/tariffs/<int:tariff_id>/correct", methods=["POST"])
@roles_required(*MANAGER)
@domain_errors("billing.tariffs")
def correct_tariff(tariff_id: int):
    """Correct a tariff before it takes effect (price, label, start date); audited with what it was."""
    tariff, before = S.correct_tariff(db(), tariff_id, today=clock.today(), fee_cents=_cents("fee"),
                                      label=request.form.get("label") or "", effective_from=_date("effective_from"),
                                      national_insurance_paid=request.form.get("national") == "1")
    facade().audit(db(), "billing.tariff.corrected", actor=current_user.login,
                   detail={"before": before, "after": S.tariff_fields(tariff)})
    flash(_("Tarif à venir corrigé."), "info")
    return redirect(url_for("billing.tariffs"))


@bp.route("/tariffs/<int:tariff_id>/withdraw", methods=["POST"])
@roles_required(*MANAGER)
@domain_errors("billing.tariffs")
def withdraw_tariff(tariff_id: int):
    """Withdraw a tariff before it takes effect: the earlier price stays in force; audited."""
    before = S.withdraw_tariff(db(), tariff_id, today=clock.today())
    facade().audit(db(), "billing.tariff.withdrawn", actor=current_user.login, detail={"before": before})
    flash(_("Tarif à venir retiré : le tarif précédent reste en vigueur."), "info")
    return redirect(url_for("billing.tariffs"))


@bp.route("/mapping", methods=["GET", "POST"])
@roles_required(*MANAGER)
@domain_errors("billing.mapping")
def mapping():
    labels = S.exam_group_labels(db())
    if request.method == "POST":
        if request.form.get("delete"):
            row = db().get(ExamGroupMapping, _int("delete"))
            if row is not None:
                db().delete(row)
        else:
            group_code = request.form.get("exam_group", "")
            if group_code not in labels:
                raise S.Invalid("unknown exam group", code="unknown_exam_group")
            db().add(ExamGroupMapping(modality=request.form.get("modality", "").strip().upper()[:16],
                                      description_contains=(request.form.get("description") or "").strip() or None,
                                      exam_group=group_code))
        db().flush()
        flash(_("Correspondance enregistrée."), "info")
        return redirect(url_for("billing.mapping"))
    rows = list(db().scalars(select(ExamGroupMapping).order_by(ExamGroupMapping.modality, ExamGroupMapping.id)))
    return render_template("billing/mapping.html", rows=rows, labels=labels)


def _insurer_form() -> dict:
    """The insurer form's fields: the rate typed in percent, amounts in euros."""
    cap = (request.form.get("annual_cap") or "").strip()
    return {"name": request.form.get("name", ""), "amc_number": request.form.get("amc_number", ""),
            "coverage_bp": _percent("coverage"),
            "flat_cents": _cents("flat") if (request.form.get("flat") or "").strip() else 0,
            "annual_cap_cents": _cents("annual_cap") if cap else None,
            "third_party_payment": request.form.get("third_party") == "1"}


@bp.route("/insurers", methods=["GET", "POST"])
@roles_required(*MANAGER)
@domain_errors("billing.insurers")
def insurers():
    if request.method == "POST":
        insurer = S.create_insurer(db(), **_insurer_form())
        facade().audit(db(), "billing.insurer.created", actor=current_user.login,
                       detail={"insurer_id": insurer.id, **{k: getattr(insurer, k) for k in S.INSURER_FIELDS}})
        flash(_("Mutuelle enregistrée."), "info")
        return redirect(url_for("billing.insurers"))
    rows = list(db().scalars(select(Insurer).order_by(Insurer.retired_at.is_not(None), Insurer.name)))
    return render_template("billing/insurers.html", insurers=rows)


@bp.route("/insurers/<int:insurer_id>", methods=["GET", "POST"])
@roles_required(*MANAGER)
@domain_errors("billing.insurers")
def insurer_edit(insurer_id: int):
    """Correct an insurer (name, AMC number, rate, flat amount, cap, tiers payant); issued invoices keep theirs."""
    insurer = db().get(Insurer, insurer_id) or abort(404)
    if request.method == "POST":
        insurer, changes = S.update_insurer(db(), insurer_id, **_insurer_form())
        if changes:
            facade().audit(db(), "billing.insurer.updated", actor=current_user.login,
                           detail={"insurer_id": insurer.id, "changes": changes})
            flash(_("Mutuelle modifiée : les factures déjà émises gardent leur répartition."), "info")
        else:
            flash(_("Aucune modification."), "info")
        return redirect(url_for("billing.insurers"))
    members = db().scalar(select(func.count(Membership.id)).where(
        Membership.insurer_id == insurer.id,
        or_(Membership.valid_to.is_(None), Membership.valid_to >= clock.today())))
    return render_template("billing/insurer.html", insurer=insurer, members=members)


@bp.route("/insurers/<int:insurer_id>/retire", methods=["POST"])
@roles_required(*MANAGER)
@domain_errors("billing.insurers")
def insurer_retire(insurer_id: int):
    """Retire an insurer (no new memberships), or bring a retired one back."""
    retire = request.form.get("retire", "1") == "1"
    insurer = S.retire_insurer(db(), insurer_id, retired=retire)
    facade().audit(db(), "billing.insurer.retired" if retire else "billing.insurer.restored",
                   actor=current_user.login, detail={"insurer_id": insurer.id, "name": insurer.name})
    flash(_("Mutuelle « %(name)s » retirée : elle n'est plus proposée pour les nouvelles adhésions.",
            name=insurer.name) if retire else _("Mutuelle « %(name)s » de nouveau proposée.", name=insurer.name),
          "info")
    return redirect(url_for("billing.insurers"))


@bp.route("/claims", methods=["GET", "POST"])
@roles_required(*MANAGER)
@domain_errors("billing.claims")
def claims():
    if request.method == "POST":
        if request.form.get("send_insurer"):
            sent = S.send_claims(db(), _int("send_insurer"))
            flash(_("%(count)s demande(s) envoyée(s).", count=len(sent)), "info")
        else:
            operations.settle_claim(_int("claim_id"), paid=request.form.get("paid") == "1", actor=current_user.login,
                                    reason=request.form.get("reason"))
            flash(_("Demande mise à jour."), "info")
        return redirect(url_for("billing.claims"))
    open_claims = list(db().scalars(select(Claim).where(Claim.status.in_(("to_send", "sent")))
                                    .order_by(Claim.id).limit(500)))
    insurer_names = {i.id: i.name for i in db().scalars(select(Insurer))}
    return render_template("billing/claims.html", outstanding=S.outstanding_claims(db()), claims=open_claims,
                           insurer_names=insurer_names)


@bp.route("/closings", methods=["GET", "POST"])
@roles_required(*MANAGER)
@domain_errors("billing.closings")
def closings():
    if request.method == "POST":
        kind = request.form.get("kind", "")
        operations.close_period(kind, request.form.get("period", ""), actor=current_user.login)
        flash(_("Clôture enregistrée."), "info")
        return redirect(url_for("billing.closings"))
    rows = list(db().scalars(select(Closing).order_by(Closing.id.desc()).limit(200)))
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
