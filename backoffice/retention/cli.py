"""``flask --app wsgi retention sweep [--dry-run]`` and ``retention purge BATCH_ID``."""

from __future__ import annotations

import sys
from datetime import date

import click
from flask.cli import AppGroup


@click.group("retention", cls=AppGroup, help="Retention: the sweep and approved purges.")
def retention_cli() -> None: ...


@retention_cli.command("sweep")
@click.option("--dry-run", is_flag=True, help="Report what would be moved and proposed; change nothing.")
@click.option("--today", type=click.DateTime(formats=["%Y-%m-%d"]), default=None, help="Run as of this day.")
def sweep_command(dry_run: bool, today) -> None:
    """Move tiers, propose a purge batch, finish approved batches (what the scheduler job does)."""
    from backoffice.extensions import facade
    from backoffice.retention.certificate import certificates_dir, render_certificate
    from backoffice.retention.services import sweep, today_paris

    day: date = today.date() if today else today_paris()
    report = sweep(facade(), today=day, dry_run=dry_run, certificates=certificates_dir(), render=render_certificate)
    prefix = "dry run: " if dry_run else ""
    click.echo(f"{prefix}{report.patients} patients as of {day.isoformat()}")
    click.echo(f"{prefix}{len(report.to_move)} patients to move to the archive tier"
               + ("" if dry_run else f" ({report.moved_instances} instances moved)"))
    click.echo(f"{prefix}{report.due} patients due for destruction, {report.needs_review} flagged for review")
    if not dry_run:
        click.echo(f"proposed batch: {report.proposed_batch_id or 'none'}")
        click.echo(f"executed approved batches: {', '.join(map(str, report.executed_batches)) or 'none'}")


@retention_cli.command("purge")
@click.argument("batch_id", type=int)
def purge_command(batch_id: int) -> None:
    """Run (or finish, after a crash) an approved batch; refused for a batch not approved."""
    from backoffice.extensions import facade
    from backoffice.retention.certificate import certificates_dir, render_certificate
    from backoffice.retention.services import RetentionError, run_purge

    try:
        batch = run_purge(facade(), batch_id, certificates=certificates_dir(), render=render_certificate,
                          actor="cli")
    except RetentionError as exc:
        click.echo(f"refused: {exc}", err=True)
        sys.exit(1)
    click.echo(f"batch {batch.id} executed: {batch.instances} instances, certificate {batch.certificate_name}")
