"""``archive backup | verify-backup | restore``: the drill an operator runs, from the command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.helpers import ROOT, associate_ct_modality, dcmtk, make_ct
from tests.servers import archive_env, flask_cli


def _store(port: int, tmp_path: Path, patients: list[str]) -> dict[str, bytes]:
    """Store one CT per patient with storescu; SOP Instance UID -> the bytes of the sent dataset's file."""
    sent = {}
    files = []
    for n, patient in enumerate(patients):
        ds = make_ct(patient_id=patient, study_uid=generate_uid(), InstanceNumber=n + 1)
        path = tmp_path / f"sent{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(str(path))
        sent[ds.SOPInstanceUID] = path.read_bytes()
    done = dcmtk("storescu", "-aec", "ARCHIVAGE", "127.0.0.1", str(port), *files)
    assert done.returncode == 0, done.stdout + done.stderr
    return sent


def _rows(instance: Path, database_url: str | None = None) -> list[tuple[str, str, str]]:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url or f"sqlite:///{instance / 'archivage.sqlite3'}")
    try:
        with engine.connect() as conn:
            return sorted(tuple(r) for r in conn.execute(text(
                "SELECT sop_instance_uid, storage_key, tier FROM instance WHERE deleted_at IS NULL")))
    finally:
        engine.dispose()


def _objects(instance: Path, database_url: str | None = None, storage: dict | None = None) -> dict[str, bytes]:
    """SOP Instance UID -> the stored file's bytes, read through the archive's own tier reader."""
    from archive_core.archive import Archive
    from archive_core.config import Settings
    from archive_core.tiers import read_instance

    extra = {"DATABASE_URL": database_url} if database_url else {}
    archive = Archive.open(Settings(instance_path=instance, STORAGE_MIN_FREE_BYTES=0, **extra, **(storage or {})))
    try:
        return {uid: read_instance(archive, uid) for uid, _key, _tier in _rows(instance, database_url)}
    finally:
        archive.close()


def _documents(instance: Path) -> dict[str, bytes]:
    root = instance / "documents"
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()} if root.is_dir() else {}


def _desk_day(instance: Path, database_url: str | None = None, storage: dict | None = None) -> None:
    """Invoices, a payment and a credit note written through the billing pages (each audited), one
    patient moved to the archive tier, then a signed audit checkpoint."""
    from archive_core.tiers import move_patient_to_archive
    from backoffice import create_app
    from backoffice.billing import services as S
    from tests.retention_support import sign_in

    extra = {"DATABASE_URL": database_url} if database_url else {}
    app = create_app({"TESTING": True, "INSTANCE_PATH": str(instance), "STORAGE_MIN_FREE_BYTES": 0,
                      "WTF_CSRF_ENABLED": False, **extra, **(storage or {})})
    try:
        client = app.test_client()
        sign_in(client, app, "gerante", "manager")
        response = client.post("/billing/checkin", data={"patient_id": "B1", "patient_name": "Martin^Paul",
                                                         "exam_group": "radiologie",
                                                         "visit_date": S.paris_today().isoformat()})
        group_id = int(response.headers["Location"].rstrip("/").split("/")[-1])
        client.post(f"/billing/groups/{group_id}/consent", data={"accepted": "1"})
        response = client.post(f"/billing/groups/{group_id}/invoice", data={})
        invoice = int(response.headers["Location"].split("/")[-1])
        assert client.post(f"/billing/invoices/{invoice}/payments",
                           data={"amount": "1,00", "method": "cash"}).status_code == 302
        archive = app.extensions["archivage"].archive
        from sqlalchemy import text

        with archive.sessions() as s:
            patient_pk = s.execute(text("SELECT id FROM patient WHERE patient_id = 'B2'")).scalar_one()
        move_patient_to_archive(archive, patient_pk)
    finally:
        app.extensions["archivage"].archive.close()
    for command in (["audit", "checkpoint"], ["billing", "verify"]):
        done = flask_cli(instance, *command, env={**({"ARCHIVAGE_DATABASE_URL": database_url} if extra else {}),
                                                  **{f"ARCHIVAGE_{k}": str(v) for k, v in (storage or {}).items()}})
        assert done.returncode == 0, done.stdout + done.stderr


