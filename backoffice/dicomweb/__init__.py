"""DICOMweb (PS3.18) under ``/dicom-web``: QIDO-RS searches and WADO-RS retrieval.

Who may call it: bearer tokens (the ``/api/v1`` tokens) and signed-in sessions of the
radiologist and manager roles (:data:`ROLES`), and for reading with a signed-in session the front desk's too
(:data:`READ_ROLES`: the study viewer reads through DICOMweb). Without credentials the answer is 401 (a viewer is
no browser to redirect to a login page). Every request is one audit event, whatever it returns.

A share link opens DICOMweb too, for its one study: the browser session that unlocked the link with
its one-time code (``/share/<token>``, the same two factors as the shared viewer) may read that study,
and the patient's earlier studies when the link was made "with priors" (QIDO-RS answers only it, WADO-RS/WADO-URI of another study are 404 as if unknown, STOW-RS is 403).
Once the link is revoked, expired or locked, the session gets 401. Audited as ``share:<link id>``.
The work is in :mod:`archive_core.dicomweb`, reached through the facade.
"""

from __future__ import annotations

import io
import json
import secrets
from dataclasses import dataclass
from functools import wraps

from flask import Blueprint, Response, current_app, g, jsonify, request, session
from flask_login import current_user
from werkzeug.exceptions import RequestedRangeNotSatisfiable
from werkzeug.wsgi import wrap_file

from archive_core.api import BlobMissing, InvalidQuery, NotFound
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
_CHUNK = 256 * 1024
UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


class DicomwebError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _error(status: int, code: str, message: str):
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    return response


@wado_bp.errorhandler(DicomwebError)
@bp.errorhandler(DicomwebError)
def _dicomweb_error(exc: DicomwebError):
    code = {400: "bad_request", 404: "not_found", 406: "not_acceptable", 411: "length_required", 413: "too_large",
            415: "unsupported_media_type"}
    return _error(exc.status, code.get(exc.status, "error"), exc.message)


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
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Accept, Content-Type"
        response.headers["Access-Control-Expose-Headers"] = "Warning, Content-Type, Content-Length"
        response.headers["Access-Control-Max-Age"] = "600"
    return response


def _caller():
    """The user a request comes from: a bearer token, else the signed-in session, else the share links
    this browser session unlocked (:class:`ShareCaller`); None if none.

    A session's POST (STOW-RS from a page) carries the CSRF token like any form; bearer calls need none.
    """
    from backoffice.auth.services import user_for_token
    from backoffice.radiology.services import usable_share_links

    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return user_for_token(db(), token.strip())
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
                response = _error(401, "unauthorized", "a bearer token or a signed-in session is required")
                response.headers["WWW-Authenticate"] = 'Bearer realm="dicom-web"'
                return response
            shared = isinstance(user, ShareCaller)
            # The front desk reads through its signed-in session (the viewer page), not with a token.
            bearer = request.headers.get("Authorization", "").lower().startswith("bearer ")
            if not shared and user.role not in (ROLES if bearer else roles):
                return _error(403, "forbidden", f"role {user.role} has no DICOMweb access")
            # The request's session (which read the token) holds SQLite's write lock on a POST: end its
            # transaction, or the audit event and the indexer a STOW waits for could never write.
            db().commit()
            g.dicomweb_detail = {}
            g.dicomweb_user = user.login
            g.dicomweb_scope = user.study_uids if shared else None
            study = kwargs.get("study") or (request.args.get("studyUID") if blueprint is wado_bp else None)
            refusal = None
            if shared and action == "dicomweb.store":
                refusal = _error(403, "forbidden", "a share link reads its study; it stores nothing")
            elif shared and study is not None and study not in user.study_uids:
                # As for an unknown study: a share link does not learn what else the archive holds.
                refusal = _error(404, "not_found", "no such study, series or instance")
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
                facade().audit_now(action, actor=user.login, actor_kind="share_link" if shared else "user",
                                   study_uid=study, detail=detail)
            return response

        wrapped.allowed_roles = roles  # read by the route-walking test
        options.setdefault("endpoint", view.__name__)
        blueprint.add_url_rule(rule, view_func=wrapped, **options)
        return wrapped

    return decorate


