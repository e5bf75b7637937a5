"""``flask --app wsgi users …`` and ``tokens …``: back-office accounts and API bearer tokens.

Each command writes its audit event in the same transaction as its change. The other commands of the
public contract are registered by :mod:`backoffice.cli`.
"""

from __future__ import annotations

import sys

import click
from flask import current_app
from flask.cli import AppGroup

from backoffice.extensions import facade


@click.group("users", cls=AppGroup, help="Back-office users.")
def users_cli() -> None: ...


@users_cli.command("create")
@click.argument("login")
@click.option("--role", required=True, type=click.Choice(["front_desk", "radiologist", "manager", "admin"]))
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--full-name", default=None, help="First name and NAME, printed on the reports the user signs.")
@click.option("--rpps", default=None, help="RPPS number (11 digits) of a radiologist, printed on signed reports.")
def users_create(login: str, role: str, password_stdin: bool, full_name: str | None, rpps: str | None) -> None:
    """Create a user; without --password-stdin a password is generated and printed once."""
    import secrets

    from backoffice.auth.services import AuthError, create_user

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = secrets.token_urlsafe(12)
    with facade().new_session(write=True) as s:
        try:
            create_user(s, login, role=role, password=password, full_name=full_name, rpps=rpps)
        except AuthError as exc:
            raise click.ClickException(str(exc)) from exc
        facade().audit(s, "user.created", actor="cli", actor_kind="system", detail={"login": login, "role": role})
        s.commit()
    click.echo(f"user {login} created with role {role}")
    if not password_stdin:
        click.echo(f"password (shown once): {password}")


@users_cli.command("bootstrap")
def users_bootstrap() -> None:
    """Create the first admin (login ``admin``) when there is no user yet; its password is printed once."""
    import secrets

    from sqlalchemy import func, select

    from backoffice.auth.models import User
    from backoffice.auth.services import create_user

    with facade().new_session(write=True) as s:
        if s.scalar(select(func.count(User.id))):
            click.echo("users exist; no admin created")
            return
        password = secrets.token_urlsafe(12)
        create_user(s, "admin", role="admin", password=password)
        facade().audit(s, "user.created", actor="cli", actor_kind="system", detail={"login": "admin", "role": "admin"})
        s.commit()
    click.echo(f"first admin created: login admin, password (shown once): {password}")


@users_cli.command("disable")
@click.argument("login")
def users_disable(login: str) -> None:
    """Disable LOGIN: its sessions end and its tokens stop working at once."""
    _set_active(login, False)


@users_cli.command("enable")
@click.argument("login")
def users_enable(login: str) -> None:
    """Enable LOGIN again (its old sessions stay ended; revoked tokens stay revoked)."""
    _set_active(login, True)


def _set_active(login: str, active: bool) -> None:
    from backoffice.auth.services import AuthError, set_active

    with facade().new_session(write=True) as s:
        try:
            set_active(s, login, active)
        except AuthError as exc:
            raise click.ClickException(str(exc)) from exc
        facade().audit(s, "user.enabled" if active else "user.disabled", actor="cli", actor_kind="system",
                        detail={"login": login})
        s.commit()
    click.echo(f"user {login} {'enabled' if active else 'disabled'}")


@users_cli.command("passwd")
@click.argument("login")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def users_passwd(login: str, password_stdin: bool) -> None:
    """Set LOGIN's password (without --password-stdin one is generated and printed once); its sessions end."""
    import secrets

    from backoffice.auth.services import AuthError, set_password

    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else secrets.token_urlsafe(12)
    with facade().new_session(write=True) as s:
        try:
            set_password(s, login, password)
        except AuthError as exc:
            raise click.ClickException(str(exc)) from exc
        facade().audit(s, "user.password_changed", actor="cli", actor_kind="system", detail={"login": login})
        s.commit()
    click.echo(f"password of {login} changed; its sessions are closed")
    if not password_stdin:
        click.echo(f"password (shown once): {password}")


@click.group("tokens", cls=AppGroup, help="API bearer tokens.")
def tokens_cli() -> None: ...


@tokens_cli.command("create")
@click.argument("login")
@click.option("--days", type=click.IntRange(min=0), default=None,
              help="Lifetime in days (default: API_TOKEN_LIFETIME_DAYS; 0: until revoked).")
def tokens_create(login: str, days: int | None) -> None:
    """Create a bearer token for LOGIN; the token is printed on the last line, once."""
    from datetime import timedelta

    from backoffice.auth.services import AuthError, create_token

    if days is None:
        days = int(current_app.config.get("API_TOKEN_LIFETIME_DAYS", 90))
    with facade().new_session(write=True) as s:
        try:
            token = create_token(s, login, lifetime=timedelta(days=days) if days else None)
        except AuthError as exc:
            raise click.ClickException(str(exc)) from exc
        facade().audit(s, "token.created", actor="cli", actor_kind="system", detail={"login": login, "days": days})
        s.commit()
    click.echo(f"token for {login}, {'valid ' + str(days) + ' days' if days else 'valid until revoked'}:")
    click.echo(token)


@tokens_cli.command("list")
@click.argument("login")
def tokens_list(login: str) -> None:
    """LOGIN's tokens: id, state (active|expired|revoked), created, expires (never the token itself)."""
    from datetime import datetime, timezone

    from backoffice.auth.services import AuthError, list_tokens

    now = datetime.now(timezone.utc)
    with facade().new_session() as s:
        try:
            tokens = list_tokens(s, login)
        except AuthError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo("id\tstate\tcreated\texpires")
    for t in tokens:
        expires = t.expires_at.isoformat(timespec="seconds") if t.expires_at else "never"
        click.echo(f"{t.id}\t{t.state(now)}\t{t.created_at.isoformat(timespec='seconds')}\t{expires}")


@tokens_cli.command("revoke")
@click.argument("token_id", type=int)
def tokens_revoke(token_id: int) -> None:
    """Revoke token TOKEN_ID (see tokens list): it stops working at once."""
    from backoffice.auth.services import AuthError, revoke_token

    with facade().new_session(write=True) as s:
        try:
            info = revoke_token(s, token_id)
        except AuthError as exc:
            raise click.ClickException(str(exc)) from exc
        facade().audit(s, "token.revoked", actor="cli", actor_kind="system",
                        detail={"login": info.login, "token_id": token_id})
        s.commit()
    click.echo(f"token {token_id} of {info.login} revoked")
