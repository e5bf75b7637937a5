"""Users, passwords, sign-in throttling, API tokens and sessions; callers own the transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import bindparam, delete, select
from sqlalchemy.orm import Session

from backoffice.auth.models import ROLES, ApiToken, LoginThrottle, User, WebSession, hash_token, new_token

_hasher = PasswordHasher()
MIN_PASSWORD_LENGTH = 10
# Backoff, per key: (failures allowed before waiting, longest wait). Past the free failures, each failure
# doubles the wait (1 s, 2 s, 4 s ...). The login-from-address key is strict, so guessing one account from
# one place is slow; the account-wide key is lenient and short, so nobody elsewhere can lock a user out.
THROTTLE = {
    "pair": (3, timedelta(minutes=15)),
    "address": (10, timedelta(minutes=5)),
    "login": (20, timedelta(seconds=60)),
}
FORGET_AFTER = timedelta(hours=1)  # failures older than this no longer count


class AuthError(Exception):
    """Bad credentials or an invalid user definition."""


class LoginRefused(AuthError):
    """Sign-in refused: wrong login, wrong password, disabled account or too many recent failures.

    Deliberately one kind of error: the answer never tells whether the login exists.
    """

    def __init__(self, retry_after_s: int = 0) -> None:
        super().__init__("login refused")
        self.retry_after_s = retry_after_s


_dummy_hash: str | None = None


def _dummy() -> str:
    """A hash with the same parameters as real ones: unknown logins cost one verification too."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = _hasher.hash("not a password: timing only")
    return _dummy_hash


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AuthError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")


def get_user(session: Session, login: str) -> User:
    user = session.scalar(select(User).where(User.login == login.strip()))
    if user is None:
        raise AuthError(f"no user {login}")
    return user


def check_identity(full_name: str | None, rpps: str | None) -> tuple[str | None, str | None]:
    """Clean a full name and an RPPS number as typed; empty means none. Raises AuthError when wrong.

    RPPS: 11 digits (spaces between groups allowed when typed). Only the format is checked: the check-digit
    rule could not be confirmed from a published source here, so no key is verified.
    """
    name = " ".join((full_name or "").split()) or None
    if name is not None and len(name) > 200:
        raise AuthError("full name must be at most 200 characters")
    number = "".join((rpps or "").split()) or None
    if number is not None and not (len(number) == 11 and number.isascii() and number.isdigit()):
        raise AuthError("RPPS must be 11 digits")
    return name, number


def set_identity(session: Session, login: str, *, full_name: str | None, rpps: str | None) -> User:
    """Set the name and RPPS printed on the reports this user signs from now on (signed ones keep theirs)."""
    user = get_user(session, login)
    user.full_name, user.rpps = check_identity(full_name, rpps)
    session.flush()
    return user


def create_user(session: Session, login: str, *, role: str, password: str, full_name: str | None = None,
                rpps: str | None = None) -> User:
    login = login.strip()
    full_name, rpps = check_identity(full_name, rpps)
    if role not in ROLES:
        raise AuthError(f"role must be one of {', '.join(ROLES)}")
    if not login or len(login) > 64:
        raise AuthError("login must be 1 to 64 characters")
    _check_password(password)
    if session.scalar(select(User).where(User.login == login)):
        raise AuthError(f"user {login} exists")
    user = User(login=login, role=role, password_hash=_hasher.hash(password), full_name=full_name, rpps=rpps)
    session.add(user)
    session.flush()
    return user


def end_sessions(session: Session, user: User) -> int:
    """Sign *user* out everywhere: every browser session of theirs ends now."""
    result = session.execute(delete(WebSession).where(WebSession.user_pk == user.id))
    session.flush()
    return result.rowcount or 0


def set_active(session: Session, login: str, active: bool) -> User:
    """Disable (sessions end, tokens stop working) or enable an account."""
    user = get_user(session, login)
    user.active = active
    if not active:
        end_sessions(session, user)
    session.flush()
    return user


def set_password(session: Session, login: str, password: str) -> User:
    """A new password; the user's sessions end (whoever knew the old one is signed out)."""
    _check_password(password)
    user = get_user(session, login)
    user.password_hash = _hasher.hash(password)
    end_sessions(session, user)
    session.flush()
    return user


def set_role(session: Session, login: str, role: str) -> User:
    if role not in ROLES:
        raise AuthError(f"role must be one of {', '.join(ROLES)}")
    user = get_user(session, login)
    user.role = role
    end_sessions(session, user)
    session.flush()
    return user


# -- signing in ------------------------------------------------------------------------------------


def _throttle_keys(login: str, address: str) -> dict[str, str]:
    login = login.strip().lower()[:64]
    return {"pair": f"pair:{address}|{login}", "address": f"address:{address}", "login": f"login:{login}"}


def _wait_until(session: Session, keys: dict[str, str], now: datetime) -> datetime | None:
    rows = session.scalars(select(LoginThrottle).where(LoginThrottle.key.in_(keys.values())))
    waits = [r.blocked_until for r in rows if r.blocked_until is not None]
    latest = max(waits, default=None)
    return latest if latest and latest > now else None


