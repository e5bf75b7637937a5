"""Bad input on a page answers a clear 4xx page, never a 500: domain errors mapped once, at the edge.

Every error a person can meet is answered here in the interface language, in the site's layout: the
HTTP errors Werkzeug would otherwise show as its own English pages (400, 403, 404, 405, 413, 429,
500...), a failed CSRF check, and the archive's own errors (``archive_core`` raises English sentences
for its logs and DICOM peers; :data:`CORE_ERRORS` is the one table from those errors to a status and
a translated message). Under ``/api/`` and ``/dicom-web/`` the same errors are JSON.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from flask import Blueprint, Flask, flash, jsonify, make_response, redirect, render_template, request
from flask_babel import gettext as _, lazy_gettext as _l
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.routing import IntegerConverter

from archive_core import api as core
from archive_core.api import RenderError

INT64 = 2**63
log = logging.getLogger(__name__)


def db_int(value: str) -> int:
    """A query argument as an integer a database column can hold (``type=db_int``: junk becomes the default)."""
    number = int(value)
    if not -INT64 <= number < INT64:
        raise ValueError("out of range")
    return number


class DatabaseIntConverter(IntegerConverter):
    """``<int:...>`` in a route: an id a database column can hold, else the route does not match (404)."""

    def __init__(self, map, *args, **kwargs) -> None:  # noqa: A002  (werkzeug's signature)
        kwargs.setdefault("max", INT64 - 1)
        super().__init__(map, *args, **kwargs)


# What a person reads for each HTTP status: a title and a sentence saying what to do.
HTTP_MESSAGES = {
    400: (_l("Demande refusée"),
          _l("La demande contient une valeur invalide (une date s'écrit AAAA-MM-JJ, un nombre en chiffres).")),
    401: (_l("Connexion nécessaire"), _l("Connectez-vous pour ouvrir cette page.")),
    403: (_l("Accès refusé"), _l("Votre rôle ne permet pas d'ouvrir cette page ni de faire cette action.")),
    404: (_l("Page introuvable"),
          _l("Introuvable : cet enregistrement (facture, paiement, examen…) n'existe pas à cette adresse.")),
    405: (_l("Action impossible ici"),
          _l("Cette adresse ne s'ouvre pas ainsi : revenez à la page précédente et utilisez ses boutons.")),
    409: (_l("Action impossible"), _l("Impossible dans l'état actuel de cet enregistrement.")),
    410: (_l("Lien indisponible"), _l("Ce lien n'est plus valable.")),
    413: (_l("Envoi trop volumineux"), _l("Le fichier ou le formulaire envoyé est trop volumineux.")),
    415: (_l("Format refusé"), _l("Ce type de fichier n'est pas accepté ici.")),
    422: (_l("Affichage impossible"), _l("Cet objet ne peut pas être affiché comme une image.")),
    429: (_l("Trop de demandes"), _l("Trop de demandes à la suite : patientez quelques instants puis réessayez.")),
    500: (_l("Erreur inattendue"),
          _l("Une erreur inattendue est survenue ; rien n'a été enregistré. Réessayez, puis prévenez "
             "l'administrateur si elle se reproduit.")),
    503: (_l("Service momentanément indisponible"),
          _l("Le service est momentanément occupé : réessayez dans quelques instants.")),
    507: (_l("Stockage plein"), _l("Le stockage de l'archive est plein : prévenez l'administrateur.")),
}
CSRF_MESSAGE = _l("La page a expiré (jeton de sécurité absent ou périmé) : rechargez-la et recommencez. "
                  "Ce que vous aviez saisi a été conservé.")

# archive_core's errors, most specific first: (status, message). The core's English sentence goes to the log.
CORE_ERRORS: dict[type[Exception], tuple[int, object]] = {
    core.NotFound: (404, _l("Cet examen ou cette image n'existe pas (ou plus) dans l'archive.")),
    core.InvalidIdentifier: (400, _l("Identifiant DICOM invalide.")),
    core.InvalidDataset: (400, _l("Ce fichier n'est pas un objet DICOM lisible.")),
    core.InvalidQuery: (400, _l("Cette recherche n'est pas possible dans l'archive.")),
    core.TooManyMatches: (400, _l("Trop de résultats : précisez la recherche.")),
    core.UnknownPeer: (400, _l("Cette station DICOM n'est pas enregistrée.")),
    core.DuplicateConflict: (409, _l("Un autre objet porte déjà cet identifiant dans l'archive.")),
    core.IdentityConflict: (409, _l("Cet objet contredit le dossier déjà archivé (autre patient ou autre examen).")),
    core.ObjectTooLarge: (413, _l("L'objet envoyé dépasse la taille maximale acceptée.")),
    core.StorageFull: (507, _l("Le stockage de l'archive est plein : prévenez l'administrateur.")),
    core.JournalBusy: (503, _l("L'archive est occupée par une autre opération : réessayez dans quelques instants.")),
    core.BlobMissing: (500, _l("Un fichier de l'archive est introuvable : prévenez l'administrateur.")),
    RenderError: (422, _l("Cet objet ne peut pas être affiché comme une image.")),
    core.ArchiveError: (500, HTTP_MESSAGES[500][1]),
}


def core_error(exc: Exception) -> tuple[int, str]:
    """The status and translated message of an archive_core error (its table row)."""
    status, message = next((row for kind, row in CORE_ERRORS.items() if isinstance(exc, kind)), (500, HTTP_MESSAGES[500][1]))
    return status, str(message)


# -- an area's domain errors (billing, radiology): one table and one handler each ---------------------------


class DomainError(Exception):
    """A request an area's rules refuse. *code* names its row in the area's :class:`ErrorTable`; *message* is
    English (the API's and the log's, never shown on a page); *params* is the data its sentence names."""

    code = "invalid"

    def __init__(self, message: str, code: str | None = None, **params) -> None:
        super().__init__(message)
        self.message = message
        self.params = params  # the data the translated sentence names (a field, periods, a count)
        if code:
            self.code = code


@dataclass(frozen=True)
class ErrorTable:
    """One area's table from a domain error to its HTTP status and the sentence a person reads.

    *rows*: code -> translated sentence (``%(name)s`` filled from the error's data); *kinds*: error class ->
    HTTP status, most specific first, unless *statuses* names the code's own; a code without a row gets
    its status's general sentence from *general*, never the English message. *fields*: the names of form
    and API fields as people say them.
    """

    rows: Mapping[str, Any]
    kinds: Mapping[type, int]
    general: Mapping[int, Any]
    fields: Mapping[str, Any] = field(default_factory=dict)
    statuses: Mapping[str, int] = field(default_factory=dict)

    def status(self, exc: Exception) -> int:
        own = self.statuses.get(getattr(exc, "code", ""))
        return own or next((status for kind, status in self.kinds.items() if isinstance(exc, kind)), 400)

    def field_label(self, name: str) -> str:
        return str(self.fields.get(name, _l("Valeur")))

    def message(self, exc: Exception) -> str:
        """The sentence for *exc* in the request's language."""
        row = self.rows.get(getattr(exc, "code", ""))
        if row is None:
            return str(self.general.get(self.status(exc)) or self.general[400])
        params = dict(getattr(exc, "params", {}) or {})
        if "field" in params:
            params["field"] = self.field_label(params["field"])
        try:
            return str(row) % params if "%(" in str(row) else str(row)
        except (KeyError, TypeError, ValueError):  # a row that names data this error does not carry
            return str(row).split("%(")[0].rstrip(" :")


def same_site(url: str | None) -> str | None:
    """The page a form came from, if it is ours (never bounce to another site)."""
    return url if url and url.startswith(request.host_url) else None


def answer_domain_errors(bp: Blueprint, error: type[Exception], table: ErrorTable,
                         back: Callable[[], str | None]) -> None:
    """Register on *bp* the one handler of *error*: the request's transaction is rolled back, then a form
    posted from a page flashes the sentence and goes back to that page (else to ``back()``); JSON callers
    and other requests get the error's status and sentence (a page, or ``{"error": ...}``)."""

    def handler(exc: Exception):
        from backoffice.extensions import rollback

        rollback()  # nothing the operation wrote before it refused is committed
        status, message = table.status(exc), table.message(exc)
        # The code and the endpoint, never the path or the message (they may carry a patient's ID).
        log.info("%s %s answered %s on %s", type(exc).__name__, getattr(exc, "code", ""), status, request.endpoint)
        if request.method == "POST" and not wants_json():
            target = same_site(request.referrer) or back()
            if target:
                flash(message, "error")
                return redirect(target)
        return error_page(status, message=message)

    TABLES[error] = table
    bp.register_error_handler(error, handler)


# Each area's table by its error class: an area's error raised from another area's page (the app's handler).
TABLES: dict[type, ErrorTable] = {}


def wants_json() -> bool:
    """API and DICOMweb callers, and the pages' own scripts (fetch), read JSON, not a page."""
    if request.path.startswith(("/api/", "/dicom-web/", "/wado")):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]


