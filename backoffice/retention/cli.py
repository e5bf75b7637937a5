"""``flask --app wsgi retention sweep [--dry-run]`` and ``retention purge BATCH_ID --as LOGIN``."""

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
    """Move tiers, propose a purge batch, finish interrupted purges (what the scheduler job does)."""
    from backoffice.extensions import facade
    from backoffice.retention.certificate import certificates_dir, render_certificate
    from backoffice.retention.clock import today as clock_today
    from backoffice.retention.sweep import sweep

    day: date = today.date() if today else clock_today()
    report = sweep(facade(), today=day, dry_run=dry_run, certificates=certificates_dir(), render=render_certificate)
    prefix = "dry run: " if dry_run else ""
    click.echo(f"{prefix}{report.patients} patients as of {day.isoformat()}")
    click.echo(f"{prefix}{len(report.to_move)} patients to move to the archive tier"
               + ("" if dry_run else f" ({report.moved_instances} instances moved)"))
    click.echo(f"{prefix}{report.due} patients due for destruction, {report.needs_review} flagged for review")
    if not dry_run:
        click.echo(f"proposed batch: {report.proposed_batch_id or 'none'}")
        click.echo(f"finished interrupted purges: {', '.join(map(str, report.executed_batches)) or 'none'}")


def _da(value: str | None) -> str:
    """DICOM DA (YYYYMMDD) as dd/mm/yyyy, as the pages show it."""
    if value and len(value) == 8 and value.isdigit():
        return f"{value[6:]}/{value[4:6]}/{value[:4]}"
    return "?"


@retention_cli.command("purge")
@click.argument("batch_id", type=int)
@click.option("--as", "login", required=True,
              help="The manager who executes (another person than the requester; for the scheduler's batches, "
                   "than the approver too).")
@click.option("--today", type=click.DateTime(formats=["%Y-%m-%d"]), default=None, help="Run as of this day.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (the list is still printed).")
def purge_command(batch_id: int, login: str, today, yes: bool) -> None:
    """Run (or finish, after a crash) an approved batch; refused for a batch not approved."""
    from sqlalchemy import select

    from backoffice.auth.models import User
    from backoffice.extensions import facade
    from backoffice.retention.certificate import certificates_dir, render_certificate
    from backoffice.retention.clock import today as clock_today
    from backoffice.retention.errors import RetentionError, message_for
    from backoffice.retention.batches import check_executor, get_batch, item_view
    from backoffice.retention.purge import run_purge

    day: date = today.date() if today else clock_today()
    try:
        with facade().new_session() as s:
            user = s.scalar(select(User).where(User.login == login))
            if user is None or user.role != "manager" or not user.active:
                raise RetentionError("not_a_manager", login=login)
            batch = get_batch(s, batch_id)
            if batch.status not in ("approved", "tombstoned", "executed"):
                raise RetentionError("not_approved")
            if batch.status == "approved":
                check_executor(batch, login)
                click.echo(f"batch {batch.id}: requested by {batch.proposed_by}, approved by {batch.decided_by}")
                for item in batch.items:  # names, birth dates and exams: what the person confirms
                    facts = item_view(s, facade(), item, day)["facts"]
                    name = " ".join(p for p in (facts.get("name") or "?").split("^") if p)
                    click.echo(f"  {name} (born {_da(facts.get('birth_date'))})")
                    for st in facts.get("studies") or []:
                        click.echo(f"    {_da(st['study_date'])} {'/'.join(st['modalities'])} "
                                   f"{st['description'] or ''}")
                if not yes and not click.confirm("Destroy these records for good?", default=False):
                    click.echo("nothing destroyed", err=True)
                    sys.exit(1)
        batch = run_purge(facade(), batch_id, certificates=certificates_dir(), render=render_certificate,
                          actor=login, today=day)
    except RetentionError as exc:
        click.echo(f"refused: {message_for(exc)}", err=True)
        sys.exit(1)
    click.echo(f"batch {batch.id} executed: {batch.instances} instances, certificate {batch.certificate_name}")
