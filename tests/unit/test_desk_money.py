"""Money at the desk (issue 11 §3): mutuelles from the patient page, the split previewed before issue,
rates in percent, insurers edited and retired, exam groups chosen for a tariff, future tariffs corrected
or withdrawn; forged posts refused in French."""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta, timezone
from html import unescape
from urllib.parse import quote

import pytest
from sqlalchemy import select, text

from backoffice.billing import documents, money
from backoffice.billing import services as S
from backoffice.billing.models import Insurer, Membership, Tariff

# The practice's "today" for every page of these tests (the app's clock): never the real date.
TODAY = date(2026, 6, 15)
VISIT = TODAY


@pytest.fixture
def people(app):
    from backoffice.auth.services import create_token, create_user

    app.config["CLOCK"] = lambda: datetime(2026, 6, 15, 10, 0, tzinfo=timezone.utc)
    out = {}
    with app.extensions["archivage"].new_session(write=True) as s:
        for role in ("front_desk", "manager", "radiologist"):
            user = create_user(s, f"dm_{role}", role=role, password="correct horse battery")
            out[role] = {"id": user.id, "headers": {"Authorization": f"Bearer {create_token(s, f'dm_{role}')}"}}
        s.commit()
    return out


def sign_in(client, people, role):
    with client.session_transaction() as session:
        session["_user_id"] = str(people[role]["id"])
        session["_fresh"] = True


def page_text(response) -> str:
    """What a person reads on the page (tags dropped, entities decoded, spaces collapsed)."""
    html = response.get_data(as_text=True)
    visible = unescape(re.sub(r"<(script|style)\b.*?</\1>|<[^>]+>", " ", html, flags=re.S))
    return " ".join(visible.replace("\xa0", " ").replace("\u202f", " ").split())


def checked_in(app, patient_id="DM1", exam_group="echographie", visit=VISIT, name="Dupré^Anne"):
    with app.extensions["archivage"].new_session(write=True) as s:
        group = S.create_exam_group(s, patient_id=patient_id, visit_date=visit, exam_group=exam_group,
                                    created_by="t", patient_name=name)
        s.commit()
        return group.id


def insurer(app, name="Mutuelle Bleue", coverage_bp=5000, third_party=False, **kw):
    with app.extensions["archivage"].new_session(write=True) as s:
        row = S.create_insurer(s, name=name, amc_number=kw.pop("amc", name[:8] + str(coverage_bp)),
                               coverage_bp=coverage_bp, third_party_payment=third_party, **kw)
        s.commit()
        return row.id


def audit_details(app, action: str) -> list[dict]:
    with app.extensions["archivage"].new_session() as s:
        rows = s.execute(text("SELECT detail FROM audit_event WHERE action = :a ORDER BY id"), {"a": action}).all()
    return [json.loads(r[0]) if isinstance(r[0], str) else r[0] for r in rows]


# -- percent: typed and read as people do, stored exactly in basis points -------------------------

PERCENT_OK = [
    ("50", 5000), ("50 %", 5000), ("50%", 5000), ("50\u00a0%", 5000), ("50\u202f%", 5000), (" 50 % ", 5000),
    ("33,5 %", 3350), ("33.5", 3350), ("33,33 %", 3333), ("33,330", 3333), ("0", 0), ("0 %", 0),
    ("100", 10000), ("100,00 %", 10000), ("0,01", 1), ("12,34", 1234), ("007", 700), ("70,1", 7010),
]
PERCENT_BAD = [  # what a desk could type by mistake, and why it is refused
    ("", "empty"), ("%", "empty"), ("  ", "empty"),
    ("abc", "form"), ("5O", "form"), ("-5", "form"), ("+5", "form"), ("1e2", "form"), ("50,", "form"),
    ("33,5,1", "form"), ("50 % %", "form"), ("½", "form"), ("٥٠", "form"),  # Arabic-Indic digits
    ("33,333", "decimals"), ("0,001", "decimals"),  # finer than a basis point: would have to round
    ("100,01", "range"), ("150 %", "range"), ("5000", "range"),  # basis points typed as percent
]


@pytest.mark.parametrize("typed, bp", PERCENT_OK, ids=[repr(t) for t, _ in PERCENT_OK])
def test_a_typed_percent_becomes_exact_basis_points(typed, bp):
    assert money.parse_percent(typed) == bp


