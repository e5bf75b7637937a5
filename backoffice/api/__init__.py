"""The JSON API under ``/api/v1``: bearer tokens, role checks, JSON errors and the OpenAPI description.

Each area adds its routes in a module of its own (``backoffice/api/<area>.py``) with
:func:`api_route`, which registers the route, the roles it allows and its OpenAPI operation.
"""

from __future__ import annotations

from functools import wraps
from typing import Any, Callable
from urllib.parse import urlencode

from flask import Blueprint, g, jsonify, request
from werkzeug.exceptions import HTTPException

from backoffice.extensions import csrf, db

bp = Blueprint("api", __name__, url_prefix="/api/v1")
# Bearer tokens are not sent by browsers on their own: no CSRF risk, so no CSRF token either.
csrf.exempt(bp)

OPENAPI_PATHS: dict[str, dict[str, Any]] = {}
ANY_SIGNED_IN = ("front_desk", "radiologist", "manager", "admin")
PAGE_SIZE = 100  # DESIGN.md: lists return up to 100 items, with a ``next`` link when there are more
PAGE_PARAMETERS = [{"name": "after", "in": "query", "schema": {"type": "integer"}},
                   {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": PAGE_SIZE}}]


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with *status*."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str):
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    return response


def current_api_user():
    return g.api_user


def _authenticate():
    from backoffice.auth.services import user_for_token

    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return user_for_token(db(), token.strip())


def api_route(
    rule: str,
    *,
    methods: tuple[str, ...] = ("GET",),
    roles: tuple[str, ...],
    summary: str,
    request_body: dict | None = None,
    responses: dict[str, dict] | None = None,
    parameters: list[dict] | None = None,
) -> Callable:
    """Register an API route that only bearer-token users with one of *roles* may call."""

    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def wrapped(*args, **kwargs):
            user = _authenticate()
            if user is None:
                return error_response(401, "unauthorized", "a valid bearer token is required")
            if user.role not in roles:
                return error_response(403, "forbidden", f"role {user.role} may not call this")
            g.api_user = user
            return view(*args, **kwargs)

        wrapped.allowed_roles = roles  # read by the route-walking test
        for method in methods:
            path = rule.replace("<", "{").replace(">", "}")
            path = "/api/v1" + _strip_converters(path)
            operation: dict[str, Any] = {
                "summary": summary,
                "x-roles": list(roles),
                "security": [{"bearer": []}],
                "responses": responses or {"200": {"description": "OK"}},
            }
            params = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in _path_params(path)
            ] + (parameters or [])
            if params:
                operation["parameters"] = params
            if request_body is not None:
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": request_body}},
                }
            OPENAPI_PATHS.setdefault(path, {})[method.lower()] = operation
        bp.add_url_rule(rule, view.__name__, wrapped, methods=list(methods))
        return wrapped

    return decorate


def _strip_converters(path: str) -> str:
    import re

    return re.sub(r"\{[a-z_]+:([a-z_]+)\}", r"{\1}", path)


def _path_params(path: str) -> list[str]:
    import re

    return re.findall(r"\{([a-z_]+)\}", path)


def json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    return body


def page_args() -> tuple[int, int]:
    """``(after, limit)`` of a keyset-paginated list: the last id already seen and the page size (1..100)."""
    try:
        from backoffice.errors import db_int

        after = db_int(request.args.get("after", 0))
        limit = min(max(db_int(request.args.get("limit", PAGE_SIZE)), 1), PAGE_SIZE)
    except ValueError as exc:
        raise ApiError(400, "bad_request", "after and limit must be integers") from exc
    return after, limit


def page(items: list, last_id: int | None, limit: int, more: bool) -> dict:
    """A list answer: ``{"items": [...]}`` plus ``next`` (same query, ``after=last_id``) when *more*.

    Callers fetch ``limit + 1`` rows to know whether there are more, and pass the id of the last
    row they return.
    """
    body: dict[str, Any] = {"items": items}
    if more and last_id is not None:
        args = {k: v for k, v in request.args.items() if k != "after"}
        args["after"] = str(last_id)
        body["next"] = f"{request.base_url}?{urlencode(args)}"
    return body


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    return error_response(exc.status, exc.code, exc.message)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    return error_response(exc.code or 500, (exc.name or "error").lower().replace(" ", "_"), exc.description or "")


@api_route("/openapi.json", roles=ANY_SIGNED_IN, summary="This description")
def openapi():
    return jsonify(
        {
            "openapi": "3.1.0",
            "info": {"title": "Archivage API", "version": "1"},
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "paths": dict(sorted(OPENAPI_PATHS.items())),
        }
    )


def register_api(app) -> None:
    """Import every area's API module (they add routes to ``bp``), then register the blueprint."""
    import importlib
    import pkgutil

    import backoffice.api as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"backoffice.api.{module.name}")
    app.register_blueprint(bp)

    # Unknown /api/ paths answer JSON from backoffice/errors.py's handler, as every other error does.