def _destroy_objects(instance: Path, storage: dict) -> None:
    """Every stored object of both tiers deleted (on S3 the buckets outlive the instance folder)."""
    from archive_core.config import Settings
    from archive_core.storage import open_stores

    for store in open_stores(Settings(instance_path=instance, **storage)):
        for key in list(store.keys()):
            store.delete(key)


@pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres), "sqlite-s3"])
def test_backup_destroy_restore_drill(engine, tmp_path, request):
    """The drill, on SQLite, on a real PostgreSQL, and on SQLite with the objects in two buckets of an
    S3-compatible server (moto, started by the tests): an instance with studies in both tiers, an
    invoice and a payment, backed up while `archive serve` runs; the instance (and its database) is
    destroyed and restored; fsck, audit verify and billing verify are clean and every object reads
    back byte-identical. Bad input: a second backup over the first (must copy nothing), a restore
    over an instance holding data (refused without --force)."""
    from tests.servers import ArchiveProcess

    url = request.getfixturevalue("postgres_url") if engine == "postgresql" else None
    env = {"ARCHIVAGE_DATABASE_URL": url} if url else {}
    storage = request.getfixturevalue("s3_storage") if engine == "sqlite-s3" else {}
    env.update({f"ARCHIVAGE_{k}": str(v) for k, v in storage.items()})
    if url:
        from tests.conftest import _reset_postgres

        _reset_postgres(url)
    archive_process = ArchiveProcess(tmp_path / "instance-serve", env=env).start()
    try:
        _drill(archive_process, tmp_path, url, env, storage)
    finally:
        archive_process.stop()


def _drill(archive_process, tmp_path: Path, url: str | None, env: dict[str, str], storage: dict) -> None:
    instance = archive_process.instance_path
    _store(archive_process.port, tmp_path, ["B1", "B2", "B3"])
    _desk_day(instance, url, storage)
    assert {tier for *_, tier in _rows(instance, url)} == {"active", "archive"}
    before = _objects(instance, url, storage)
    assert len(before) == 3
    documents = _documents(instance)
    assert documents  # the invoice PDF
    dest = tmp_path / "backup"

    done = archive_process.cli("archive", "backup", str(dest), "--with-signing-key")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "backed up 3 objects: 3 copied" in done.stdout, done.stdout
    assert (dest / ("database.pgdump" if url else "database.sqlite3")).is_file()
    manifest = [json.loads(line) for line in (dest / "manifest.jsonl").read_text().splitlines()]
    assert sorted(e["tier"] for e in manifest) == ["active", "active", "archive"]
    config = (dest / "instance" / "config.py").read_text()
    assert "SECRET_KEY" not in config  # the web app's secret stays out of the backup

    again = archive_process.cli("archive", "backup", str(dest), "--with-signing-key")
    assert again.returncode == 0 and "backed up 3 objects: 0 copied" in again.stdout, again.stdout
    verify = archive_process.cli("archive", "verify-backup", str(dest))
    assert verify.returncode == 0 and "checked 3 objects, 0 problems" in verify.stdout, verify.stdout

    refused = archive_process.cli("archive", "restore", str(dest))
    assert refused.returncode == 1 and "already holds data" in refused.stderr, refused.stdout + refused.stderr
    assert _objects(instance, url, storage) == before  # nothing touched

    archive_process.stop()
    _destroy_objects(instance, storage)
    shutil.rmtree(instance)
    instance.mkdir()
    if url:
        from tests.conftest import _reset_postgres

        _reset_postgres(url)  # the database server lost too: an empty database to restore into
    restored = flask_cli(instance, "archive", "restore", str(dest), env=env)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert flask_cli(instance, "db", "upgrade", env=env).returncode == 0
    for command in (["archive", "fsck"], ["audit", "verify"], ["billing", "verify"]):
        done = flask_cli(instance, *command, env=env)
        assert done.returncode == 0, (command, done.stdout + done.stderr)
    assert "checked 3 instances, 0 problems" in flask_cli(instance, "archive", "fsck", env=env).stdout
    assert _objects(instance, url, storage) == before
    assert _documents(instance) == documents
    # And the restored archive serves them again: a new C-STORE lands next to them.
    archive_process.start()
    assoc = associate_ct_modality(archive_process.port)
    try:
        assert assoc.send_c_store(make_ct(patient_id="B4")).Status == 0
    finally:
        assoc.release()


