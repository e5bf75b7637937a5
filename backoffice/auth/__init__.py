"""Signing in and out, the role check every page and API route declares, and the admin's user pages."""

from __future__ import annotations

from functools import wraps

from flask import Blueprint, abort, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext as _, lazy_gettext as _l, lazy_pgettext
from flask_login import current_user, login_required, login_user, logout_user
from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired

from archive_core import api
from backoffice.extensions import db, facade

bp = Blueprint("auth", __name__)


def roles_required(*roles: str):
    """Allow only signed-in users with one of *roles* (admins are not implied)."""

    def decorate(view):
        @login_required
        @wraps(view)
        def wrapped(*args, **kwargs):
            if current_user.role not in roles:
                abort(403)
            return view(*args, **kwargs)

        wrapped.allowed_roles = roles  # read by the route-walking test
        return wrapped

    return decorate


class LoginForm(FlaskForm):
    login = StringField(lazy_pgettext("login form", "Identifiant"), validators=[DataRequired()])
    password = PasswordField(_l("Mot de passe"), validators=[DataRequired()])


def _restart_session() -> None:
    """Empty the session under a new id; the language chosen on the login page outlives it, and so does a
    form posted after the previous session expired (shown again once signed in: auth/continuity.py)."""
    from backoffice.auth.continuity import KEPT_FORM
    from backoffice.auth.sessions import regenerate

    kept = {key: session[key] for key in ("lang", KEPT_FORM) if key in session}
    session.clear()
    regenerate(session)
    session.update(kept)


@bp.route("/login", methods=["GET", "POST"])
def login():
    from backoffice.auth.services import LoginRefused, authenticate

    from backoffice.auth.continuity import safe_next

    form = LoginForm()
    if request.method == "GET" and request.args.get("expired"):  # the page's own timer brought the person here
        flash(_("Votre session a expiré : reconnectez-vous. Ce que vous aviez saisi vous sera présenté de "
                "nouveau, à vérifier avant de valider."), "error")
    if form.validate_on_submit():
        try:
            user = authenticate(db(), form.login.data, form.password.data, address=request.remote_addr or "")
        except LoginRefused as exc:
            facade().audit(db(), "login.failed", actor=form.login.data[:64], detail={"ip": request.remote_addr})
            db().commit()  # a refused sign-in is not committed by the request: the failure count must persist
            # One message whatever happened (unknown login, wrong password, disabled, backoff): it never
            # tells whether the login exists.
            flash(_("Identifiant ou mot de passe incorrect. Après plusieurs essais, patientez quelques "
                    "instants avant de réessayer."), "error")
            response = render_template("auth/login.html", form=form), 401
            if exc.retry_after_s:
                return response[0], 429, {"Retry-After": str(exc.retry_after_s)}
            return response
        _restart_session()
        login_user(user)
        session.permanent = True
        facade().audit(db(), "login", actor=user.login, detail={"ip": request.remote_addr})
        # Back where the session ended (a timed-out page); otherwise the admin's work is the users page,
        # everyone else's the home page.
        home = url_for("auth.users" if user.role == "admin" else "home.index")
        return redirect(safe_next(request.args.get("next")) or home)
    return render_template("auth/login.html", form=form)


@bp.route("/logout", methods=["POST"])
@login_required
def logout():
    """Any signed-in user; the session's row is deleted, so a copy of the cookie is worth nothing."""
    facade().audit(db(), "logout", actor=current_user.login)
    logout_user()
    _restart_session()
    return redirect(url_for("auth.login"))


logout.allowed_roles = ("front_desk", "radiologist", "manager", "admin")

from backoffice.auth import admin  # noqa: E402,F401  (the admin's user pages, on this blueprint)


@bp.app_template_global("role_label")
def role_label(role: str) -> str:
    """A role as people say it ("accueil", not ``front_desk``): the one table is admin.ROLE_LABELS."""
    return str(admin.ROLE_LABELS.get(role, role))

__all__ = ["bp", "roles_required", "api"]