def _count_failure(session: Session, keys: dict[str, str], now: datetime) -> None:
    for kind, key in keys.items():
        free, longest = THROTTLE[kind]
        row = session.get(LoginThrottle, key)
        if row is None:
            row = LoginThrottle(key=key, failures=0, last_failure_at=now)
            session.add(row)
        elif now - row.last_failure_at > FORGET_AFTER:
            row.failures = 0
        row.failures += 1
        row.last_failure_at = now
        over = row.failures - free
        row.blocked_until = now + min(timedelta(seconds=2 ** (over - 1)), longest) if over > 0 else None
    # Rows nobody failed with for a while are forgotten.
    session.execute(delete(LoginThrottle).where(LoginThrottle.last_failure_at < now - FORGET_AFTER))
    session.flush()


def authenticate(session: Session, login: str, password: str, *, address: str = "",
                 now: datetime | None = None) -> User:
    """The user if *password* is right, else :class:`LoginRefused`.

    Every attempt costs one password verification, whether the login exists, is disabled or is waiting out
    a backoff, so neither the answer nor its timing tells whether a login exists. Failures slow down further
    attempts per address, per login and per login-from-address (exponential backoff, no hard lock).
    """
    now = now or datetime.now(timezone.utc)
    keys = _throttle_keys(login, address or "-")
    user = session.scalar(select(User).where(User.login == login.strip()))
    waiting = _wait_until(session, keys, now)
    right = _verify(user.password_hash if user is not None else _dummy(), password)
    if waiting is not None:
        raise LoginRefused(retry_after_s=max(1, int((waiting - now).total_seconds() + 0.999)))
    if user is None or not user.active or not right:
        _count_failure(session, keys, now)
        raise LoginRefused()
    session.execute(delete(LoginThrottle).where(LoginThrottle.key == keys["pair"]))
    user.failed_logins = 0
    user.locked_until = None
    session.flush()
    return user


# -- API tokens ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenInfo:
    id: int
    login: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def create_token(session: Session, login: str, *, lifetime: timedelta | None = None,
                 now: datetime | None = None) -> str:
    """A new bearer token for *login*, valid for *lifetime* (None: until revoked); shown once."""
    user = get_user(session, login)
    now = now or datetime.now(timezone.utc)
    token = new_token()
    session.add(ApiToken(user=user, token_sha256=hash_token(token), created_at=now,
                         expires_at=now + lifetime if lifetime else None))
    session.flush()
    return token


def list_tokens(session: Session, login: str) -> list[TokenInfo]:
    user = get_user(session, login)
    rows = session.scalars(select(ApiToken).where(ApiToken.user_pk == user.id).order_by(ApiToken.id))
    return [TokenInfo(t.id, user.login, t.created_at, t.expires_at, t.revoked_at)
            for t in rows]


def revoke_token(session: Session, token_id: int, *, now: datetime | None = None) -> TokenInfo:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise AuthError(f"no token {token_id}")
    if token.revoked_at is None:
        token.revoked_at = now or datetime.now(timezone.utc)
    session.flush()
    return TokenInfo(token.id, token.user.login, token.created_at, token.expires_at,
                     token.revoked_at)


def user_for_token(session: Session, token: str, *, now: datetime | None = None) -> User | None:
    # One round trip: every API request starts here.
    now = now or datetime.now(timezone.utc)
    row = session.execute(
        select(User, ApiToken.expires_at).join(ApiToken, ApiToken.user_pk == User.id)
        .where(ApiToken.token_sha256 == hash_token(token), ApiToken.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    user, expires_at = row
    if not user.active or (expires_at is not None and expires_at <= now):
        return None
    return user


@dataclass(frozen=True)
class TokenCaller:
    """Who a bearer token speaks for, as DICOMweb needs it (the audit's actor, the role check)."""

    login: str
    role: str


# Built once (its compiled form is cached on it) and run as a Core statement: DICOMweb's single-match searches
# answer in a few milliseconds, and loading a User entity through the ORM was a tenth of that.
_TOKEN_CALLER = (
    select(User.login, User.role, User.active, ApiToken.expires_at)
    .join_from(ApiToken, User, ApiToken.user_pk == User.id)
    .where(ApiToken.token_sha256 == bindparam("sha"), ApiToken.revoked_at.is_(None))
)


def token_caller(session: Session, token: str, *, now: datetime | None = None) -> TokenCaller | None:
    """:func:`user_for_token`'s checks (unknown, revoked or expired token, disabled account: None), read on the
    session's connection in the request's transaction: nothing is kept between requests, so a revoked token, a
    disabled account or a changed role applies to the very next request."""
    row = session.connection().execute(_TOKEN_CALLER, {"sha": hash_token(token)}).first()
    if row is None:
        return None
    login, role, active, expires_at = row  # unpacked: a Row's attribute access costs more than the query's rest
    if not active or (expires_at is not None and expires_at <= (now or datetime.now(timezone.utc))):
        return None
    return TokenCaller(login, role)
