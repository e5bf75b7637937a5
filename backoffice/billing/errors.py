"""Billing's one table from a domain error to its HTTP status and the sentence the desk reads.

Services raise :class:`~backoffice.billing.base.BillingError` with an English message (the API's and
the log's) and a code plus data; the pages show :data:`TABLE`'s sentence instead (one handler on the
billing and patients blueprints, :func:`backoffice.errors.answer_domain_errors`): French (or English when
chosen), with no field name, no cents and no code. A code without a row gets its kind's general sentence,
never the English message.
"""

from __future__ import annotations

from flask_babel import lazy_gettext as _l

from backoffice.billing.base import Conflict, Invalid, NotFound
from backoffice.errors import HTTP_MESSAGES, ErrorTable

ERRORS = {
    # payments, credit notes, refunds
    "overpayment": _l("Paiement refusé : le montant dépasse le reste dû par le patient sur cette facture "
                      "(la part de la mutuelle en tiers payant est réglée par la mutuelle, pas à l'accueil)."),
    "over_credit": _l("Avoir refusé : le montant dépasse ce qui reste à annuler sur cette facture."),
    "over_refund": _l("Remboursement refusé : le montant dépasse ce que le patient a payé en trop."),
    "bad_amount": _l("Montant invalide : saisissez un montant positif en euros (exemple : 4,50)."),
    "bad_method": _l("Choisissez un mode de paiement : espèces, carte bancaire, chèque ou virement."),
    "bad_payer": _l("Choisissez qui est remboursé : le patient ou la mutuelle."),
    "reason_required": _l("Indiquez le motif de l'avoir."),
    "credited": _l("Cette facture est annulée par un avoir."),
    "already_credited": _l("Cette facture a déjà un avoir."),
    "not_paid": _l("La facture acquittée est délivrée quand le patient a réglé toute sa part."),
    "day_closed": _l("La journée est clôturée : aucun paiement ne peut plus y être enregistré."),
    # exam groups, consent, invoices
    "other_patient": _l("Un examen ne peut être déplacé que vers un groupe d'examens du même patient."),
    "invoiced_group": _l("Un groupe d'examens facturé garde ses examens (émettez d'abord un avoir)."),
    "consent_refused": _l("Le patient a refusé le forfait : ce groupe d'examens ne peut pas être facturé."),
    "consent_after_invoice": _l("Ce groupe d'examens est déjà facturé : émettez un avoir pour l'annuler."),
    "bad_consent": _l("Indiquez si le patient accepte ou refuse le forfait."),
    "already_invoiced": _l("Ce groupe d'examens est déjà facturé."),
    "no_fee": _l("Rien à facturer : l'archivage de ce groupe est pris en charge par l'Assurance maladie."),
    "patient_required": _l("Indiquez le patient (son identifiant, 64 caractères au plus)."),
    "unknown_exam_group": _l("Groupe d'examens inconnu : choisissez-en un dans la liste des tarifs."),
    "exists": _l("Cet enregistrement existe déjà."),
    # check-in
    "near_match": _l("Un patient au nom proche est déjà connu : choisissez-le, ou confirmez qu'il s'agit "
                     "d'un autre patient."),
    "patient_name_required": _l("Nouveau patient : saisissez son nom (NOM Prénom)."),
    "accession_used": _l("Ce numéro d'accession est déjà utilisé : laissez le champ vide pour qu'il soit "
                         "attribué."),
    "scheduled_time": _l("Heure invalide (exemple : 14:30)."),
    # tariffs, insurers, memberships
    "bad_fee": _l("Forfait invalide : saisissez un montant entre 0 et 1 000 €."),
    "exam_group_required": _l("Indiquez le groupe d'examens."),
    "tariff_exists": _l("Un tarif commence déjà à cette date pour ce groupe d'examens."),
    "name_required": _l("Indiquez le nom."),
    "amc_required": _l("Indiquez le numéro AMC de la mutuelle."),
    "bad_number": _l("%(field)s : saisissez un nombre entier positif."),
    "bad_choice": _l("%(field)s : choisissez oui ou non."),
    "member_number_required": _l("Indiquez le numéro d'adhérent."),
    "bad_validity": _l("La fin de validité précède son début."),
    "bad_date": _l("%(field)s : saisissez une date au format JJ/MM/AAAA."),
    "unknown_patient": _l("Patient inconnu : aucun dossier ni examen ne porte cet identifiant. "
                          "Recherchez le patient ou faites d'abord son accueil."),
    "unknown_insurer": _l("Cette mutuelle n'existe pas (ou plus)."),
    "insurer_retired": _l("Cette mutuelle est retirée : elle ne prend plus de nouvelles adhésions."),
    "already_retired": _l("Cette mutuelle est déjà retirée."),
    "not_retired": _l("Cette mutuelle n'est pas retirée."),
    "unknown_membership": _l("Adhésion introuvable pour ce patient."),
    "membership_ended": _l("Cette adhésion se termine déjà à cette date ou avant."),
    "percent_empty": _l("Indiquez le taux de prise en charge en pourcentage (par exemple 50 %)."),
    "percent_form": _l("Taux invalide : écrivez un pourcentage, par exemple 50 %, 33,5 % ou 0 %."),
    "percent_decimals": _l("Taux trop précis : deux décimales au plus (par exemple 33,33 %)."),
    "percent_range": _l("Taux impossible : une mutuelle prend en charge entre 0 et 100 %."),
    "group_exists": _l("Ce groupe d'examens existe déjà : choisissez-le dans la liste."),
    "group_code": _l("Le code d'un nouveau groupe compte 2 à 32 caractères : lettres minuscules sans accent, "
                     "chiffres ou _ (par exemple « scanner_cone_beam »)."),
    "group_label": _l("Un nouveau groupe d'examens a besoin de son libellé (par exemple « Scanner cone beam »)."),
    "tariff_in_effect": _l("Ce tarif est déjà en vigueur : il ne peut plus être modifié ni retiré. "
                           "Enregistrez un nouveau tarif à partir d'une date à venir."),
    "tariff_used": _l("Une facture a déjà été émise à ce tarif : il ne peut plus être modifié ni retiré."),
    "tariff_start_past": _l("Un tarif corrigé doit toujours commencer après aujourd'hui."),
    "tariff_needed": _l("Des examens sont déjà enregistrés pour ce groupe et il n'a pas de tarif antérieur : "
                        "corrigez ce tarif plutôt que de le retirer."),
    "tariff_not_found": _l("Ce tarif n'existe pas (ou plus)."),
    # closings, claims, remittances
    "bad_period": _l("Période invalide."),
    "bad_closing_kind": _l("Choisissez une clôture de jour, de mois ou d'année."),
    "counted_at_day_only": _l("Les espèces et les chèques se comptent à la clôture du jour seulement."),
    "future_period": _l("Une période à venir ne peut pas être clôturée."),
    "not_over": _l("Cette période n'est pas encore terminée."),
    "already_closed": _l("Cette période est déjà clôturée."),
    "open_days": _l("Clôturez d'abord ces journées : %(periods)s."),
    "open_months": _l("Clôturez d'abord ces mois : %(periods)s."),
    "claim_settled": _l("Cette demande de tiers payant est déjà réglée."),
    "nothing_to_remit": _l("Aucun chèque à remettre."),
}

