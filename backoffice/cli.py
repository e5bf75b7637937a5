"""The ``flask --app wsgi`` commands of the public contract: db, peers, archive, audit, web, serve, scheduler.

The account commands (users, tokens) are in :mod:`backoffice.auth.cli`, retention's in
:mod:`backoffice.retention.cli`; this module registers them all.
"""

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
    from backoffice.auth.cli import tokens_cli, users_cli

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

    def _stop(*_) -> None:
        raise SystemExit(0)  # waitress closes: requests under way finish (at most 5 s), then we return

    signal.signal(signal.SIGTERM, _stop)
    try:
        serve(app, host=host, port=port, threads=8)
    finally:
        # The searches' access records still queued are written before the process ends.
        if not app.extensions["archivage"].audit_flush(timeout=30):
            logging.getLogger(__name__).error("audit records of searches still queued at exit were not written")


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