def test_verify_backup_names_a_corrupted_and_a_missing_copy(archive_process, tmp_path):
    """Bad input: one object copy with a flipped byte, another deleted, then a database copy cut short."""
    _store(archive_process.port, tmp_path, ["V1", "V2", "V3"])
    dest = tmp_path / "backup"
    done = archive_process.cli("archive", "backup", str(dest))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "audit signing key is not in the backup" in done.stdout
    assert not (dest / "secrets").exists()
    lines = (dest / "manifest.jsonl").read_text().splitlines()
    first, second, _third = sorted(json.loads(line)["key"] for line in lines)
    corrupted = dest / "objects" / "active" / first
    data = bytearray(corrupted.read_bytes())
    data[-1] ^= 0xFF
    corrupted.write_bytes(bytes(data))
    (dest / "objects" / "active" / second).unlink()
    verify = archive_process.cli("archive", "verify-backup", str(dest))
    assert verify.returncode == 1
    assert f"checksum mismatch: active:{first}" in verify.stdout
    assert f"missing object: active:{second}" in verify.stdout
    assert "2 problems" in verify.stdout

    # A refreshed backup repairs both copies (they no longer match their manifest line).
    assert archive_process.cli("archive", "backup", str(dest)).returncode == 0
    assert archive_process.cli("archive", "verify-backup", str(dest)).returncode == 0

    # The core's own command line restores without Flask; an instance holding data is moved aside only
    # with --force (bad input: a restore over someone's storage folder).
    other = tmp_path / "other"
    (other / "storage" / "objects").mkdir(parents=True)
    (other / "storage" / "objects" / "keep.dcm").write_bytes(b"precious")
    core = [sys.executable, "-m", "archive_core", "restore", str(dest)]
    env = {**os.environ, **archive_env(other)}
    refused = subprocess.run(core, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "already holds data" in refused.stdout, refused.stdout + refused.stderr
    assert (other / "storage" / "objects" / "keep.dcm").read_bytes() == b"precious"
    forced = subprocess.run([*core, "--force"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    (aside,) = tmp_path.glob("other.before-restore-*")
    assert (aside / "storage" / "objects" / "keep.dcm").read_bytes() == b"precious"
    assert len(_rows(other)) == 3

    db = dest / "database.sqlite3"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    verify = archive_process.cli("archive", "verify-backup", str(dest))
    assert verify.returncode == 1 and "database copy" in verify.stdout, verify.stdout


def test_backup_of_an_unreachable_postgresql_database_fails_clearly(tmp_path):
    """Bad input: a PostgreSQL database nobody answers on; the command exits 1 with a clear message
    and leaves no backup (no manifest, no summary)."""
    instance = tmp_path / "instance"
    instance.mkdir()
    dest = tmp_path / "backup"
    done = flask_cli(instance, "archive", "backup", str(dest), "--journal-wait", "0",
                     env={"ARCHIVAGE_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot reach the database" in done.stderr
    assert not (dest / "manifest.jsonl").exists() and not (dest / "backup.json").exists()