def _base_url() -> str:
    """Where clients reach /dicom-web (Retrieve URLs, BulkDataURIs): DICOMWEB_BASE_URL when set (behind a
    proxy, or for clients that send a Host header without the port), else from the request."""
    return (current_app.config.get("DICOMWEB_BASE_URL") or request.url_root.rstrip("/") + bp.url_prefix).rstrip("/")


# -- QIDO-RS ----------------------------------------------------------------------------------------


def _search(resource: str, study: str | None = None, series: str | None = None):
    accept = request.headers.get("Accept", "")
    if accept and not any(t in accept for t in (DICOM_JSON, "application/json", "*/*")):
        raise DicomwebError(406, f"QIDO-RS answers {DICOM_JSON}, not {accept}")
    params = list(request.args.items(multi=True))
    scope = g.get("dicomweb_scope")
    if scope is not None and study is None:
        # A share link searches its studies only: matched by UID list (the caller's own
        # StudyInstanceUID, later, narrows it), and every answer checked below.
        params = [("StudyInstanceUID", "\\".join(sorted(scope)))] + params
    try:
        answers, ignored = facade().qido_search(db(), resource, params, base_url=_base_url(),
                                                study_uid=study, series_uid=series)
    except InvalidQuery as exc:
        raise DicomwebError(400, str(exc)) from None
    if scope is not None:
        answers = [a for a in answers if (a.get("0020000D", {}).get("Value") or [None])[0] in scope]
    g.dicomweb_detail.update(query=request.query_string.decode("ascii", "replace")[:500], matches=len(answers))
    response = Response(json.dumps(answers), mimetype=DICOM_JSON)
    if ignored:
        response.headers["Warning"] = (
            f'299 archivage "these match keys or include fields were ignored: {", ".join(ignored)}"')
    return response


@dicomweb_route("/studies", "dicomweb.search", methods=["GET"])
def search_studies():
    return _search("studies")


@dicomweb_route("/series", "dicomweb.search", methods=["GET"])
def search_series():
    return _search("series")


@dicomweb_route("/instances", "dicomweb.search", methods=["GET"])
def search_instances():
    return _search("instances")


@dicomweb_route("/studies/<study>/series", "dicomweb.search", methods=["GET"])
def search_study_series(study: str):
    return _search("series", study)


@dicomweb_route("/studies/<study>/instances", "dicomweb.search", methods=["GET"])
def search_study_instances(study: str):
    return _search("instances", study)


@dicomweb_route("/studies/<study>/series/<series>/instances", "dicomweb.search", methods=["GET"])
def search_series_instances(study: str, series: str):
    return _search("instances", study, series)


# -- STOW-RS ----------------------------------------------------------------------------------------

DEFAULT_MAX_STOW_BYTES = 512 * 1024**2


def _store(study: str | None = None):
    content_type = request.headers.get("Content-Type", "")
    if content_type.split(";")[0].strip().lower() != "multipart/related":
        raise DicomwebError(415, 'STOW-RS takes multipart/related; type="application/dicom", '
                                 f"not {content_type[:80]!r}")
    limit = int(current_app.config.get("DICOMWEB_MAX_STOW_BYTES", DEFAULT_MAX_STOW_BYTES))
    length = request.content_length
    if length is None:
        raise DicomwebError(411, "STOW-RS needs a Content-Length")
    if length > limit:
        raise DicomwebError(413, f"the body is {length} bytes; at most {limit} are taken (DICOMWEB_MAX_STOW_BYTES)")
    if study is not None and not (set(study) <= set("0123456789.") and 0 < len(study) <= 64):
        raise DicomwebError(400, f"not a UID: {study[:80]!r}")
    # Read as it arrives, part by part into files (memory stays flat); Werkzeug's limited stream
    # ends at Content-Length, and a body cut short leaves the multipart without its closing
    # delimiter: a 400 with nothing stored.
    try:
        status, answer, reasons = facade().stow(request.stream, content_type, study_uid=study,
                                                actor=g.dicomweb_user, base_url=_base_url())
    except InvalidQuery as exc:
        raise DicomwebError(400, str(exc)) from None
    g.dicomweb_detail.update(stored=len(answer.get("00081199", {}).get("Value", [])),
                             failed=len(answer.get("00081198", {}).get("Value", [])), status=status)
    response = Response(json.dumps(answer), status=status, mimetype=DICOM_JSON)
    if reasons:
        response.headers["Warning"] = "299 archivage " + json.dumps("; ".join(sorted(set(reasons)))[:500])
    return response


