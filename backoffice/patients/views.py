"""The patient search page and the patient page (front desk, manager, radiologist)."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _, lazy_gettext as _l
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import BooleanField, SelectField, StringField
from wtforms.fields.choices import SelectChoice

from babel.dates import format_date

from backoffice.auth import roles_required
from backoffice.i18n import locale_name
from backoffice.extensions import db, facade
from backoffice.patients import nir as nir_rules
from backoffice.patients import services
from backoffice.retention.clock import today
from backoffice.billing.base import BillingError
from backoffice.billing.errors import TABLE as BILLING_ERRORS
from backoffice.errors import answer_domain_errors

bp = Blueprint("patients", __name__, url_prefix="/patients")
READERS = ("front_desk", "manager", "radiologist")
IDENTITY_EDITORS = ("front_desk", "manager")
PAGE_SIZE = 50
NIR_ERRORS = {
    "length": _l("Le NIR compte 15 caractères : 13 puis une clé de 2 chiffres."),
    "form": _l("Le NIR ne contient que des chiffres (2A ou 2B pour la Corse)."),
    "key": _l("La clé du NIR ne correspond pas : vérifiez le numéro."),
}


DOCUMENT_LABELS = {
    "id_card": _l("carte nationale d'identité"),
    "passport": _l("passeport"),
    "residence_permit": _l("titre de séjour"),
    "family_record": _l("livret de famille (mineur)"),
    "birth_certificate": _l("extrait d'acte de naissance (mineur)"),
}
RELATIONSHIP_LABELS = {
    "mother": _l("mère"), "father": _l("père"), "tutor": _l("tuteur ou tutrice"),
    "curator": _l("curateur ou curatrice"), "other": _l("autre représentant légal"),
}
QUALIFY_ERRORS = {
    "unchecked": _l("Identité non qualifiée : vérifiez d'abord une pièce d'identité et indiquez laquelle."),
    "document": _l("Pièce d'identité inconnue : choisissez-la dans la liste."),
}
GUARDIAN_ERRORS = {
    "name": _l("Indiquez le nom du représentant légal (200 caractères au plus)."),
    "relationship": _l("Choisissez le lien du représentant légal avec le patient."),
    "phone": _l("Numéro de téléphone non reconnu : des chiffres, au moins 6 (espaces, points et + permis)."),
    "unknown": _l("Ce représentant légal n'est plus enregistré pour ce patient."),
}


class InsForm(FlaskForm):
    nir = StringField(_l("NIR (15 caractères, clé comprise)"))
    document = SelectField(_l("Pièce d'identité vérifiée"),
                           choices=[SelectChoice("", _l("aucune pour l'instant"))]
                           + [SelectChoice(k, label) for k, label in DOCUMENT_LABELS.items()],
                           validate_choice=False)
    qualified = BooleanField(_l("INS vérifié par le téléservice INSi (identité qualifiée)"))


class GuardianForm(FlaskForm):
    name = StringField(_l("Nom et prénom"))
    relationship = SelectField(_l("Lien"), choices=[SelectChoice(k, label) for k, label in RELATIONSHIP_LABELS.items()],
                               validate_choice=False)
    phone = StringField(_l("Téléphone"))


class EndGuardianForm(FlaskForm):
    pass


@bp.app_template_filter("nir")
def _nir(value: str | None) -> str:
    return nir_rules.formatted(value) if value else "—"


@bp.route("/")
@roles_required(*READERS)
def search():
    """One box: name (any order, with or without accents), birth date or patient ID."""
    q = (request.args.get("q") or "").strip()
    page = max(request.args.get("page", 1, type=int) or 1, 1)
    results = None
    if q:
        results = facade().search_patients(db(), q, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
        facade().audit_now("patient.search", actor=current_user.login,
                           detail={"results": len(results.items), "page": page})
    return render_template("patients/search.html", q=q, results=results, page=page)


@bp.route("/<path:patient_id>")
@roles_required(*READERS)
def patient(patient_id: str):
    try:
        file = services.patient_file(db(), facade(), patient_id, today=today())
    except services.UnknownPatient:
        abort(404)
    facade().audit_now("patient.viewed", actor=current_user.login, patient_id=patient_id)
    from backoffice.billing import listings, services as billing
    from backoffice.billing.web import STATE_LABELS

    ins = file.ins
    desk = current_user.role in IDENTITY_EDITORS
    insurers = listings.insurers(db(), active_only=True) if desk else []
    return render_template("patients/patient.html", f=file, today=today(), states=STATE_LABELS,
                           labels=billing.exam_group_labels(db()), insurers=insurers, desk=desk,
                           ins_form=InsForm(nir=ins.nir if ins else "", document=ins.document if ins else "",
                                            qualified=ins.qualified if ins else False),
                           guardian_form=GuardianForm(formdata=None), end_form=EndGuardianForm(),
                           documents=DOCUMENT_LABELS, relationships=RELATIONSHIP_LABELS,
                           can_edit=current_user.role in IDENTITY_EDITORS)


def _known(patient_id: str) -> None:
    try:
        services.patient_file(db(), facade(), patient_id, today=today())
    except services.UnknownPatient:
        abort(404)


@bp.route("/<path:patient_id>/ins", methods=["POST"])
@roles_required(*IDENTITY_EDITORS)
def record_ins(patient_id: str):
    form = InsForm()
    if not form.validate_on_submit():
        abort(400)
    _known(patient_id)
    try:
        row = services.record_ins(db(), patient_id, form.nir.data or "", qualified=bool(form.qualified.data),
                                  document=form.document.data or None, recorded_by=current_user.login)
    except nir_rules.InvalidNir as exc:
        db().rollback()
        flash(str(NIR_ERRORS[exc.reason]), "error")
        return redirect(url_for("patients.patient", patient_id=patient_id))
    except services.NotQualifiable as exc:
        db().rollback()
        flash(str(QUALIFY_ERRORS[exc.reason]), "error")
        return redirect(url_for("patients.patient", patient_id=patient_id))
    facade().audit(db(), "patient.ins.recorded", actor=current_user.login, patient_id=patient_id,
                   detail={"qualified": row.qualified, "oid": row.oid, "document": row.document})
    flash(_("INS enregistré."), "info")
    return redirect(url_for("patients.patient", patient_id=patient_id))


@bp.route("/<path:patient_id>/guardians", methods=["POST"])
@roles_required(*IDENTITY_EDITORS)
def add_guardian(patient_id: str):
    form = GuardianForm()
    if not form.validate_on_submit():
        abort(400)
    _known(patient_id)
    try:
        row = services.add_guardian(db(), patient_id, name=form.name.data or "",
                                    relationship=form.relationship.data or "",
                                    phone=form.phone.data or "", recorded_by=current_user.login)
    except services.InvalidGuardian as exc:
        db().rollback()
        flash(str(GUARDIAN_ERRORS[exc.reason]), "error")
        return redirect(url_for("patients.patient", patient_id=patient_id))
    facade().audit(db(), "patient.guardian.recorded", actor=current_user.login, patient_id=patient_id,
                   detail={"guardian": row.id, "relationship": row.relationship})
    flash(_("Représentant légal enregistré."), "info")
    return redirect(url_for("patients.patient", patient_id=patient_id))


@bp.route("/<path:patient_id>/guardians/<int:guardian_id>/end", methods=["POST"])
@roles_required(*IDENTITY_EDITORS)
def end_guardian(patient_id: str, guardian_id: int):
    if not EndGuardianForm().validate_on_submit():
        abort(400)
    _known(patient_id)
    try:
        services.end_guardian(db(), patient_id, guardian_id, ended_by=current_user.login)
    except services.InvalidGuardian as exc:
        db().rollback()
        flash(str(GUARDIAN_ERRORS[exc.reason]), "error")
        return redirect(url_for("patients.patient", patient_id=patient_id))
    facade().audit(db(), "patient.guardian.ended", actor=current_user.login, patient_id=patient_id,
                   detail={"guardian": guardian_id})
    flash(_("Représentant légal retiré du dossier."), "info")
    return redirect(url_for("patients.patient", patient_id=patient_id))

# -- mutuelles at the desk -----------------------------------------------------------------------


def _mutuelles() -> str:
    """Where a refused membership post goes back to: the patient page's mutuelles."""
    return url_for("patients.patient", patient_id=(request.view_args or {}).get("patient_id", ""), _anchor="mutuelles")


