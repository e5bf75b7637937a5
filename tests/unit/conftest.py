"""Fixtures shared by the unit tests (the package-wide ones are in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def db_app(tmp_path, database_url):
    """The web app on a migrated database, on SQLite and on PostgreSQL (``database_url``), with an empty
    instance folder and no free-space floor; closed after the test."""
    from backoffice import create_app
    from tests.helpers import migrate

    migrate(database_url)
    instance = tmp_path / "instance-db"
    instance.mkdir()
    app = create_app({"TESTING": True, "INSTANCE_PATH": str(instance), "DATABASE_URL": database_url,
                      "STORAGE_MIN_FREE_BYTES": 0})
    yield app
    app.extensions["archivage"].archive.close()
