"""Users, roles and API tokens of the back-office."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column, relationship

from archive_core.api import Base, UtcDateTime, utcnow
from backoffice.extensions import db, login_manager

ROLES = ("front_desk", "radiologist", "manager", "admin")


class User(Base):
    __tablename__ = "user_account"

    id: Mapped[int] = mapped_column(primary_key=True)
    login: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    # Identity printed on signed reports (migration 1030): "Prénom NOM" and the 11-digit RPPS number.
    full_name: Mapped[str | None] = mapped_column(String(200))
    rpps: Mapped[str | None] = mapped_column(String(11))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    tokens: Mapped[list["ApiToken"]] = relationship(back_populates="user")

    # Flask-Login protocol
    @property
    def is_active(self) -> bool:
        return self.active

    is_authenticated = True
    is_anonymous = False

    def get_id(self) -> str:
        return str(self.id)


class ApiToken(Base):
    """A bearer token; only its SHA-256 is stored, the token itself is shown once."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_pk: Mapped[int] = mapped_column(ForeignKey("user_account.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # None: a token created before expiry existed (migration 1000) or with lifetime 0 (never expires).
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    user: Mapped[User] = relationship(back_populates="tokens")


class WebSession(Base):
    """A signed-in browser: the cookie holds a random id, the row holds the session (the web role is stateless).

    Only the SHA-256 of the cookie is stored; deleting the row ends the session at once (logout, a disabled
    account, a new password).
    """

    __tablename__ = "web_session"

    sid_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_pk: Mapped[int | None] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), index=True)
    data: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)


class LoginThrottle(Base):
    """Recent failed sign-ins per key (an address, a login, a login from an address): the backoff's memory."""

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime] = mapped_column(UtcDateTime())
    blocked_until: Mapped[datetime | None] = mapped_column(UtcDateTime())


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


@login_manager.user_loader
def _load_user(user_id: str) -> User | None:
    return db().scalar(select(User).where(User.id == int(user_id), User.active.is_(True)))