@dicomweb_route("/studies", "dicomweb.store", methods=["POST"], endpoint="store_instances")
def store_instances():
    return _store()


@dicomweb_route("/studies/<study>", "dicomweb.store", methods=["POST"], endpoint="store_study_instances")
def store_study_instances(study: str):
    return _store(study)


# -- WADO-RS ----------------------------------------------------------------------------------------


def _accepted_syntax() -> str | None:
    """The transfer syntax the Accept header asks for: None (or ``*``) means as stored.

    Raises 406 when the header accepts neither ``multipart/related; type="application/dicom"`` nor a
    wildcard.
    """
    accept = request.headers.get("Accept", "").strip()
    if not accept or accept.startswith("*/*"):
        return None
    wanted: list[str | None] = []
    for media_range in accept.split(","):
        parts = [p.strip() for p in media_range.split(";")]
        params = {k.strip().lower(): v.strip().strip('"') for k, _, v in (p.partition("=") for p in parts[1:])}
        kind = parts[0].lower()
        if kind in ("multipart/related", "multipart/*", "*/*") and params.get("type", "application/dicom") in (
                "application/dicom", "application/*", "*/*"):
            ts = params.get("transfer-syntax")
            wanted.append(None if ts in (None, "*") else ts)
    if not wanted:
        raise DicomwebError(406, 'WADO-RS retrieval answers multipart/related; type="application/dicom"')
    return None if None in wanted else wanted[0]


def _stored(study: str, series: str | None = None, instance: str | None = None) -> list:
    try:
        return facade().stored_instances(db(), study, series, instance)
    except InvalidQuery as exc:
        raise DicomwebError(400, str(exc)) from None
    except NotFound:
        raise DicomwebError(404, "no such study, series or instance") from None


