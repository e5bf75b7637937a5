"""Settings: a secret key generated per instance, ARCHIVAGE_* overrides, a movable instance folder."""

from __future__ import annotations

import stat

import pytest

from archive_core.config import Settings, ensure_instance, read_settings
from tests.helpers import ROOT


def _secret(instance) -> str:
    return read_settings(instance)["SECRET_KEY"]


def test_first_run_generates_a_private_secret_key_per_instance(tmp_path, monkeypatch):
    monkeypatch.delenv("ARCHIVAGE_SECRET_KEY", raising=False)
    one, two = tmp_path / "one", tmp_path / "two"
    ensure_instance(one)
    ensure_instance(two)
    assert len(_secret(one)) >= 32
    assert _secret(one) != _secret(two)
    assert stat.S_IMODE((one / "config.py").stat().st_mode) == 0o600
    # A second start keeps the key (sessions survive a restart).
    before = _secret(one)
    ensure_instance(one)
    assert _secret(one) == before
    # Not a literal anywhere in the code.
    sources = [p for d in ("archive_core", "backoffice") for p in (ROOT / d).rglob("*.py")]
    assert not any(before in p.read_text() for p in sources)


def test_the_app_uses_the_generated_key(tmp_path, monkeypatch):
    from backoffice import create_app

    monkeypatch.delenv("ARCHIVAGE_SECRET_KEY", raising=False)
    instance = tmp_path / "inst"
    app = create_app({"INSTANCE_PATH": str(instance), "TESTING": True})
    try:
        assert app.config["SECRET_KEY"] == _secret(instance)
    finally:
        app.extensions["archivage"].archive.close()


@pytest.mark.parametrize(
    "variable, raw, key, expected",
    [
        ("ARCHIVAGE_DICOM_PORT", "104", "DICOM_PORT", 104),
        ("ARCHIVAGE_DICOM_QR_FROM_UNKNOWN_AES", "true", "DICOM_QR_FROM_UNKNOWN_AES", True),
        ("ARCHIVAGE_DICOM_AE_TITLE", "PACS_CABINET", "DICOM_AE_TITLE", "PACS_CABINET"),  # not JSON: kept as text
        ("ARCHIVAGE_STORAGE_MIN_FREE_BYTES", "0", "STORAGE_MIN_FREE_BYTES", 0),
        ("ARCHIVAGE_DICOM_DUL_LOOP_DELAY", "0.002", "DICOM_DUL_LOOP_DELAY", 0.002),
    ],
)
def test_environment_overrides_the_instance_config(tmp_path, monkeypatch, variable, raw, key, expected):
    instance = tmp_path / "inst"
    ensure_instance(instance)
    with open(instance / "config.py", "a") as f:
        f.write(f"{key} = 'from config.py'\n")
    monkeypatch.setenv(variable, raw)
    settings = Settings.load(instance)
    assert getattr(settings, key) == expected
    assert type(getattr(settings, key)) is type(expected)


def test_environment_overrides_reach_the_app_and_its_archive(tmp_path, monkeypatch):
    from backoffice import archive_settings, create_app

    monkeypatch.setenv("ARCHIVAGE_DICOM_PORT", "11999")
    monkeypatch.setenv("ARCHIVAGE_DICOM_AE_TITLE", "CABINET")
    app = create_app({"INSTANCE_PATH": str(tmp_path / "inst"), "TESTING": True})
    try:
        settings = archive_settings(app)
        assert (settings.DICOM_PORT, settings.DICOM_AE_TITLE) == (11999, "CABINET")
    finally:
        app.extensions["archivage"].archive.close()


def test_archivage_instance_path_moves_the_instance(tmp_path, monkeypatch):
    from backoffice import archive_settings, create_app

    elsewhere = tmp_path / "elsewhere" / "instance"
    monkeypatch.setenv("ARCHIVAGE_INSTANCE_PATH", str(elsewhere))
    app = create_app({"TESTING": True})
    try:
        assert app.instance_path == str(elsewhere)
        assert (elsewhere / "config.py").exists()
        settings = archive_settings(app)
        assert settings.database_url == f"sqlite:///{elsewhere / 'archivage.sqlite3'}"
        assert settings.storage_url == f"file://{elsewhere / 'storage'}"
        assert (elsewhere / "storage" / "incoming").is_dir()
    finally:
        app.extensions["archivage"].archive.close()
    assert Settings.load().instance_path == elsewhere  # what `python -m archive_core` reads