# A refused membership (billing's rules) is billing's sentence on the patient page: billing's one table and handler.
answer_domain_errors(bp, BillingError, BILLING_ERRORS, back=_mutuelles)


def _membership_action(view):
    """Membership posts: a known patient only."""
    from functools import wraps

    @wraps(view)
    def wrapped(patient_id: str, **kwargs):
        if not services.is_known(db(), facade(), patient_id):
            flash(str(BILLING_ERRORS.rows["unknown_patient"]), "error")
            return redirect(url_for("patients.search"))
        return view(patient_id, **kwargs)

    return wrapped


@bp.route("/<path:patient_id>/memberships", methods=["POST"])
@roles_required(*IDENTITY_EDITORS)
@_membership_action
def add_membership(patient_id: str):
    """The desk records the patient's mutuelle (from the patient page)."""
    from backoffice.billing import services as billing
    from backoffice.billing.web import form_date, form_int

    m = billing.add_membership(db(), patient_id=patient_id, insurer_id=form_int("insurer_id"),
                               member_number=request.form.get("member_number", ""),
                               valid_from=form_date("valid_from"), valid_to=form_date("valid_to", optional=True),
                               payer_name=(request.form.get("payer_name") or "").strip() or None)
    facade().audit(db(), "billing.membership.created", actor=current_user.login, patient_id=patient_id,
                   detail={"membership_id": m.id, "insurer_id": m.insurer_id})
    flash(_("Mutuelle « %(name)s » enregistrée pour ce patient.", name=m.insurer.name), "info")
    return redirect(url_for("patients.patient", patient_id=patient_id, _anchor="mutuelles"))


@bp.route("/<path:patient_id>/memberships/<int:membership_id>/end", methods=["POST"])
@roles_required(*IDENTITY_EDITORS)
@_membership_action
def end_membership(patient_id: str, membership_id: int):
    """The desk ends a membership (its last day); invoices already issued keep their split."""
    from backoffice.billing import services as billing
    from backoffice.billing.web import form_date

    m = billing.end_membership(db(), membership_id, patient_id=patient_id, valid_to=form_date("valid_to"))
    facade().audit(db(), "billing.membership.ended", actor=current_user.login, patient_id=patient_id,
                   detail={"membership_id": m.id, "valid_to": m.valid_to.isoformat()})
    flash(_("Adhésion terminée au %(day)s.", day=format_date(m.valid_to, format="long", locale=locale_name())), "info")
    return redirect(url_for("patients.patient", patient_id=patient_id, _anchor="mutuelles"))