def _multipart(found: list, target_ts: str | None):
    """The instances as one multipart/related body, streamed: one file open at a time, read in chunks."""
    archive = facade()
    boundary = secrets.token_hex(16)

    def parts():
        for stored in found:
            ts = target_ts or stored.transfer_syntax_uid
            yield (f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax={ts}\r\n\r\n").encode()
            if ts == stored.transfer_syntax_uid:
                with archive.open_stored(stored) as f:
                    while chunk := f.read(_CHUNK):
                        yield chunk
            else:
                yield archive.converted_instance(stored, ts)
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    return Response(parts(), content_type=f'multipart/related; type="application/dicom"; boundary={boundary}')


def _retrieve(study: str, series: str | None = None, instance: str | None = None):
    target = _accepted_syntax()
    found = _stored(study, series, instance)
    if target is not None and target not in UNCOMPRESSED and any(s.transfer_syntax_uid != target for s in found):
        raise DicomwebError(406, f"cannot convert to {target}: stored syntax, explicit or implicit VR little endian")
    for stored in found:  # a missing file is known before the first byte is sent
        try:
            facade().open_stored(stored).close()
        except BlobMissing:
            raise DicomwebError(404, f"the file of {stored.sop_instance_uid} is missing") from None
    g.dicomweb_detail.update(instances=len(found), transfer_syntax=target or "stored")
    return _multipart(found, target)


@dicomweb_route("/studies/<study>", "dicomweb.retrieve", methods=["GET"])
def retrieve_study(study: str):
    return _retrieve(study)


@dicomweb_route("/studies/<study>/series/<series>", "dicomweb.retrieve", methods=["GET"])
def retrieve_series(study: str, series: str):
    return _retrieve(study, series)


@dicomweb_route("/studies/<study>/series/<series>/instances/<instance>", "dicomweb.retrieve", methods=["GET"])
def retrieve_instance(study: str, series: str, instance: str):
    return _retrieve(study, series, instance)


def _metadata(study: str, series: str | None = None, instance: str | None = None):
    found = _stored(study, series, instance)
    base = _base_url()
    try:
        answers = facade().instance_metadata(found, base_url=base)
    except BlobMissing as exc:
        raise DicomwebError(404, str(exc)) from None
    g.dicomweb_detail.update(instances=len(found))
    return Response(json.dumps(answers), mimetype=DICOM_JSON)


@dicomweb_route("/studies/<study>/series/<series>/instances/<instance>/bulkdata/<tag>", "dicomweb.retrieve",
                methods=["GET"])
def instance_bulkdata(study: str, series: str, instance: str, tag: str):
    """A bulk data value the metadata points to (BulkDataURI), as one application/octet-stream part."""
    found = _stored(study, series, instance)
    try:
        value = facade().bulk_value(found[0], tag)
    except (InvalidQuery, KeyError):
        raise DicomwebError(404, f"no bulk data {tag[:16]!r} in this instance") from None
    boundary = secrets.token_hex(16)
    body = (f"--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n").encode() + value + (
        f"\r\n--{boundary}--\r\n").encode()
    g.dicomweb_detail.update(instances=1, tag=tag[:16])
    return Response(body, content_type=f'multipart/related; type="application/octet-stream"; boundary={boundary}')


def _frame_syntaxes() -> frozenset[str]:
    """The transfer syntaxes frames may go out in, from Accept: ``*`` (any: as stored) when there is no
    Accept, a wildcard, ``transfer-syntax=*`` or a type other than application/octet-stream;
    application/octet-stream without a transfer-syntax is explicit VR little endian (PS3.18 8.7.3.5)."""
    accept = request.headers.get("Accept", "").strip()
    if not accept:
        return frozenset({"*"})
    syntaxes = set()
    for media_range in accept.split(","):
        parts = [p.strip() for p in media_range.split(";")]
        params = {k.strip().lower(): v.strip().strip('"') for k, _, v in (p.partition("=") for p in parts[1:])}
        kind = params.get("type", parts[0]).lower() if parts[0].lower().startswith("multipart/") else parts[0].lower()
        if kind != "application/octet-stream":
            syntaxes.add("*")
        else:
            syntaxes.add(params.get("transfer-syntax", "1.2.840.10008.1.2.1"))
    return frozenset(syntaxes)


@dicomweb_route("/studies/<study>/series/<series>/instances/<instance>/frames/<frame_list>", "dicomweb.retrieve",
                methods=["GET"])
def instance_frames(study: str, series: str, instance: str, frame_list: str):
    """Frames as ``multipart/related; type="application/octet-stream"``, one part per frame."""
    found = _stored(study, series, instance)
    try:
        data, ts = facade().instance_frames(found[0], frame_list, syntaxes=_frame_syntaxes())
    except InvalidQuery as exc:
        raise DicomwebError(400, str(exc)) from None
    except KeyError:
        raise DicomwebError(404, "this instance has no pixel data") from None
    except IndexError as exc:
        raise DicomwebError(404, str(exc)) from None
    except BlobMissing as exc:
        raise DicomwebError(404, str(exc)) from None
    boundary = secrets.token_hex(16)
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/octet-stream; transfer-syntax={ts}\r\n\r\n".encode()
        + frame + b"\r\n" for frame in data) + f"--{boundary}--\r\n".encode()
    g.dicomweb_detail.update(instances=1, frames=len(data))
    return Response(body, content_type=f'multipart/related; type="application/octet-stream"; boundary={boundary}')


