"""Retention's domain errors and their one table: error key -> (HTTP status, translated message).

Services raise :class:`RetentionError` with a key and data (never a sentence, never a status); the
pages (backoffice/retention/views/__init__.py), the API (backoffice/api/retention.py) and the CLI
(backoffice/retention/cli.py) each have one handler that rolls the request's transaction back and
answers from this table (:func:`problem_of`, :func:`message_for`), as billing's (billing/errors.py).
"""

from __future__ import annotations

from datetime import date
from typing import Any, NamedTuple

from flask_babel import lazy_gettext as _l


class RetentionError(Exception):
    """A retention action that cannot be done; *key* names its row in :data:`ERRORS`, *params* its data.

    A domain error: no HTTP status, no sentence. The edges answer with :func:`problem_of` (status and
    API code) and :func:`message_for` (the translated sentence).
    """

    def __init__(self, key: str, **params: Any) -> None:
        if key not in ERRORS:
            raise KeyError(f"retention error without a row in ERRORS: {key}")
        super().__init__(key)
        self.key, self.params = key, params

    def __str__(self) -> str:  # logs: the key and its data, never a translated sentence
        return f"{self.key} {self.params}" if self.params else self.key


def problem_of(exc: RetentionError) -> "Problem":
    """The HTTP status and API code of *exc*, from the table."""
    return ERRORS[exc.key]


def message_for(exc: RetentionError) -> str:
    """The sentence a person reads for *exc* (in the request's language: needs an app or request context)."""
    values = {k: _format(v) for k, v in exc.params.items()}
    return str(ERRORS[exc.key].message) % values if values else str(ERRORS[exc.key].message)


def _format(value: Any) -> Any:
    if value is None:
        return _l("sans échéance")
    if isinstance(value, date):
        return value.strftime("%d/%m/%Y")
    if isinstance(value, (tuple, list)):  # facts that changed: named for the reader
        return ", ".join(str(FACT_LABELS.get(v, v)) for v in value)
    return value


# What an approval records about each item and execution compares (services._item_facts).
FACT_LABELS = {
    "owner": _l("patient propriétaire"),
    "name": _l("nom du patient"),
    "birth_date": _l("date de naissance"),
    "on_hold": _l("séquestre"),
    "keep_until": _l("échéance"),
    "basis": _l("règle de conservation"),
    "purgeable": _l("échéance non atteinte"),
    "needs_review": _l("dossier à revoir"),
    "studies": _l("examens"),
    "approval": _l("approbation antérieure aux vérifications"),
}


class Problem(NamedTuple):
    status: int
    code: str  # the API's error code
    message: Any  # a lazy string with %(name)s placeholders filled from the error's data


ERRORS: dict[str, Problem] = {
    # not found
    "patient_not_found": Problem(404, "not_found", _l("aucun patient avec cet identifiant")),
    "study_not_found": Problem(404, "not_found", _l("aucun examen avec cet identifiant")),
    "hold_not_found": Problem(404, "not_found", _l("aucun séquestre avec cet identifiant")),
    "batch_not_found": Problem(404, "not_found", _l("aucun lot avec cet identifiant")),
    # bad input
    "reason_required": Problem(400, "bad_request", _l("un motif est requis")),
    "death_in_future": Problem(422, "death_in_future",
                               _l("la date de décès (%(death)s) est dans le futur : aujourd'hui est le %(today)s")),
    "death_before_birth": Problem(422, "death_before_birth",
                                  _l("la date de décès (%(death)s) précède la naissance (%(birth)s)")),
    "death_before_last_visit": Problem(
        422, "death_before_last_visit",
        _l("la date de décès (%(death)s) précède le dernier passage (%(visit)s) : un examen ne peut être fait "
           "après le décès. Vérifiez la date, ou rattachez d'abord l'examen au bon patient")),
    "ambiguous_patient": Problem(409, "conflict",
                                 _l("plusieurs patients portent cet identifiant : précisez l'émetteur (issuer)")),
    "correction_failed": Problem(409, "conflict", _l("correction impossible : %(detail)s")),
    # confirmations
    "shortening_needs_confirmation": Problem(
        409, "shortening_needs_confirmation",
        _l("cette date de décès avance la fin de conservation du %(before)s au %(after)s : "
           "confirmez pour l'enregistrer")),
    # holds
    "hold_already_released": Problem(409, "conflict", _l("ce séquestre est déjà levé")),
    # batches
    "already_requested": Problem(409, "conflict", _l("cet examen est déjà proposé à la destruction")),
    "already_decided": Problem(409, "conflict", _l("le lot n° %(batch)s n'est plus à décider (état : %(status)s)")),
    "not_approved": Problem(409, "not_approved",
                            _l("ce lot n'a pas été approuvé par un responsable : rien n'est détruit")),
    "approver_is_requester": Problem(
        409, "same_person",
        _l("%(login)s a demandé cette destruction : un autre responsable doit l'approuver")),
    "executor_is_requester": Problem(
        409, "same_person",
        _l("%(login)s a demandé cette destruction : un autre responsable doit l'exécuter")),
    "executor_is_approver": Problem(
        409, "same_person",
        _l("%(login)s a approuvé ce lot proposé par le planificateur : un autre responsable doit l'exécuter")),
    "not_a_manager": Problem(403, "forbidden", _l("%(login)s n'est pas un compte responsable actif")),
    "on_hold": Problem(409, "on_hold",
                       _l("le patient de cet examen est sous séquestre : rien n'est détruit ; refusez la demande "
                          "ou levez d'abord le séquestre")),
    "nothing_to_destroy": Problem(409, "nothing_to_destroy",
                                  _l("plus rien dans ce lot n'est destructible ce jour : refusez-le")),
    "changed_since_approval": Problem(
        409, "changed_since_approval",
        _l("le lot n° %(batch)s a changé depuis son approbation (%(what)s) : rien n'est détruit ; il revient à "
           "l'état « à approuver » pour une nouvelle décision")),
    "confirmation_required": Problem(400, "confirmation_required",
                                     _l("cochez la confirmation pour exécuter la destruction")),
    # corrections against open batches
    "study_in_open_batch": Problem(
        409, "in_open_batch",
        _l("cet examen fait partie du lot de destruction n° %(batch)s en cours : décidez d'abord du lot")),
    "patient_in_open_batch": Problem(
        409, "in_open_batch",
        _l("le patient %(patient)s fait partie du lot de destruction n° %(batch)s en cours : décidez d'abord du "
           "lot")),
}
