"""Alembic behind our own ``flask --app wsgi db upgrade`` (the core cannot use Flask-SQLAlchemy)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "heads") -> None:
    # "heads": each area (billing, retention, radiology) keeps its own branch of migrations from 0001.
    command.upgrade(alembic_config(database_url), revision)