def error_page(status: int, detail: str = "", message: str | None = None):
    title, default = HTTP_MESSAGES.get(status, HTTP_MESSAGES[400 if status < 500 else 500])
    if wants_json():
        response = jsonify({"error": {"code": _CODES.get(status, "error"), "message": str(message or default)}})
        response.status_code = status
        return response
    return render_template("error.html", status=status, title=title, message=message or default,
                           detail=detail), status


_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 410: "gone", 413: "too_large", 415: "unsupported_media_type", 422: "unprocessable",
          429: "too_many_requests", 500: "internal_error", 503: "unavailable", 507: "storage_full"}


def init_app(app: Flask) -> None:
    def _rollback() -> None:
        from backoffice.extensions import rollback

        rollback()

    @app.errorhandler(DomainError)
    def _domain_error(exc: DomainError):
        # An area's error raised where its own handler is not registered (another blueprint's page).
        _rollback()
        table = next((t for kind, t in TABLES.items() if isinstance(exc, kind)), None)
        if table is None:
            return error_page(400)
        return error_page(table.status(exc), message=table.message(exc))

    @app.errorhandler(core.ArchiveError)
    def _archive_error(exc: core.ArchiveError):
        _rollback()
        status, message = core_error(exc)
        log.info("archive error answered %s on %s: %s", status, request.path, exc)
        return error_page(status, message=message)

    @app.errorhandler(CSRFError)
    def _csrf_error(exc: CSRFError):
        from backoffice.auth.continuity import keep_posted_form

        _rollback()
        if wants_json():
            return error_page(400, message=str(CSRF_MESSAGE))
        # A form posted from a page that outlived its session or its token: what was typed is kept and
        # shown again, filled, once the person is signed in (nothing is replayed).
        return keep_posted_form(reason="csrf")

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if exc.code is None or exc.code < 400:
            return exc
        response = make_response(error_page(exc.code))
        for name in ("Retry-After", "Allow", "WWW-Authenticate"):  # what the exception told the client
            value = dict(exc.get_headers()).get(name)
            if value:
                response.headers[name] = value
        return response

    @app.errorhandler(InternalServerError)
    def _internal_error(exc: InternalServerError):
        _rollback()
        return error_page(500)
