"""The audit trail as people read it: one table of event type → label, readable details, Paris times.

Every event type the code writes is in ``EVENT_LABELS`` (tests/unit/test_audit_page.py reads the
sources and fails on one missing), so the audit page's filter offers what exists under a name a
manager understands, in French or English.
"""

from __future__ import annotations

import json
from datetime import datetime

from flask_babel import get_locale, lazy_gettext as _l

from archive_core import values
from backoffice.sizes import format_size


EVENT_LABELS = {
    "login": _l("connexion"),
    "login.failed": _l("échec de connexion"),
    "logout": _l("déconnexion"),
    "user.created": _l("utilisateur créé"),
    "user.disabled": _l("utilisateur désactivé"),
    "user.enabled": _l("utilisateur réactivé"),
    "user.password_changed": _l("mot de passe changé"),
    "user.role_changed": _l("rôle changé"),
    "user.identity_changed": _l("identité d'un utilisateur changée (nom, RPPS)"),
    "token.created": _l("jeton d'API créé"),
    "token.revoked": _l("jeton d'API révoqué"),
    "patient.viewed": _l("dossier patient consulté"),
    "patient.search": _l("recherche de patient"),
    "patient.ins.recorded": _l("INS du patient enregistré"),
    "patient.guardian.recorded": _l("représentant légal enregistré"),
    "patient.guardian.ended": _l("représentant légal retiré"),
    "study.search": _l("recherche d'examens"),
    "study.view": _l("examen consulté"),
    "study.priors": _l("antériorités consultées"),
    "study.print": _l("examen imprimé (reproduction papier)"),
    "study.media": _l("examen exporté (CD/USB)"),
    "study.send": _l("examen envoyé à un correspondant"),
    "study.send.request": _l("envoi d'examen demandé"),
    "study.retrieved": _l("examen récupéré (web ou DICOM)"),
    "report.view": _l("compte rendu consulté"),
    "report.draft": _l("compte rendu enregistré (brouillon)"),
    "report.sign": _l("compte rendu signé"),
    "share.create": _l("lien de partage créé"),
    "share.open": _l("lien de partage ouvert"),
    "share.bad_code": _l("lien de partage : code erroné"),
    "share.revoke": _l("lien de partage révoqué"),
    "dicom.store": _l("images reçues (DICOM)"),
    "dicom.store.refused": _l("objet DICOM refusé (UID absent ou d'un autre patient/examen)"),
    "dicom.find": _l("recherche DICOM (C-FIND)"),
    "dicom.refused": _l("connexion DICOM refusée"),
    "dicom.storage_commitment": _l("engagement de stockage (modalité)"),
    "dicom.worklist.find": _l("liste de travail consultée par une modalité"),
    "dicom.mpps.created": _l("examen commencé sur la modalité (MPPS)"),
    "dicom.mpps.set": _l("examen terminé ou interrompu sur la modalité (MPPS)"),
    "retention.viewed": _l("échéance de conservation consultée"),
    "death.recorded": _l("décès enregistré"),
    "hold.placed": _l("séquestre posé"),
    "hold.released": _l("séquestre levé"),
    "tier.moved": _l("données déplacées vers l'archive intermédiaire"),
    "purge.proposed": _l("destruction proposée"),
    "purge.approved": _l("destruction approuvée"),
    "purge.rejected": _l("destruction refusée"),
    "purge.tombstoned": _l("dossier marqué détruit"),
    "purge.skipped": _l("dossier écarté à l'approbation (plus destructible ce jour)"),
    "purge.returned": _l("lot renvoyé à une nouvelle décision (changé depuis l'approbation)"),
    "purge.executed": _l("destruction exécutée (certificat)"),
    "correction.study_moved": _l("examen rattaché à un autre patient"),
    "correction.patients_merged": _l("patients fusionnés"),
    "correction.deletion_requested": _l("suppression d'un examen envoyé par erreur demandée"),
    "audit.exported": _l("journal d'audit exporté"),
    "billing.search": _l("recherche à l'accueil"),
    "billing.exam_group.created": _l("patient enregistré à l'accueil (groupe d'examens)"),
    "billing.exam_group.viewed": _l("groupe d'examens consulté"),
    "billing.exam_groups.viewed": _l("liste des groupes d'examens consultée"),
    "billing.consent": _l("consentement à l'archivage enregistré"),
    "billing.membership.created": _l("mutuelle enregistrée"),
    "billing.membership.ended": _l("adhésion à une mutuelle terminée"),
    "billing.insurer.created": _l("mutuelle ajoutée à la liste"),
    "billing.insurer.updated": _l("mutuelle modifiée"),
    "billing.insurer.retired": _l("mutuelle retirée de la liste"),
    "billing.insurer.restored": _l("mutuelle proposée de nouveau"),
    "billing.tariff.created": _l("tarif créé"),
    "billing.tariff.corrected": _l("tarif à venir corrigé"),
    "billing.tariff.withdrawn": _l("tarif à venir retiré"),
    "billing.invoice.issued": _l("facture émise"),
    "billing.invoice.viewed": _l("facture consultée"),
    "billing.invoices.viewed": _l("liste des factures consultée"),
    "billing.invoice.printed": _l("facture imprimée"),
    "billing.receipt.printed": _l("reçu imprimé"),
    "billing.receipted_invoice.printed": _l("facture acquittée imprimée"),
    "billing.credit_note.issued": _l("avoir émis"),
    "billing.credit_note.printed": _l("avoir imprimé"),
    "billing.payment": _l("paiement encaissé"),
    "billing.refund": _l("remboursement"),
    "billing.claim.settled": _l("réponse de la mutuelle enregistrée"),
    "billing.closing": _l("clôture de caisse"),
    "billing.study.moved": _l("examen déplacé vers un autre groupe d'examens"),
    "billing.corrected": _l("correction de facturation"),
}