@pytest.mark.parametrize("typed, reason", PERCENT_BAD, ids=[repr(t) for t, _ in PERCENT_BAD])
def test_an_impossible_percent_is_refused_with_its_reason(typed, reason):
    with pytest.raises(money.PercentError) as caught:
        money.parse_percent(typed)
    assert caught.value.reason == reason


def test_every_rate_reads_back_as_it_was_stored():
    """What the page shows ("33,5 %") and what the edit form holds ("33,5") parse back to the same
    basis points, in French and in English, for every rate (no float on the way)."""
    for bp in range(0, 10_001):
        for locale in ("fr_FR", "en"):
            assert money.parse_percent(documents.percent(bp, locale)) == bp
            assert money.parse_percent(documents.percent_input(bp, locale)) == bp
    assert documents.percent(5000) == "50\u00a0%" and documents.percent(3350) == "33,5\u00a0%"
    assert documents.percent(3350, "en") == "33.5%"


# -- mutuelles at the desk, the split before the invoice -------------------------------------------


def test_the_desk_records_a_mutuelle_on_the_patient_page_and_sees_the_split_before_issuing(app, client, people):
    """The front desk (not only the manager) adds the mutuelle from the patient page; the exam group
    shows the split the invoice will carry, and the invoice carries exactly that."""
    app.config["WTF_CSRF_ENABLED"] = False
    group_id = checked_in(app)
    insurer_id = insurer(app, "Mutuelle Bleue", coverage_bp=3350, third_party=True)
    sign_in(client, people, "front_desk")
    page = page_text(client.get("/patients/DM1"))
    assert "Ajouter une mutuelle" in page and "Mutuelle Bleue — 33,5 %" in page
    response = client.post("/patients/DM1/memberships", data={
        "insurer_id": insurer_id, "member_number": "AB-12", "valid_from": "2026-01-01", "valid_to": ""})
    assert response.status_code == 302
    page = page_text(client.get(response.headers["Location"]))
    assert "Mutuelle « Mutuelle Bleue » enregistrée pour ce patient." in page
    assert re.search(r"Mutuelle Bleue 33,5 % · tiers payant AB-12 01/01/2026 — le patient en cours", page), page

    # 4,00 € × 33,5 % = 1,34 € for the insurer, 2,66 € for the patient, collected at the desk.
    html = client.get(f"/billing/groups/{group_id}").get_data(as_text=True)
    assert "<title>Groupe d&#39;examens — Archivage</title>" in html or "<title>Groupe d'examens — Archivage</title>" in html
    group = page_text(client.get(f"/billing/groups/{group_id}"))
    assert "Répartition si la facture est émise maintenant" in group
    assert "Part mutuelle (Mutuelle Bleue, 33,5 %) 1,34 €" in group and "Part patient 2,66 €" in group
    assert "À encaisser à l'accueil 2,66 €" in group
    client.post(f"/billing/groups/{group_id}/consent", data={"accepted": "1"})
    invoice_url = client.post(f"/billing/groups/{group_id}/invoice", data={}).headers["Location"]
    with app.extensions["archivage"].new_session() as s:
        invoice = S.get_invoice(s, int(invoice_url.rsplit("/", 1)[1]))
        assert (invoice.insurer_cents, invoice.patient_cents, invoice.insurer_name) == (134, 266, "Mutuelle Bleue")


