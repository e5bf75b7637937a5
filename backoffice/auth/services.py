"""Creating users and tokens, checking passwords; callers own the transaction."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask_babel import gettext as _
from sqlalchemy import select
from sqlalchemy.orm import Session

from backoffice.auth.models import ROLES, ApiToken, User, hash_token, new_token

_hasher = PasswordHasher()
MAX_FAILED_LOGINS = 5
LOCKOUT = timedelta(minutes=15)
MIN_PASSWORD_LENGTH = 10


class AuthError(Exception):
    """Bad credentials, a locked account or an invalid user definition."""


def create_user(session: Session, login: str, *, role: str, password: str) -> User:
    login = login.strip()
    if role not in ROLES:
        raise AuthError(f"role must be one of {', '.join(ROLES)}")
    if not login or len(login) > 64:
        raise AuthError("login must be 1 to 64 characters")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AuthError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if session.scalar(select(User).where(User.login == login)):
        raise AuthError(f"user {login} exists")
    user = User(login=login, role=role, password_hash=_hasher.hash(password))
    session.add(user)
    session.flush()
    return user


def authenticate(session: Session, login: str, password: str, *, now: datetime | None = None) -> User:
    """The user if *password* is right; failures count toward a temporary lock of the account."""
    now = now or datetime.now(timezone.utc)
    user = session.scalar(select(User).where(User.login == login.strip()))
    if user is None or not user.active:
        _hasher.hash(password)  # same cost whether or not the login exists
        raise AuthError(_("identifiant ou mot de passe incorrect"))
    locked_until = user.locked_until
    if locked_until is not None and locked_until.tzinfo is None:
        locked_until = locked_until.replace(tzinfo=timezone.utc)
    if locked_until and locked_until > now:
        raise AuthError(_("compte verrouillé temporairement après trop d'échecs"))
    try:
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        user.failed_logins += 1
        if user.failed_logins >= MAX_FAILED_LOGINS:
            user.locked_until = now + LOCKOUT
            user.failed_logins = 0
        session.flush()
        raise AuthError(_("identifiant ou mot de passe incorrect"))
    user.failed_logins = 0
    user.locked_until = None
    session.flush()
    return user


def create_token(session: Session, login: str) -> str:
    user = session.scalar(select(User).where(User.login == login.strip()))
    if user is None:
        raise AuthError(f"no user {login}")
    token = new_token()
    session.add(ApiToken(user=user, token_sha256=hash_token(token)))
    session.flush()
    return token


def user_for_token(session: Session, token: str) -> User | None:
    # One round trip: every API request starts here.
    user = session.scalar(
        select(User).join(ApiToken, ApiToken.user_pk == User.id)
        .where(ApiToken.token_sha256 == hash_token(token), ApiToken.revoked_at.is_(None))
    )
    if user is None or not user.active:
        return None
    return user
