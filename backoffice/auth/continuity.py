"""Nothing typed is lost when a session ends: the expiry warning, the way back after signing in, kept forms.

- Every signed-in page knows when its server-side session ends (``session_expires_in``); the page's script
  (templates/base.html) shows a banner two minutes before, offers to stay signed in (``/session/keepalive``),
  and at the end keeps the page's unsent fields in the tab (sessionStorage) and opens the login page,
  which brings the person back to the same page, refilled.
- A form posted after the session ended (or with a stale CSRF token) is not lost either: its fields are kept
  in the new session (:func:`keep_posted_form`), and once the person has signed in again the page the form
  came from is shown filled with them, for the person to check and send again. Nothing is ever replayed,
  money or not; passwords are never kept.
"""

from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import urlsplit

from flask import (Blueprint, Flask, current_app, flash, g, has_request_context, jsonify, redirect, request, session,
                   url_for)
from flask_babel import gettext as _
from flask_login import current_user

from backoffice.auth import roles_required
from backoffice.auth.models import ROLES

bp = Blueprint("continuity", __name__)

KEPT_FORM = "kept_form"  # the session key of a form posted too late
MAX_FIELD_CHARS = 50_000  # a long report fits; a pasted book does not fill the session row
MAX_FORM_CHARS = 200_000
NEVER_KEPT = ("csrf_token", "password", "new_password", "password_confirm", "current_password")
# Posts that are not typed work: after expiry they simply lead to the login page.
NOT_KEPT_ENDPOINTS = ("auth.login", "auth.logout", "i18n.set_language", "continuity.keepalive")


def safe_next(target: str | None) -> str | None:
    """*target* if it is a path of this site (never another host, never ``//host``), else None."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    return target


def _referrer_path() -> str | None:
    back = request.referrer
    if not back or not back.startswith(request.host_url):
        return None
    parts = urlsplit(back)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _kept_fields() -> list[list[str]]:
    fields, total = [], 0
    for name, value in request.form.items(multi=True):
        if name in NEVER_KEPT or "password" in name:
            continue
        value = value[:MAX_FIELD_CHARS]
        total += len(name) + len(value)
        if total > MAX_FORM_CHARS:
            break
        fields.append([name, value])
    return fields


def keep_posted_form(reason: str):
    """Answer a form that arrived without a valid session or token, keeping what it carried.

    Signed out (the session expired): the fields wait in the new session; the login page leads back to the
    page the form came from. Still signed in (a stale token): a page says so, and going back shows the form
    refilled.
    """
    page = _referrer_path()
    if request.endpoint not in NOT_KEPT_ENDPOINTS and request.form and page:
        session[KEPT_FORM] = {"page": urlsplit(page).path, "action": request.path, "fields": _kept_fields(),
                              "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if request.blueprint == "share":  # a referring doctor has no account: the code page again
        flash(_("La page avait expiré : saisissez de nouveau le code."), "error")
        return redirect(request.path)
    if current_user.is_authenticated:
        from backoffice.errors import CSRF_MESSAGE, error_page

        return error_page(400, message=str(CSRF_MESSAGE))
    if request.endpoint == "auth.login":
        from flask import render_template

        from backoffice.auth import LoginForm

        flash(_("La page de connexion avait expiré : saisissez de nouveau votre mot de passe."), "error")
        return render_template("auth/login.html", form=LoginForm()), 400  # the login typed stays filled
    if KEPT_FORM in session:
        flash(_("Votre session a expiré. Reconnectez-vous : ce que vous aviez saisi vous sera présenté de "
                "nouveau, à vérifier avant de valider."), "error")
    else:
        flash(_("Votre session a expiré : reconnectez-vous."), "error")
    return redirect(url_for("auth.login", next=page))


def unauthorized():
    """Flask-Login's answer to a signed-out request: JSON for scripts, else the login page and back."""
    from backoffice.errors import error_page, wants_json

    expired = bool(getattr(session, "expired", False))
    if wants_json() or request.headers.get("X-Requested-With") == "fetch":
        return error_page(401, message=_("Votre session a expiré : reconnectez-vous.") if expired else None)
    if request.method == "POST":
        return keep_posted_form(reason="signed_out")
    if expired:
        flash(_("Votre session a expiré : reconnectez-vous."), "error")
    else:
        flash(_("Connectez-vous pour ouvrir cette page."), "info")
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def expires_in_seconds() -> int | None:
    """Seconds until this browser's session ends, counting the refresh this very response will make."""
    from backoffice.auth.sessions import expiry_after_response

    expires_at = expiry_after_response(current_app, session)
    if expires_at is None:
        return None
    return max(0, int((expires_at - datetime.now(timezone.utc)).total_seconds()))


def kept_form_for_this_page() -> dict | None:
    """The fields of a form posted too late from this page, once the person is signed in again (shown once)."""
    kept = session.get(KEPT_FORM)
    if not kept or not current_user.is_authenticated or request.method != "GET" or kept.get("page") != request.path:
        return None
    session.pop(KEPT_FORM, None)
    return kept


@bp.route("/session/status")
@roles_required(*ROLES)
def status():
    """How long the session has left, without lengthening it (several tabs share one session)."""
    g.session_peek = True
    return jsonify({"signed_in": True, "expires_in": expires_in_seconds()})


@bp.route("/session/keepalive", methods=["POST"])
@roles_required(*ROLES)
def keepalive():
    """"Rester connecté": the session starts a new idle period (CSRF-protected like every post)."""
    session.modified = True
    return jsonify({"signed_in": True, "expires_in": int(current_app.permanent_session_lifetime.total_seconds())})


def init_app(app: Flask) -> None:
    from backoffice.extensions import login_manager

    login_manager.unauthorized_handler(unauthorized)
    app.register_blueprint(bp)

    @app.context_processor
    def _continuity():
        # Documents rendered outside a request (the scheduler's destruction certificates) have no user.
        if not has_request_context() or not current_user or not current_user.is_authenticated:
            return {"session_expires_in": None, "kept_form": None}
        return {"session_expires_in": expires_in_seconds(), "kept_form": kept_form_for_this_page(),
                "session_warn_before": int(app.config.get("SESSION_WARNING_SECONDS", 120))}


__all__ = ["bp", "init_app", "keep_posted_form", "safe_next", "unauthorized"]