def test_the_desk_ends_a_membership_and_the_preview_follows(app, client, people):
    """Ending the membership the day before the visit: the preview says the patient pays everything."""
    app.config["WTF_CSRF_ENABLED"] = False
    group_id = checked_in(app)
    insurer_id = insurer(app, "Mutuelle Verte", coverage_bp=5000)
    sign_in(client, people, "front_desk")
    client.post("/patients/DM1/memberships", data={"insurer_id": insurer_id, "member_number": "V-1",
                                                   "valid_from": "2025-01-01"})
    assert "Part mutuelle (Mutuelle Verte, 50 %) 2,00 €" in page_text(client.get(f"/billing/groups/{group_id}"))
    # Sans tiers payant: the patient pays it all and is reimbursed with the receipted invoice.
    assert "À encaisser à l'accueil 4,00 €" in page_text(client.get(f"/billing/groups/{group_id}"))
    with app.extensions["archivage"].new_session() as s:
        membership_id = s.scalar(select(Membership.id).where(Membership.patient_id == "DM1"))
    # An end before the start is impossible: refused in French, nothing changed.
    response = client.post(f"/patients/DM1/memberships/{membership_id}/end", data={"valid_to": "2024-12-31"})
    assert "La fin de validité précède son début." in page_text(client.get(response.headers["Location"]))
    response = client.post(f"/patients/DM1/memberships/{membership_id}/end", data={"valid_to": "2026-06-14"})
    assert "Adhésion terminée au 14 juin 2026." in page_text(client.get(response.headers["Location"]))
    assert "terminée" in page_text(client.get("/patients/DM1"))
    group = page_text(client.get(f"/billing/groups/{group_id}"))
    assert "Part mutuelle" not in group and "Aucune mutuelle valable à la date de l'examen" in group
    assert audit_details(app, "billing.membership.ended")[-1]["valid_to"] == "2026-06-14"


def test_the_preview_counts_what_the_annual_cap_already_gave(app, client, people):
    """A cap of 2,50 € a year: the first invoice takes 2,00 €; the second group's preview shows what is
    left (0,50 €) and the issue agrees; the third shows nothing left and says why."""
    app.config["WTF_CSRF_ENABLED"] = False
    groups = [checked_in(app, "CAP", exam_group=g) for g in ("echographie", "scanner", "irm")]
    insurer_id = insurer(app, "Mutuelle Plafond", coverage_bp=5000, annual_cap_cents=250)
    with app.extensions["archivage"].new_session(write=True) as s:
        S.add_membership(s, patient_id="CAP", insurer_id=insurer_id, member_number="C", valid_from=date(2026, 1, 1))
        assert S.issue_invoice(s, groups[0], issued_by="t").insurer_cents == 200
        s.commit()
    sign_in(client, people, "front_desk")
    assert "Part mutuelle (Mutuelle Plafond, 50 %) 0,50 € Part patient 4,50 €" in page_text(
        client.get(f"/billing/groups/{groups[1]}"))
    with app.extensions["archivage"].new_session(write=True) as s:
        assert S.issue_invoice(s, groups[1], issued_by="t").insurer_cents == 50
        s.commit()
    third = page_text(client.get(f"/billing/groups/{groups[2]}"))
    assert "Part mutuelle (Mutuelle Plafond, 50 %) 0,00 €" in third
    assert "La mutuelle ne prend rien en charge sur ce forfait (taux nul ou plafond annuel atteint)." in third


def test_a_mutuelle_for_an_unknown_patient_is_refused(app, client, people):
    """A typed ID nobody has (no check-in, no study): page and API refuse it, nothing is recorded."""
    app.config["WTF_CSRF_ENABLED"] = False
    insurer_id = insurer(app)
    sign_in(client, people, "front_desk")
    response = client.post("/patients/NOBODY-99/memberships", data={
        "insurer_id": insurer_id, "member_number": "X", "valid_from": "2026-01-01"})
    assert response.status_code == 302
    assert "Patient inconnu : aucun dossier ni examen ne porte cet identifiant." in page_text(
        client.get(response.headers["Location"]))
    api = client.post("/api/v1/patients/NOBODY-99/memberships", headers=people["front_desk"]["headers"],
                      json={"insurer_id": insurer_id, "member_number": "X", "valid_from": "2026-01-01"})
    assert api.status_code == 404 and api.get_json()["error"]["code"] == "unknown_patient"
    with app.extensions["archivage"].new_session() as s:
        assert s.scalar(select(Membership.id)) is None


@pytest.mark.parametrize("typed, message", [
    ("150 %", "Taux impossible : une mutuelle prend en charge entre 0 et 100 %."),
    ("5000", "Taux impossible : une mutuelle prend en charge entre 0 et 100 %."),
    ("33,333", "Taux trop précis : deux décimales au plus (par exemple 33,33 %)."),
    ("cinquante", "Taux invalide : écrivez un pourcentage, par exemple 50 %, 33,5 % ou 0 %."),
])
def test_an_impossible_rate_on_the_insurer_form_is_refused_in_french(app, client, people, typed, message):
    app.config["WTF_CSRF_ENABLED"] = False
    sign_in(client, people, "manager")
    response = client.post("/billing/insurers", data={"name": "Trop", "amc_number": "T1", "coverage": typed},
                           headers={"Referer": "http://localhost/billing/insurers"})
    assert message in page_text(client.get(response.headers["Location"]))
    with app.extensions["archivage"].new_session() as s:
        assert s.scalar(select(Insurer.id)) is None


