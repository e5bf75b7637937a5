"""What of config.py a backup keeps: settings yes, secrets no (names and passwords inside URLs)."""

from __future__ import annotations

import pytest

from archive_core.backup import strip_secrets


@pytest.mark.parametrize("line, kept", [
    ("SECRET_KEY = 'abc'", False),
    ("SMTP_PASSWORD = 'x'", False),
    ("API_TOKEN: str = 'x'", False),
    ("DATABASE_URL = 'postgresql+psycopg://archivage:s3cret@db.cabinet.fr/archivage'", False),
    ("STORAGE_URL = 's3://user:pw@bucket/prefix'", False),
    ("DATABASE_URL = 'postgresql+psycopg://archivage@db.cabinet.fr/archivage'", True),
    ("DICOM_AE_TITLE = 'ARCHIVAGE'", True),
    ("WEB_PORT = 8000", True),
    ("LOGO_URL = 'https://cabinet.fr/logo.png'", True),
])
def test_a_backup_keeps_settings_and_leaves_secrets_out(line, kept):
    text, names = strip_secrets(f"# config\n{line}\nLANGUAGE = 'fr'\n")
    assert (line in text) is kept
    assert "LANGUAGE = 'fr'" in text
    assert bool(names) is not kept
