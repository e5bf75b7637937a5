"""The ``flask --app wsgi`` commands of the public contract: db, users, tokens, peers, archive, roles."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

log = logging.getLogger(__name__)


def _facade():
    from backoffice.extensions import facade

    return facade()


def _archive():
    return _facade().archive


def register_cli(app: Flask) -> None:
    for group in (db_cli, users_cli, tokens_cli, peers_cli, archive_cli, audit_cli):
        app.cli.add_command(group)
    app.cli.add_command(web_command)
    app.cli.add_command(serve_command)
    app.cli.add_command(scheduler_cli)
    from backoffice.retention.cli import retention_cli

    app.cli.add_command(retention_cli)


# -- db ---------------------------------------------------------------------------------------


@click.group("db", cls=AppGroup, help="Database schema.")
def db_cli() -> None: ...


@db_cli.command("upgrade", help="Migrate the database to the newest schema.")
def db_upgrade() -> None:
    from backoffice.migrate import upgrade

    upgrade(_archive().settings.database_url)
    click.echo("database is up to date")


# -- users and tokens -------------------------------------------------------------------------


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
    with _facade().new_session(write=True) as s:
        try:
            create_user(s, login, role=role, password=password, full_name=full_name, rpps=rpps)
        except AuthError as exc:
            raise click.ClickException(str(exc)) from exc
        _facade().audit(s, "user.created", actor="cli", actor_kind="system", detail={"login": login, "role": role})
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

    with _facade().new_session(write=True) as s:
        if s.scalar(select(func.count(User.id))):
            click.echo("users exist; no admin created")
            return
        password = secrets.token_urlsafe(12)
        create_user(s, "admin", role="admin", password=password)
        _facade().audit(s, "user.created", actor="cli", actor_kind="system", detail={"login": "admin", "role": "admin"})
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

    with _facade().new_session(write=True) as s:
        try:
            set_active(s, login, active)
        except AuthError as exc:
            raise click.ClickException(str(exc)) from exc
        _facade().audit(s, "user.enabled" if active else "user.disabled", actor="cli", actor_kind="system",
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
    with _facade().new_session(write=True) as s:
        try:
            set_password(s, login, password)
        except AuthError as exc:
            raise click.ClickException(str(exc)) from exc
        _facade().audit(s, "user.password_changed", actor="cli", actor_kind="system", detail={"login": login})
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
    with _facade().new_session(write=True) as s:
        try:
            token = create_token(s, login, lifetime=timedelta(days=days) if days else None)
        except AuthError as exc:
            raise click.ClickException(str(exc)) from exc
        _facade().audit(s, "token.created", actor="cli", actor_kind="system", detail={"login": login, "days": days})
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
    with _facade().new_session() as s:
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

    with _facade().new_session(write=True) as s:
        try:
            info = revoke_token(s, token_id)
        except AuthError as exc:
            raise click.ClickException(str(exc)) from exc
        _facade().audit(s, "token.revoked", actor="cli", actor_kind="system",
                        detail={"login": info.login, "token_id": token_id})
        s.commit()
    click.echo(f"token {token_id} of {info.login} revoked")


# -- peers ------------------------------------------------------------------------------------
# The core owns these commands (archive_core.commands): each group here only parses and wraps.


def _core(command, *args, **kwargs) -> None:
    """Run one of the core's commands, its lines on the terminal; its failure is a click error."""
    from archive_core.api import CommandFailed

    try:
        status = command(*args, echo=click.echo, **kwargs)
    except CommandFailed as exc:
        if exc.status == 1:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.status)
    if status:
        sys.exit(status)


def _commands():
    from archive_core.api import commands

    return commands


@click.group("peers", cls=AppGroup, help="Registered DICOM peers (modalities, workstations, archives).")
def peers_cli() -> None: ...


@peers_cli.command("add")
@click.argument("ae_title")
@click.argument("host")
@click.argument("port", type=int)
@click.option("--from", "allowed_from", metavar="ADDRESS_OR_CIDR",
              help="Its associations may also come from this address or network (besides HOST).")
@click.option("--external", is_flag=True, help="Studies it sends are outside priors, not visits.")
@click.option("--tls", is_flag=True, help="Our associations to it use DICOM TLS; its own must use the TLS port.")
def peers_add(ae_title: str, host: str, port: int, allowed_from: str | None, external: bool, tls: bool) -> None:
    _core(_commands().add_peer, _archive(), ae_title=ae_title, host=host, port=port, allowed_from=allowed_from,
          external=external, tls=tls)


@peers_cli.command("list")
def peers_list() -> None:
    _core(_commands().list_peers, _archive())