def test_the_manager_edits_and_retires_a_mutuelle(app, client, people):
    """Rate typed "50 %", shown "50 %"; an edit applies to invoices issued afterwards (an issued one keeps
    its split) and is audited with what changed; a retired mutuelle is no longer offered at the desk."""
    app.config["WTF_CSRF_ENABLED"] = False
    sign_in(client, people, "manager")
    client.post("/billing/insurers", data={"name": "Harmonie", "amc_number": "77", "coverage": "50 %",
                                           "third_party": "1"})
    assert re.search(r"Harmonie 77 50 % 0,00 € — oui proposée", page_text(client.get("/billing/insurers")))
    with app.extensions["archivage"].new_session() as s:
        insurer_id = s.scalar(select(Insurer.id).where(Insurer.name == "Harmonie"))
        assert s.get(Insurer, insurer_id).coverage_bp == 5000
    first = checked_in(app, "DM2")
    with app.extensions["archivage"].new_session(write=True) as s:
        S.add_membership(s, patient_id="DM2", insurer_id=insurer_id, member_number="H", valid_from=date(2026, 1, 1))
        issued = S.issue_invoice(s, first, issued_by="t")
        s.commit()
        issued_id = issued.id
    edit = page_text(client.get(f"/billing/insurers/{insurer_id}"))
    assert "Adhésions en cours ou à venir : 1." in edit
    client.post(f"/billing/insurers/{insurer_id}", data={"name": "Harmonie Mutuelle", "amc_number": "77",
                                                         "coverage": "33,5", "third_party": "1"})
    assert "Harmonie Mutuelle 77 33,5 %" in page_text(client.get("/billing/insurers"))
    assert audit_details(app, "billing.insurer.updated")[-1]["changes"] == {
        "name": ["Harmonie", "Harmonie Mutuelle"], "coverage_bp": [5000, 3350]}
    second = checked_in(app, "DM2", exam_group="radiologie")
    with app.extensions["archivage"].new_session() as s:
        assert s.get(S.Invoice, issued_id).insurer_cents == 200  # issued at 50 %: unchanged
        assert S.preview_split(s, second).insurer_cents == 101  # 3,00 € × 33,5 % = 1,005 -> 1,01 €

    client.post(f"/billing/insurers/{insurer_id}/retire", data={"retire": "1"})
    assert "retirée le" in page_text(client.get("/billing/insurers"))
    sign_in(client, people, "front_desk")
    patient = page_text(client.get("/patients/DM2"))
    assert "Harmonie Mutuelle — 33,5 %" not in patient  # not offered any more...
    assert "Harmonie Mutuelle 33,5 %" in patient  # ...but the membership recorded keeps its dates
    response = client.post("/patients/DM2/memberships", data={"insurer_id": insurer_id, "member_number": "H2",
                                                               "valid_from": "2026-06-01"})
    assert "Cette mutuelle est retirée : elle ne prend plus de nouvelles adhésions." in page_text(
        client.get(response.headers["Location"]))
    assert [d["name"] for d in audit_details(app, "billing.insurer.retired")] == ["Harmonie Mutuelle"]


# -- tariffs: groups chosen, future tariffs corrected or withdrawn -----------------------------------


def _tariff_id(app, exam_group: str, start: date) -> int | None:
    with app.extensions["archivage"].new_session() as s:
        return s.scalar(select(Tariff.id).where(Tariff.exam_group == exam_group, Tariff.effective_from == start))


