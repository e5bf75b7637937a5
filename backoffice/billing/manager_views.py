"""The manager's billing settings: tariffs (set, corrected or withdrawn before they take effect), the
mapping from studies to exam groups, and the mutual insurers."""

from __future__ import annotations

from datetime import timedelta

from flask import abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user

from backoffice.auth import roles_required
from backoffice.billing import listings
from backoffice.billing import services as S
from backoffice.billing.models import Insurer
from backoffice.billing.web import MANAGER, bp, form_cents, form_date, form_int, form_percent
from backoffice.extensions import db, facade
from backoffice.retention import clock


@bp.route("/tariffs", methods=["GET", "POST"])
@roles_required(*MANAGER)
def tariffs():
    """Prices per exam group from a date. The group is chosen from the list (a new one is created on
    purpose, code and label); a tariff that has not taken effect yet can be corrected or withdrawn."""
    today = clock.today()
    labels = S.exam_group_labels(db())
    if request.method == "POST":
        new_group = request.form.get("new_group") == "1"
        code = (request.form.get("new_code") if new_group else request.form.get("exam_group")) or ""
        label = (request.form.get("label") or "").strip() or labels.get(code.strip(), "")
        tariff = S.set_tariff(db(), exam_group=code, label=label, fee_cents=form_cents("fee"),
                              effective_from=form_date("effective_from"),
                              national_insurance_paid=request.form.get("national") == "1", new_group=new_group)
        facade().audit(db(), "billing.tariff.created", actor=current_user.login,
                       detail={"tariff": S.tariff_fields(tariff), "new_group": new_group})
        flash(_("Tarif enregistré."), "info")
        return redirect(url_for("billing.tariffs"))
    rows = listings.tariffs(db())
    in_force = {}  # per group, the newest tariff started on or before today: the price of today's visits
    for t in rows:
        if t.effective_from <= today:
            in_force.setdefault(t.exam_group, t.id)
    return render_template("billing/tariffs.html", tariffs=rows, today=today, labels=labels,
                           tomorrow=today + timedelta(days=1), in_force=set(in_force.values()))


@bp.route("/tariffs/<int:tariff_id>/correct", methods=["POST"])
@roles_required(*MANAGER)
def correct_tariff(tariff_id: int):
    """Correct a tariff before it takes effect (price, label, start date); audited with what it was."""
    tariff, before = S.correct_tariff(db(), tariff_id, today=clock.today(), fee_cents=form_cents("fee"),
                                      label=request.form.get("label") or "", effective_from=form_date("effective_from"),
                                      national_insurance_paid=request.form.get("national") == "1")
    facade().audit(db(), "billing.tariff.corrected", actor=current_user.login,
                   detail={"before": before, "after": S.tariff_fields(tariff)})
    flash(_("Tarif à venir corrigé."), "info")
    return redirect(url_for("billing.tariffs"))


@bp.route("/tariffs/<int:tariff_id>/withdraw", methods=["POST"])
@roles_required(*MANAGER)
def withdraw_tariff(tariff_id: int):
    """Withdraw a tariff before it takes effect: the earlier price stays in force; audited."""
    before = S.withdraw_tariff(db(), tariff_id, today=clock.today())
    facade().audit(db(), "billing.tariff.withdrawn", actor=current_user.login, detail={"before": before})
    flash(_("Tarif à venir retiré : le tarif précédent reste en vigueur."), "info")
    return redirect(url_for("billing.tariffs"))


@bp.route("/mapping", methods=["GET", "POST"])
@roles_required(*MANAGER)
def mapping():
    labels = S.exam_group_labels(db())
    if request.method == "POST":
        if request.form.get("delete"):
            listings.delete_mapping(db(), form_int("delete"))
        else:
            listings.add_mapping(db(), modality=request.form.get("modality", ""),
                                 description=request.form.get("description") or "",
                                 exam_group=request.form.get("exam_group", ""), labels=labels)
        flash(_("Correspondance enregistrée."), "info")
        return redirect(url_for("billing.mapping"))
    rows = listings.mappings(db())
    return render_template("billing/mapping.html", rows=rows, labels=labels)


def _insurer_form() -> dict:
    """The insurer form's fields: the rate typed in percent, amounts in euros."""
    cap = (request.form.get("annual_cap") or "").strip()
    return {"name": request.form.get("name", ""), "amc_number": request.form.get("amc_number", ""),
            "coverage_bp": form_percent("coverage"),
            "flat_cents": form_cents("flat") if (request.form.get("flat") or "").strip() else 0,
            "annual_cap_cents": form_cents("annual_cap") if cap else None,
            "third_party_payment": request.form.get("third_party") == "1"}


@bp.route("/insurers", methods=["GET", "POST"])
@roles_required(*MANAGER)
def insurers():
    if request.method == "POST":
        insurer = S.create_insurer(db(), **_insurer_form())
        facade().audit(db(), "billing.insurer.created", actor=current_user.login,
                       detail={"insurer_id": insurer.id, **{k: getattr(insurer, k) for k in S.INSURER_FIELDS}})
        flash(_("Mutuelle enregistrée."), "info")
        return redirect(url_for("billing.insurers"))
    rows = listings.insurers(db(), retired_last=True)
    return render_template("billing/insurers.html", insurers=rows)


@bp.route("/insurers/<int:insurer_id>", methods=["GET", "POST"])
@roles_required(*MANAGER)
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
    members = listings.current_members(db(), insurer.id, clock.today())
    return render_template("billing/insurer.html", insurer=insurer, members=members)


@bp.route("/insurers/<int:insurer_id>/retire", methods=["POST"])
@roles_required(*MANAGER)
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