def _render_options(default_viewport: int | None = None):
    """(fmt, window, viewport, quality) from Accept and ``window=center,width[,linear]``, ``viewport=w,h``,
    ``quality``; ValueError for a malformed one."""
    accept = request.headers.get("Accept", "")
    fmt = "png" if "image/png" in accept and "image/jpeg" not in accept else "jpeg"
    window = None
    if request.args.get("window"):
        parts = request.args["window"].split(",")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2].strip().lower() != "linear"):
            raise ValueError("window is center,width[,linear]")
        window = (float(parts[0]), float(parts[1]))
    viewport = default_viewport
    if request.args.get("viewport"):
        parts = request.args["viewport"].split(",")
        if len(parts) < 2:
            raise ValueError("viewport is width,height")
        viewport = max(int(parts[0]), int(parts[1]))
        if viewport < 1:
            raise ValueError("viewport is at least 1 pixel")
    quality = int(request.args.get("quality", 90))
    if not 1 <= quality <= 100:
        raise ValueError("quality is 1 to 100")
    return fmt, window, viewport, quality


def _rendered(instance: str, frame: int = 1):
    """A frame as JPEG (default) or PNG; ``window=center,width[,linear]``, ``viewport=w,h``, ``quality``."""
    try:
        fmt, window, viewport, quality = _render_options()
        image = facade().render_frame(db(), instance, frame, window=window, viewport=viewport, quality=quality, fmt=fmt)
    except (ValueError, InvalidQuery) as exc:
        raise DicomwebError(400, str(exc)) from None
    except NotFound:
        raise DicomwebError(404, "no such instance") from None
    g.dicomweb_detail.update(instances=1, rendered=fmt)
    return Response(image, mimetype=f"image/{fmt}")


THUMBNAIL_SIZE = 128  # pixels on the longest side, unless ``viewport`` asks otherwise
_THUMBNAIL_TRIES = 10