def test_a_tariff_names_an_existing_group_and_a_typo_creates_nothing(app, client, people):
    """Reproduced: typing "scaner" created a group. It is now refused; a new group is made on purpose."""
    app.config["WTF_CSRF_ENABLED"] = False
    sign_in(client, people, "manager")
    page = client.get("/billing/tariffs").get_data(as_text=True)
    assert '<option value="scanner">Scanner</option>' in page and 'name="exam_group" required' in page
    assert "<title>Tarifs — Archivage</title>" in page  # the page's style stays out of its title
    back = {"Referer": "http://localhost/billing/tariffs"}
    response = client.post("/billing/tariffs", headers=back, data={"exam_group": "scaner", "fee": "6,00",
                                                                   "effective_from": "2026-07-01"})
    assert "Groupe d'examens inconnu : choisissez-en un dans la liste des tarifs" in page_text(client.get(response.headers["Location"]))
    response = client.post("/billing/tariffs", headers=back, data={"new_group": "1", "new_code": "scanner",
                                                                   "label": "Scanner", "fee": "6,00",
                                                                   "effective_from": "2026-07-01"})
    assert "Ce groupe d'examens existe déjà" in page_text(client.get(response.headers["Location"]))
    response = client.post("/billing/tariffs", headers=back, data={"new_group": "1", "new_code": "Cone Beam",
                                                                   "label": "Cone beam", "fee": "6,00",
                                                                   "effective_from": "2026-07-01"})
    assert "Le code d'un nouveau groupe compte 2 à 32 caractères" in page_text(client.get(response.headers["Location"]))
    assert _tariff_id(app, "scaner", date(2026, 7, 1)) is None
    client.post("/billing/tariffs", data={"new_group": "1", "new_code": "cone_beam", "label": "Scanner cone beam",
                                          "fee": "6,00", "effective_from": "2026-07-01"})
    client.post("/billing/tariffs", data={"exam_group": "scanner", "fee": "5,50", "effective_from": "2026-09-01"})
    with app.extensions["archivage"].new_session() as s:
        assert s.get(Tariff, _tariff_id(app, "cone_beam", date(2026, 7, 1))).label == "Scanner cone beam"
        assert s.get(Tariff, _tariff_id(app, "scanner", date(2026, 9, 1))).label == "Scanner"  # the group's label
    assert [d["tariff"]["exam_group"] for d in audit_details(app, "billing.tariff.created")] == ["cone_beam", "scanner"]


def test_a_future_tariff_is_corrected_or_withdrawn_and_one_in_effect_never_changes(app, client, people):
    app.config["WTF_CSRF_ENABLED"] = False
    sign_in(client, people, "manager")
    client.post("/billing/tariffs", data={"exam_group": "irm", "fee": "6,00", "effective_from": "2026-07-01"})
    future = _tariff_id(app, "irm", date(2026, 7, 1))
    page = page_text(client.get("/billing/tariffs"))
    assert "Corriger ou retirer" in page
    assert "IRM 6,00 € 1 juillet 2026 à venir" in page and "IRM 5,00 € 1 janvier 2000 en vigueur" in page
    response = client.post(f"/billing/tariffs/{future}/correct", data={
        "fee": "5,80", "label": "IRM", "effective_from": "2026-07-15"})
    assert "Tarif à venir corrigé." in page_text(client.get(response.headers["Location"]))
    with app.extensions["archivage"].new_session() as s:
        row = s.get(Tariff, future)
        assert (row.fee_cents, row.effective_from) == (580, date(2026, 7, 15))
    corrected = audit_details(app, "billing.tariff.corrected")[-1]
    assert (corrected["before"]["fee_cents"], corrected["after"]["fee_cents"]) == (600, 580)
    assert corrected["before"]["effective_from"] == "2026-07-01"

    # A correction may not move it into the past, nor touch the tariff in effect (from 2000).
    back = {"Referer": "http://localhost/billing/tariffs"}
    response = client.post(f"/billing/tariffs/{future}/correct", headers=back, data={
        "fee": "5,80", "label": "IRM", "effective_from": "2026-06-15"})
    assert "Un tarif corrigé doit toujours commencer après aujourd'hui." in page_text(
        client.get(response.headers["Location"]))
    in_effect = _tariff_id(app, "irm", date(2000, 1, 1))
    for action, data in (("correct", {"fee": "1,00", "label": "IRM", "effective_from": "2026-08-01"}),
                         ("withdraw", {})):
        response = client.post(f"/billing/tariffs/{in_effect}/{action}", headers=back, data=data)
        assert "Ce tarif est déjà en vigueur : il ne peut plus être modifié ni retiré." in page_text(
            client.get(response.headers["Location"]))
    with app.extensions["archivage"].new_session() as s:
        assert s.get(Tariff, in_effect).fee_cents == 500

    response = client.post(f"/billing/tariffs/{future}/withdraw", data={})
    assert "Tarif à venir retiré : le tarif précédent reste en vigueur." in page_text(
        client.get(response.headers["Location"]))
    assert _tariff_id(app, "irm", date(2026, 7, 15)) is None
    assert audit_details(app, "billing.tariff.withdrawn")[-1]["before"]["fee_cents"] == 580