@peers_cli.command("remove")
@click.argument("ae_title")
def peers_remove(ae_title: str) -> None:
    _core(_commands().remove_peer, _archive(), ae_title=ae_title)


# -- archive ----------------------------------------------------------------------------------


@click.group("archive", cls=AppGroup, help="The DICOM archive.")
def archive_cli() -> None: ...


@archive_cli.command("serve", help="Run the DICOM SCP until interrupted.")
def archive_serve() -> None:
    _commands().serve(_archive())


@archive_cli.command("fsck")
@click.option("--repair", is_flag=True, help="Fix what can be fixed.")
@click.option("--no-checksums", is_flag=True, help="Skip reading every file.")
def archive_fsck(repair: bool, no_checksums: bool) -> None:
    """Compare index and storage; exit 1 when problems remain."""
    _core(_commands().fsck, _archive(), repair=repair, verify_checksums=not no_checksums)


@archive_cli.command("backup")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--with-signing-key", is_flag=True,
              help="Also copy the audit signing key (a secret: otherwise keep it aside yourself).")
@click.option("--journal-wait", default=10.0, show_default=True,
              help="Seconds to wait for received objects not yet indexed.")
def archive_backup(dest: Path, with_signing_key: bool, journal_wait: float) -> None:
    """Write a consistent backup into DEST (objects copied only when new or changed)."""
    _core(_commands().backup, _archive().settings, dest, with_signing_key=with_signing_key,
          journal_wait_seconds=journal_wait)


@archive_cli.command("verify-backup")
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
def archive_verify_backup(src: Path) -> None:
    """Re-hash every object of the backup SRC and check its database; exit 1 naming problems."""
    _core(_commands().verify_backup, src)


@archive_cli.command("restore")
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Restore over an instance that holds data (moved aside, not deleted).")
def archive_restore(src: Path, force: bool) -> None:
    """Rebuild this instance from the backup SRC; then run `db upgrade`."""
    current_app.extensions["archivage"].archive.close()
    _core(_commands().restore, src, Path(current_app.instance_path), force=force)


@archive_cli.command("import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--external", is_flag=True, help="Outside priors: not visits to the practice.")
def archive_import(path: Path, external: bool) -> None:
    """Bulk-load a folder of DICOM files; unreadable ones are skipped and listed."""
    from tqdm import tqdm

    _core(_commands().import_folder, _archive(), path, external=external,
          progress=lambda it: tqdm(it, unit="file", file=sys.stderr))


# -- audit ------------------------------------------------------------------------------------


@click.group("audit", cls=AppGroup, help="The audit trail.")
def audit_cli() -> None: ...


@audit_cli.command("verify", help="Check the hash chain against the signed checkpoints; exit 1 on any problem.")
def audit_verify() -> None:
    _core(_commands().audit_verify, _archive())


@audit_cli.command("checkpoint", help="Sign the chain's head now (the scheduler does it periodically).")
def audit_checkpoint() -> None:
    _core(_commands().audit_checkpoint, _archive())


# -- processes --------------------------------------------------------------------------------


@click.command("web", help="Run the web back-office (waitress).")
@with_appcontext
@click.option("--host", default=None)
@click.option("--port", type=int, default=None)
def web_command(host: str | None, port: int | None) -> None:
    from waitress import serve

    app = current_app._get_current_object()
    host = host or app.config["WEB_HOST"]
    port = port or int(app.config["WEB_PORT"])
    click.echo(f"web back-office on http://{host}:{port}/")
    serve(app, host=host, port=port, threads=8)


@click.group("scheduler", cls=AppGroup, help="The scheduler (one per deployment).")
def scheduler_cli() -> None: ...


@scheduler_cli.command("run")
def scheduler_run() -> None:
    from backoffice.scheduler import run_scheduler

    run_scheduler(current_app._get_current_object())


@click.command("serve", help="Run every role: DICOM archive, web back-office and scheduler.")
def serve_command() -> None:
    """Each role in its own process (the SCP keeps a core to itself); stopping one stops all."""
    flask = [sys.executable, "-m", "flask", "--app", "wsgi"]
    roles = {"archive": [*flask, "archive", "serve"], "web": [*flask, "web"], "scheduler": [*flask, "scheduler", "run"]}
    children = {name: subprocess.Popen(cmd) for name, cmd in roles.items()}
    stopping = False

    def _stop(*_args) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    click.echo(f"{name} exited with status {child.returncode}; stopping the others", err=True)
                    stopping = True
            time.sleep(0.5)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children.values():
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
    os._exit(0)
