"""Who may call DICOMweb (``/dicom-web`` and ``/wado``) and how a call is answered: the blueprints, their
JSON errors, CORS, and :func:`dicomweb_route` (credentials, then one audit event per request). See the
package's docstring for who may call and what a share link reads."""

from __future__ import annotations

from dataclasses import dataclass
from functools import wraps

from flask import Blueprint, Response, current_app, g, jsonify, request, session
from flask_login import current_user

from archive_core.api import NotFound
from backoffice.extensions import csrf, db, facade

bp = Blueprint("dicomweb", __name__, url_prefix="/dicom-web")
wado_bp = Blueprint("wado", __name__)  # WADO-URI (PS3.18 chapter 9) for older viewers: GET /wado
# Bearer calls carry no cookie a browser would add on its own: no CSRF token (as /api/v1).
csrf.exempt(bp)

# Radiologists read images; managers audit and answer patients' requests for copies. The front
# desk opens the study viewer (which reads through DICOMweb with the page's session) to show a patient
# an image: it reads, signed in, never with a token, and never stores.
ROLES = ("radiologist", "manager")
READ_ROLES = ROLES + ("front_desk",)
DICOM_JSON = "application/dicom+json"
CHUNK = 256 * 1024
UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


class DicomwebError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def json_error(status: int, code: str, message: str):
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    return response


@wado_bp.errorhandler(DicomwebError)
@bp.errorhandler(DicomwebError)
def _dicomweb_error(exc: DicomwebError):
    code = {400: "bad_request", 404: "not_found", 406: "not_acceptable", 411: "length_required", 413: "too_large",
            415: "unsupported_media_type"}
    return json_error(exc.status, code.get(exc.status, "error"), exc.message)


@dataclass(frozen=True)
class ShareCaller:
    """A browser session that unlocked share links: reads their studies only."""

    link_ids: tuple[int, ...]
    study_uids: frozenset[str]
    role = "share_link"

    @property
    def login(self) -> str:
        return "share:" + ",".join(str(i) for i in self.link_ids)


def _cors_origins() -> set[str]:
    """DICOMWEB_CORS_ORIGINS: a list (or a comma-separated string) of origins, e.g. a viewer's
    ``https://viewer.example.fr``; empty by default (no cross-origin access)."""
    value = current_app.config.get("DICOMWEB_CORS_ORIGINS") or []
    if isinstance(value, str):
        value = value.split(",")
    return {str(v).strip().rstrip("/") for v in value if str(v).strip()}


@wado_bp.after_request
@bp.after_request
def _cors(response: Response) -> Response:
    """CORS headers for an allowed Origin, on every answer (errors included, so a viewer can read a 401).

    Preflight OPTIONS is answered by Flask's automatic OPTIONS response, before any credential check.
    No Allow-Credentials: another origin authenticates with a bearer token, never with our cookies.
    """
    origin = request.headers.get("Origin", "").rstrip("/")
    response.vary.add("Origin")
    if origin and origin in _cors_origins():
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = "GET, HEAD, POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Accept, Content-Type, Range, If-Range, If-None-Match"
        # What a viewer needs to read to resume a retrieval (ETag, Content-Range, Accept-Ranges): wado.py.
        response.headers["Access-Control-Expose-Headers"] = ("Warning, Content-Type, Content-Length, ETag, "
                                                             "Content-Range, Accept-Ranges")
        response.headers["Access-Control-Max-Age"] = "600"
    return response


def _caller():
    """The user a request comes from: a bearer token, else the signed-in session, else the share links
    this browser session unlocked (:class:`ShareCaller`); None if none.

    A session's POST (STOW-RS from a page) carries the CSRF token like any form; bearer calls need none.
    """
    from backoffice.auth.services import token_caller
    from backoffice.radiology.services import usable_share_links

    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token_caller(db(), token.strip())
    if current_user.is_authenticated:
        if request.method not in ("GET", "HEAD", "OPTIONS") and current_app.config.get("WTF_CSRF_ENABLED", True):
            csrf.protect()
        return current_user
    opened = [i for i, ok in (session.get("share_ok") or {}).items() if ok]
    links = usable_share_links(db(), opened) if opened else []
    if links:
        studies = {link.study_uid for link in links}
        for link in links:
            if link.include_priors:  # the same patient's other studies (the link says so)
                try:
                    studies |= {p.study_uid for p in facade().prior_studies(db(), link.study_uid)}
                except NotFound:  # the shared study was deleted: its link reaches nothing else
                    pass
        return ShareCaller(tuple(sorted(link.id for link in links)), frozenset(studies))
    return None


def dicomweb_route(rule: str, action: str, *, blueprint: Blueprint = bp, **options):
    """A DICOMweb route: credentials (401/403), then the view; one audit event per request."""

    roles = ROLES if action == "dicomweb.store" else READ_ROLES

    def decorate(view):
        @wraps(view)
        def wrapped(**kwargs):
            user = _caller()
            if user is None:
                response = json_error(401, "unauthorized", "a bearer token or a signed-in session is required")
                response.headers["WWW-Authenticate"] = 'Bearer realm="dicom-web"'
                return response
            shared = isinstance(user, ShareCaller)
            # The front desk reads through its signed-in session (the viewer page), not with a token.
            bearer = request.headers.get("Authorization", "").lower().startswith("bearer ")
            if not shared and user.role not in (ROLES if bearer else roles):
                return json_error(403, "forbidden", f"role {user.role} has no DICOMweb access")
            if request.method not in ("GET", "HEAD"):
                # The request's session (which read the token) holds SQLite's write lock on a POST: end its
                # transaction, or the audit event and the indexer a STOW waits for could never write. A read
                # (its session took no lock) keeps its transaction: the view reads on in it.
                db().commit()
            g.dicomweb_detail = {}
            g.dicomweb_user = user.login
            g.dicomweb_scope = user.study_uids if shared else None
            study = kwargs.get("study") or (request.args.get("studyUID") if blueprint is wado_bp else None)
            refusal = None
            if shared and action == "dicomweb.store":
                refusal = json_error(403, "forbidden", "a share link reads its study; it stores nothing")
            elif shared and study is not None and study not in user.study_uids:
                # As for an unknown study: a share link does not learn what else the archive holds.
                refusal = json_error(404, "not_found", "no such study, series or instance")
            if refusal is not None:
                facade().audit_now(action, actor=user.login, actor_kind="share_link", study_uid=None,
                                   detail={"path": request.path, "status": refusal.status_code})
                return refusal
            try:
                response = view(**kwargs)
            except DicomwebError as exc:
                g.dicomweb_detail["status"] = exc.status
                raise
            finally:
                detail = {"path": request.path, **g.dicomweb_detail}
                # A search is audited as a C-FIND is, queued and group-committed off the answer path;
                # what discloses images or their headers is committed before it is answered.
                audit = facade().audit_soon if action == "dicomweb.search" else facade().audit_now
                audit(action, actor=user.login, actor_kind="share_link" if shared else "user", study_uid=study,
                      detail=detail)
            return response

        wrapped.allowed_roles = roles  # read by the route-walking test
        options.setdefault("endpoint", view.__name__)
        blueprint.add_url_rule(rule, view_func=wrapped, **options)
        return wrapped

    return decorate


def base_url() -> str:
    """Where clients reach /dicom-web (Retrieve URLs, BulkDataURIs): DICOMWEB_BASE_URL when set (behind a
    proxy, or for clients that send a Host header without the port), else from the request."""
    return (current_app.config.get("DICOMWEB_BASE_URL") or request.url_root.rstrip("/") + bp.url_prefix).rstrip("/")