def test_a_future_tariff_an_invoice_already_used_cannot_change(app):
    """A visit booked ahead and invoiced at the future price: that tariff is frozen like one in effect."""
    with app.extensions["archivage"].new_session(write=True) as s:
        tariff = S.set_tariff(s, exam_group="irm", label="IRM", fee_cents=600, effective_from=date(2026, 7, 1))
        group = S.create_exam_group(s, patient_id="AHEAD", visit_date=date(2026, 7, 2), exam_group="irm",
                                    created_by="t")
        S.issue_invoice(s, group.id, issued_by="t")
        with pytest.raises(S.Conflict) as caught:
            S.correct_tariff(s, tariff.id, today=TODAY, fee_cents=100, label="IRM", effective_from=date(2026, 7, 1),
                             national_insurance_paid=False)
        assert caught.value.code == "tariff_used"
        with pytest.raises(S.Conflict):
            S.withdraw_tariff(s, tariff.id, today=TODAY)
        # The only tariff of a new group with visits booked cannot be withdrawn: they would have no price.
        only = S.set_tariff(s, exam_group="cone_beam", label="Cone beam", fee_cents=600,
                            effective_from=date(2026, 7, 1), new_group=True)
        S.create_exam_group(s, patient_id="AHEAD", visit_date=date(2026, 7, 3), exam_group="cone_beam",
                            created_by="t")
        with pytest.raises(S.Conflict) as caught:
            S.withdraw_tariff(s, only.id, today=TODAY)
        assert caught.value.code == "tariff_needed"
        s.rollback()


# -- forged posts ------------------------------------------------------------------------------------


def test_forged_posts_are_refused_with_a_french_page_and_change_nothing(app, client, people):
    """A membership post without the CSRF token (another site's form), and the front desk posting to the
    manager's tariff and insurer actions: a human French page, not Werkzeug's "Forbidden"."""
    checked_in(app)
    insurer_id = insurer(app, "Mutuelle Rose", coverage_bp=5000)
    sign_in(client, people, "front_desk")
    response = client.post("/patients/DM1/memberships", data={"insurer_id": insurer_id, "member_number": "F",
                                                               "valid_from": "2026-01-01"})
    assert response.status_code == 400
    assert "La page a expiré (jeton de sécurité absent ou périmé) : rechargez-la et recommencez." in page_text(
        response)
    assert "CSRF" not in page_text(response) and "Bad Request" not in page_text(response)

    app.config["WTF_CSRF_ENABLED"] = False
    in_effect = _tariff_id(app, "irm", date(2000, 1, 1))
    for path, data in ((f"/billing/tariffs/{in_effect}/withdraw", {}),
                       ("/billing/tariffs", {"exam_group": "irm", "fee": "9,00", "effective_from": "2026-07-01"}),
                       (f"/billing/insurers/{insurer_id}/retire", {"retire": "1"}),
                       (f"/billing/insurers/{insurer_id}", {"name": "X", "amc_number": "X", "coverage": "100"})):
        response = client.post(path, data=data)
        assert response.status_code == 403, path
        text_ = page_text(response)
        assert "Votre rôle ne permet pas d'ouvrir cette page ni de faire cette action." in text_, path
        assert "Forbidden" not in text_, path
    with app.extensions["archivage"].new_session() as s:
        assert s.scalar(select(Membership.id)) is None
        row = s.get(Insurer, insurer_id)
        assert (row.name, row.coverage_bp, row.retired_at) == ("Mutuelle Rose", 5000, None)
        assert s.scalar(select(Tariff.id).where(Tariff.effective_from == date(2026, 7, 1))) is None
        assert _tariff_id(app, "irm", date(2000, 1, 1)) == in_effect