def _thumbnail(found: list):
    """PS3.18 thumbnail: the first frame of a representative instance, small. Representative: the middle
    instance of the first series that renders (a CT stack shows its middle slice, not its edge); a series
    without image (an SR, a PDF) is passed over. 404 when nothing renders."""
    try:
        fmt, window, viewport, quality = _render_options(THUMBNAIL_SIZE)
    except ValueError as exc:
        raise DicomwebError(400, str(exc)) from None
    by_series: dict[str, list] = {}
    for stored in found:
        by_series.setdefault(stored.series_uid, []).append(stored)
    candidates = [members[len(members) // 2] for members in by_series.values()][:_THUMBNAIL_TRIES]
    for stored in candidates:
        try:
            image = facade().render_frame(db(), stored.sop_instance_uid, 1, window=window, viewport=viewport,
                                          quality=quality, fmt=fmt)
        except (InvalidQuery, NotFound, BlobMissing):
            continue
        g.dicomweb_detail.update(instances=1, thumbnail=stored.sop_instance_uid)
        return Response(image, mimetype=f"image/{fmt}")
    raise DicomwebError(404, "nothing here renders as an image")


@dicomweb_route("/studies/<study>/thumbnail", "dicomweb.retrieve", methods=["GET"])
def study_thumbnail(study: str):
    return _thumbnail(_stored(study))


@dicomweb_route("/studies/<study>/series/<series>/thumbnail", "dicomweb.retrieve", methods=["GET"])
def series_thumbnail(study: str, series: str):
    return _thumbnail(_stored(study, series))


@dicomweb_route("/studies/<study>/series/<series>/instances/<instance>/thumbnail", "dicomweb.retrieve",
                methods=["GET"])
def instance_thumbnail(study: str, series: str, instance: str):
    return _thumbnail(_stored(study, series, instance))


@dicomweb_route("/studies/<study>/series/<series>/instances/<instance>/rendered", "dicomweb.retrieve",
                methods=["GET"])
def instance_rendered(study: str, series: str, instance: str):
    _stored(study, series, instance)
    return _rendered(instance)


@dicomweb_route("/studies/<study>/series/<series>/instances/<instance>/frames/<int:frame>/rendered",
                "dicomweb.retrieve", methods=["GET"])
def frame_rendered(study: str, series: str, instance: str, frame: int):
    _stored(study, series, instance)
    return _rendered(instance, frame)


@dicomweb_route("/studies/<study>/metadata", "dicomweb.metadata", methods=["GET"])
def study_metadata(study: str):
    return _metadata(study)


@dicomweb_route("/studies/<study>/series/<series>/metadata", "dicomweb.metadata", methods=["GET"])
def series_metadata(study: str, series: str):
    return _metadata(study, series)


@dicomweb_route("/studies/<study>/series/<series>/instances/<instance>/metadata", "dicomweb.metadata",
                methods=["GET"])
def instance_metadata(study: str, series: str, instance: str):
    return _metadata(study, series, instance)


def _ranges(response: Response, length: int) -> Response:
    """*response* answering a ``Range: bytes=...`` request (RFC 9110 14): 206 with that part, or 416.
    A Range in another unit is ignored (the whole object), as RFC 9110 14.2 requires."""
    if not request.headers.get("Range", "bytes=").strip().lower().startswith("bytes="):
        response.accept_ranges = "bytes"
        return response
    try:
        response.make_conditional(request.environ, accept_ranges=True, complete_length=length)
    except RequestedRangeNotSatisfiable:
        response.close()
        answer = _error(416, "range_not_satisfiable", f"the object is {length} bytes long")
        answer.headers["Content-Range"] = f"bytes */{length}"
        return answer
    return response


def _stored_file(stored) -> Response:
    """The stored file as application/dicom, streamed in chunks (memory stays flat whatever its size),
    with byte ranges for a viewer or a download that resumes."""
    f = facade().open_stored(stored)
    try:
        length = f.seek(0, io.SEEK_END)
        f.seek(0)
    except BaseException:
        f.close()
        raise
    response = Response(wrap_file(request.environ, f, _CHUNK), mimetype="application/dicom",
                        direct_passthrough=True)
    response.content_length = length
    return _ranges(response, length)


# -- WADO-URI ---------------------------------------------------------------------------------------


@dicomweb_route("/wado", "dicomweb.retrieve", blueprint=wado_bp, methods=["GET"])
def wado_uri():
    """``requestType=WADO&studyUID&seriesUID&objectUID``; ``contentType`` application/dicom (the stored
    file, or ``transferSyntax`` converted when uncompressed) or image/jpeg (default) / image/png with
    ``windowCenter``/``windowWidth``, ``rows``/``columns``, ``frameNumber``."""
    args = request.args
    if args.get("requestType") != "WADO":
        raise DicomwebError(400, "requestType must be WADO")
    missing = [k for k in ("studyUID", "seriesUID", "objectUID") if not args.get(k)]
    if missing:
        raise DicomwebError(400, f"missing {', '.join(missing)}")
    study, series, instance = args["studyUID"], args["seriesUID"], args["objectUID"]
    content_type = (args.get("contentType") or "image/jpeg").split(",")[0].strip().lower()
    found = _stored(study, series, instance)
    g.dicomweb_detail.update(instances=1, content_type=content_type)
    if content_type == "application/dicom":
        stored = found[0]
        target = args.get("transferSyntax") or stored.transfer_syntax_uid
        if target == stored.transfer_syntax_uid:
            return _stored_file(stored)
        elif target in UNCOMPRESSED:
            data = facade().converted_instance(stored, target)
        else:
            raise DicomwebError(406, f"cannot convert to {target}: stored syntax, explicit or implicit VR "
                                     "little endian")
        response = Response(data, mimetype="application/dicom")
        return _ranges(response, len(data))
    if content_type not in ("image/jpeg", "image/png"):
        raise DicomwebError(406, f"contentType {content_type} is not served: application/dicom, image/jpeg, image/png")
    try:
        window = None
        if args.get("windowCenter") or args.get("windowWidth"):
            window = (float(args["windowCenter"]), float(args["windowWidth"]))
        viewport = max(int(args.get("rows") or 0), int(args.get("columns") or 0)) or None
        frame = int(args.get("frameNumber") or 1)
        image = facade().render_frame(db(), instance, frame, window=window, viewport=viewport, quality=90,
                                      fmt=content_type.split("/")[1])
    except (ValueError, KeyError, InvalidQuery) as exc:
        raise DicomwebError(400, f"bad rendering parameters: {exc}") from None
    return Response(image, mimetype=content_type)