# The keys of an event's detail, as a sentence's subject; a key not listed shows with spaces for "_".
DETAIL_LABELS = {
    "ip": _l("adresse IP"), "address": _l("adresse"), "login": _l("identifiant"), "role": _l("rôle"),
    "reason": _l("motif"), "batch_id": _l("lot n°"), "hold_id": _l("séquestre n°"), "items": _l("dossiers"),
    "patients": _l("patients"), "instances": _l("images"), "bytes": _l("taille"), "studies": _l("examens"),
    "results": _l("résultats"), "page": _l("page"), "via": _l("par"), "number": _l("numéro"),
    "exam_group_id": _l("groupe d'examens n°"), "token_id": _l("jeton n°"), "service": _l("service"),
    "peer": _l("destinataire"), "job": _l("envoi n°"), "accepted": _l("accepté"), "priors": _l("antériorités"),
    "death_date": _l("date du décès"), "previous": _l("valeur précédente"), "to": _l("vers"),
    "keep_until_before": _l("échéance avant"), "keep_until_after": _l("échéance après"),
    "shortening_confirmed": _l("raccourcissement confirmé"), "certificate_sha256": _l("empreinte du certificat"),
    "from_patient_id": _l("patient d'origine"), "merged_patient_id": _l("patient fusionné"),
    "membership_id": _l("adhésion n°"), "link": _l("lien n°"), "status": _l("état"), "count": _l("nombre"),
    "days": _l("jours"), "date": _l("date"), "viewer": _l("visionneuse"), "basis": _l("base légale"),
    "approved_by": _l("approuvé par"), "changed": _l("changements"), "at": _l("étape"),
    "amount_cents": _l("montant"), "method": _l("mode de paiement"), "version": _l("version"),
}


def event_label(action: str) -> str:
    label = EVENT_LABELS.get(action)
    return str(label) if label is not None else action


def paris_time(at: str) -> str:
    """The event's stored UTC ISO instant as Paris wall-clock time: 01/12/2026 14:56:02."""
    try:
        moment = datetime.fromisoformat(at)
    except ValueError:
        return at
    local = values.paris_time(moment)
    if str(get_locale() or "fr") == "fr":
        return local.strftime("%d/%m/%Y %H:%M:%S")
    return local.strftime("%Y-%m-%d %H:%M:%S")


def _value(value) -> str:
    if isinstance(value, bool):
        return str(_l("oui") if value else _l("non"))
    if value is None:
        return "—"
    if isinstance(value, list):
        return ", ".join(_value(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k} : {_value(v)}" for k, v in value.items())
    return str(value)


def readable_detail(detail: str) -> list[tuple[str, str]]:
    """The event's JSON detail as (label, value) lines; text that is not JSON is one line as it is."""
    try:
        data = json.loads(detail or "{}")
    except ValueError:
        return [("", detail)]
    if not isinstance(data, dict):
        return [("", _value(data))]
    return [(str(DETAIL_LABELS.get(key, key.replace("_", " "))),
             format_size(value) if key == "bytes" and isinstance(value, int) else _value(value))
            for key, value in data.items()]