# -- the API -----------------------------------------------------------------------------------------


def test_the_api_lists_ends_memberships_edits_retires_insurers_and_previews_the_split(app, client, people):
    desk, manager = people["front_desk"]["headers"], people["manager"]["headers"]
    group_id = checked_in(app, "PAT/02")
    insurer_id = insurer(app, "Mutuelle Api", coverage_bp=2500, third_party=True)
    url = f"/api/v1/patients/{quote('PAT/02', safe='')}/memberships"
    created = client.post(url, headers=desk, json={"insurer_id": insurer_id, "member_number": "A-1",
                                                   "valid_from": "2026-01-01"})
    assert created.status_code == 201
    membership = created.get_json()
    assert client.get(url, headers=desk).get_json()["items"] == [membership]
    preview = client.get(f"/api/v1/exam-groups/{group_id}/split-preview", headers=desk).get_json()
    assert (preview["insurer_cents"], preview["patient_cents"], preview["to_collect_cents"]) == (100, 300, 300)

    assert client.patch(f"/api/v1/insurers/{insurer_id}", headers=desk, json={"coverage_bp": 10}).status_code == 403
    for bad in ({"coverage_bp": 10001}, {"coverage_bp": "50 %"}, {"name": ""}):
        response = client.patch(f"/api/v1/insurers/{insurer_id}", headers=manager, json=bad)
        assert response.status_code == 400, bad
    response = client.patch(f"/api/v1/insurers/{insurer_id}", headers=manager, json={"coverage_bp": 5000})
    assert response.status_code == 200 and response.get_json()["changes"] == {"coverage_bp": [2500, 5000]}
    preview = client.get(f"/api/v1/exam-groups/{group_id}/split-preview", headers=desk).get_json()
    assert preview["insurer_cents"] == 200
    invoice = client.post("/api/v1/invoices", headers=desk, json={"exam_group_id": group_id}).get_json()
    assert (invoice["insurer_cents"], invoice["patient_cents"]) == (preview["insurer_cents"], preview["patient_cents"])

    ended = client.post(f"{url}/{membership['id']}/end", headers=desk, json={"valid_to": "2026-06-30"})
    assert ended.status_code == 200 and ended.get_json()["valid_to"] == "2026-06-30"
    assert client.post(f"{url}/{membership['id']}/end", headers=desk,
                       json={"valid_to": "2026-07-30"}).status_code == 409  # it already ends before
    retired = client.post(f"/api/v1/insurers/{insurer_id}/retire", headers=manager, json={})
    assert retired.status_code == 200 and retired.get_json()["retired"] is True
    response = client.post(url, headers=desk, json={"insurer_id": insurer_id, "member_number": "A-2",
                                                    "valid_from": "2026-07-01"})
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "insurer_retired"
    assert client.get("/api/v1/patients/NOBODY/memberships", headers=desk).status_code == 404

    spec = client.get("/api/v1/openapi.json", headers=desk).get_json()["paths"]
    assert "patch" in spec["/api/v1/insurers/{insurer_id}"]
    assert "post" in spec["/api/v1/insurers/{insurer_id}/retire"]
    assert "get" in spec["/api/v1/patients/{patient_id}/memberships"]
    assert "post" in spec["/api/v1/patients/{patient_id}/memberships/{membership_id}/end"]
    assert "get" in spec["/api/v1/exam-groups/{group_id}/split-preview"]


# -- the same rules on both databases (the migration's column, a deleted future tariff, dates) ---------


@pytest.fixture
def both_databases(database_url):
    from archive_core.db import make_engine, session_factory
    from tests.helpers import migrate

    migrate(database_url)
    engine = make_engine(database_url)
    yield session_factory(engine)
    engine.dispose()


