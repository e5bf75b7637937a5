"""The admin's pages: users (create, disable, enable, new password, role) and their API tokens."""

from __future__ import annotations

from datetime import datetime, timezone

from flask import abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _, lazy_gettext as _l
from flask_login import current_user
from sqlalchemy import func, select

from backoffice.auth import bp, roles_required
from backoffice.auth.models import ROLES, User, WebSession
from backoffice.auth import services as A
from backoffice.extensions import db, facade

ROLE_LABELS = {"front_desk": _l("accueil"), "radiologist": _l("radiologue"), "manager": _l("gestionnaire"),
               "admin": _l("administrateur")}


def _user(user_id: int) -> User:
    user = db().get(User, user_id)
    if user is None:
        abort(404)
    return user


def _audit(action: str, user: User, **detail) -> None:
    facade().audit(db(), action, actor=current_user.login, detail={"login": user.login, **detail})


def _back(message: str, category: str):
    """*message* shown on the users' page, where every admin action returns."""
    flash(message, category)
    return redirect(url_for("auth.users"))


def _change(user: User, change, action: str, done: str, refused: str = "", **detail):
    """One admin action on *user*: *change* runs; refused by the rules (AuthError), the page says
    *refused* and nothing is audited; else *action* is audited (with *detail*) and the page says *done*."""
    try:
        change()
    except A.AuthError:
        return _back(refused, "error")
    _audit(action, user, **detail)
    return _back(done, "info")


@bp.route("/admin/users")
@roles_required("admin")
def users():
    now = datetime.now(timezone.utc)
    sessions = dict(db().execute(select(WebSession.user_pk, func.count()).where(WebSession.expires_at > now)
                                 .group_by(WebSession.user_pk)).all())
    rows = list(db().scalars(select(User).order_by(User.login)))
    tokens = {u.id: A.list_tokens(db(), u.login) for u in rows}
    return render_template("auth/users.html", users=rows, sessions=sessions, tokens=tokens, roles=ROLES,
                           role_labels={r: str(label) for r, label in ROLE_LABELS.items()}, now=now)


def _form_password() -> str:
    return request.form.get("password") or ""


@bp.route("/admin/users", methods=["POST"])
@roles_required("admin")
def create_user():
    login = (request.form.get("login") or "").strip()
    role = request.form.get("role") or ""
    try:
        A.check_identity(request.form.get("full_name"), request.form.get("rpps"))
    except A.AuthError:
        return _back(_("Utilisateur non créé : le numéro RPPS compte 11 chiffres, le nom 200 caractères au plus."),
                     "error")
    try:
        user = A.create_user(db(), login, role=role, password=_form_password(),
                             full_name=request.form.get("full_name"), rpps=request.form.get("rpps"))
    except A.AuthError:
        return _back(_("Utilisateur non créé : identifiant déjà pris ou vide, rôle inconnu, ou mot de passe de "
                       "moins de %(n)s caractères.", n=A.MIN_PASSWORD_LENGTH), "error")
    _audit("user.created", user, role=role)
    return _back(_("Utilisateur %(login)s créé.", login=user.login), "info")


@bp.route("/admin/users/<int:user_id>/identity", methods=["POST"])
@roles_required("admin")
def set_identity(user_id: int):
    """Name and RPPS printed on the reports this user signs from now on; reports already signed keep theirs."""
    user = _user(user_id)
    return _change(user, lambda: A.set_identity(db(), user.login, full_name=request.form.get("full_name"),
                                                rpps=request.form.get("rpps")),
                   "user.identity_changed", _("Identité de %(login)s enregistrée.", login=user.login),
                   _("Identité non changée : le numéro RPPS compte 11 chiffres, le nom 200 caractères au plus."))


@bp.route("/admin/users/<int:user_id>/disable", methods=["POST"])
@roles_required("admin")
def disable_user(user_id: int):
    user = _user(user_id)
    if user.id == current_user.id:
        return _back(_("Vous ne pouvez pas désactiver votre propre compte."), "error")
    return _change(user, lambda: A.set_active(db(), user.login, False), "user.disabled",
                   _("%(login)s est désactivé : ses sessions et ses jetons ne fonctionnent plus.", login=user.login))


@bp.route("/admin/users/<int:user_id>/enable", methods=["POST"])
@roles_required("admin")
def enable_user(user_id: int):
    user = _user(user_id)
    return _change(user, lambda: A.set_active(db(), user.login, True), "user.enabled",
                   _("%(login)s est réactivé.", login=user.login))


@bp.route("/admin/users/<int:user_id>/password", methods=["POST"])
@roles_required("admin")
def set_password(user_id: int):
    user = _user(user_id)
    return _change(user, lambda: A.set_password(db(), user.login, _form_password()), "user.password_changed",
                   _("Mot de passe de %(login)s changé ; ses sessions sont fermées.", login=user.login),
                   _("Mot de passe refusé : au moins %(n)s caractères.", n=A.MIN_PASSWORD_LENGTH))


@bp.route("/admin/users/<int:user_id>/role", methods=["POST"])
@roles_required("admin")
def set_role(user_id: int):
    user = _user(user_id)
    role = request.form.get("role") or ""
    if role not in ROLES or user.id == current_user.id:
        return _back(_("Rôle non changé."), "error")
    return _change(user, lambda: A.set_role(db(), user.login, role), "user.role_changed",
                   _("%(login)s a maintenant le rôle %(role)s.", login=user.login, role=str(ROLE_LABELS[role])),
                   role=role)


@bp.route("/admin/tokens/<int:token_id>/revoke", methods=["POST"])
@roles_required("admin")
def revoke_token(token_id: int):
    try:
        info = A.revoke_token(db(), token_id)
    except A.AuthError:
        abort(404)
    facade().audit(db(), "token.revoked", actor=current_user.login, detail={"login": info.login, "token_id": info.id})
    return _back(_("Jeton n° %(id)s révoqué.", id=info.id), "info")