# Each kind's status, and its sentence when a code has no row of its own (a new error not named yet).
KINDS = {NotFound: 404, Conflict: 409, Invalid: 400}
GENERAL = {404: HTTP_MESSAGES[404][1], 409: HTTP_MESSAGES[409][1],
           400: _l("Une valeur saisie est invalide : vérifiez le formulaire.")}

# Form and API field names as the desk says them.
FIELD_LABELS = {
    "coverage_bp": _l("Taux de prise en charge"),
    "flat_cents": _l("Forfait"),
    "flat": _l("Forfait"),
    "annual_cap_cents": _l("Plafond annuel"),
    "annual_cap": _l("Plafond annuel"),
    "fee_cents": _l("Forfait"),
    "counted_cash_cents": _l("Espèces comptées"),
    "counted_cheque_cents": _l("Chèques comptés"),
    "third_party_payment": _l("Tiers payant"),
    "accepted": _l("Accord du patient"),
    "insurer_id": _l("Mutuelle"),
    "target_group_id": _l("Groupe d'examens"),
    "credit_note_id": _l("Avoir"),
    "claim_id": _l("Demande de tiers payant"),
    "send_insurer": _l("Mutuelle"),
    "delete": _l("Correspondance"),
    "date": _l("Date"),
    "effective_from": _l("Date d'effet"),
    "valid_from": _l("Début de validité"),
    "valid_to": _l("Fin de validité"),
    "visit_date": _l("Date de l'examen"),
    "from": _l("Du"),
    "to": _l("Au"),
    "day": _l("Jour"),
}


TABLE = ErrorTable(rows=ERRORS, kinds=KINDS, general=GENERAL, fields=FIELD_LABELS)
field_label = TABLE.field_label
message_for = TABLE.message  # the sentence a person reads for a billing error (in the request's language)