def test_tariffs_insurers_and_memberships_on_sqlite_and_postgresql(both_databases):
    with both_databases() as s:
        future = S.set_tariff(s, exam_group="irm", label="IRM", fee_cents=600, effective_from=date(2026, 7, 1))
        tariff, before = S.correct_tariff(s, future.id, today=TODAY, fee_cents=580, label="IRM",
                                          effective_from=date(2026, 7, 15), national_insurance_paid=False)
        assert before["fee_cents"] == 600 and (tariff.fee_cents, tariff.effective_from) == (580, date(2026, 7, 15))
        assert S.withdraw_tariff(s, future.id, today=TODAY)["effective_from"] == "2026-07-15"
        assert S.tariff_for(s, "irm", date(2026, 8, 1)).fee_cents == 500  # the earlier price again
        with pytest.raises(S.Conflict):
            S.correct_tariff(s, S.tariff_for(s, "irm", TODAY).id, today=TODAY, fee_cents=1, label="IRM",
                             effective_from=date(2026, 8, 1), national_insurance_paid=False)
        with pytest.raises(S.Invalid) as caught:
            S.set_tariff(s, exam_group="scaner", label="Scaner", fee_cents=500, effective_from=date(2026, 7, 1))
        assert caught.value.code == "unknown_exam_group"

        insurer = S.create_insurer(s, name="M", amc_number="1", coverage_bp=5000, third_party_payment=True)
        group = S.create_exam_group(s, patient_id="B1", visit_date=TODAY, exam_group="scanner", created_by="t")
        membership = S.add_membership(s, patient_id="B1", insurer_id=insurer.id, member_number="m",
                                      valid_from=date(2026, 1, 1))
        assert S.preview_split(s, group.id).insurer_cents == 250
        _insurer, changes = S.update_insurer(s, insurer.id, name="M", amc_number="1", coverage_bp=3333,
                                             flat_cents=0, annual_cap_cents=None, third_party_payment=True)
        assert changes == {"coverage_bp": [5000, 3333]}
        preview = S.preview_split(s, group.id)
        invoice = S.issue_invoice(s, group.id, issued_by="t")
        assert (invoice.insurer_cents, invoice.patient_cents) == (preview.insurer_cents, preview.patient_cents) \
            == (167, 333)  # 5,00 € × 33,33 % = 1,6665 -> 1,67 € (half up)
        assert S.retire_insurer(s, insurer.id).retired_at is not None
        with pytest.raises(S.Conflict) as caught:
            S.add_membership(s, patient_id="B1", insurer_id=insurer.id, member_number="n", valid_from=TODAY)
        assert caught.value.code == "insurer_retired"
        S.end_membership(s, membership.id, patient_id="B1", valid_to=TODAY)
        with pytest.raises(S.NotFound):
            S.end_membership(s, membership.id, patient_id="SOMEONE-ELSE", valid_to=TODAY)
        s.commit()
        assert s.get(Membership, membership.id).valid_to == TODAY
        assert s.get(Insurer, insurer.id).retired_at is not None
        s.rollback()


def test_the_new_pages_read_in_english_when_english_is_chosen(app, client, people):
    """Every string added for the desk's money is in the English catalogue: no French interface word
    left on the pages (tests/unit/test_i18n.py's word list), rates in the English form "33.5%"."""
    from tests.unit.test_i18n import csrf, french_words_in

    group_id = checked_in(app, name="Martin^Paul")  # data, not interface: names without French words
    insurer_id = insurer(app, "Alpha Santé", coverage_bp=3350, third_party=True)
    with app.extensions["archivage"].new_session(write=True) as s:
        S.add_membership(s, patient_id="DM1", insurer_id=insurer_id, member_number="A", valid_from=date(2026, 1, 1))
        S.set_tariff(s, exam_group="irm", label="IRM", fee_cents=600, effective_from=date(2026, 9, 1))
        s.commit()
    pages = {"manager": ["/billing/tariffs", "/billing/insurers", f"/billing/insurers/{insurer_id}"],
             "front_desk": ["/patients/DM1", f"/billing/groups/{group_id}"]}
    seen = ""
    for role, paths in pages.items():
        sign_in(client, people, role)
        client.post("/language", data={"lang": "en", "csrf_token": csrf(client, "/")})
        for path in paths:
            response = client.get(path)
            assert response.status_code == 200, path
            html = response.get_data(as_text=True)
            assert french_words_in(html) == [], path
            seen += page_text(response)
    for english in ("Split if the invoice is issued now", "Insurer's share (Alpha Santé, 33.5%)", "Add an insurer",
                    "End the membership", "Correct or withdraw", "Create a new exam group", "Edit or retire",
                    "Retire this insurer (no new memberships)", "Coverage (%), for example 50% or 33.5%"):
        assert english in seen, english
