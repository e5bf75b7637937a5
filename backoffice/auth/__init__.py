"""Signing in and out, and the role check every page and API route declares."""

from __future__ import annotations

from functools import wraps

from flask import Blueprint, abort, flash, redirect, render_template, request, session, url_for
from flask_babel import lazy_gettext as _l, lazy_pgettext
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


@bp.route("/login", methods=["GET", "POST"])
def login():
    from backoffice.auth.services import AuthError, authenticate

    form = LoginForm()
    if form.validate_on_submit():
        try:
            user = authenticate(db(), form.login.data, form.password.data)
        except AuthError as exc:
            facade().audit(db(), "login.failed", actor=form.login.data[:64], detail={"ip": request.remote_addr})
            db().commit()  # a 401 is not committed by the request: the failure count must persist
            flash(str(exc), "error")
            return render_template("auth/login.html", form=form), 401
        lang = session.get("lang")  # the language chosen on the login page outlives the session reset
        session.clear()
        if lang:
            session["lang"] = lang
        login_user(user)
        session.permanent = True
        facade().audit(db(), "login", actor=user.login, detail={"ip": request.remote_addr})
        return redirect(url_for("home.index"))
    return render_template("auth/login.html", form=form)


@bp.route("/logout", methods=["POST"])
@login_required
def logout():
    """Any signed-in user."""
    facade().audit(db(), "logout", actor=current_user.login)
    logout_user()
    lang = session.get("lang")
    session.clear()
    if lang:
        session["lang"] = lang
    return redirect(url_for("auth.login"))


logout.allowed_roles = ("front_desk", "radiologist", "manager", "admin")


__all__ = ["bp", "roles_required", "api"]
