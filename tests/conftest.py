"""Fixtures: an instance folder, the app, an in-process DICOM server, and a real PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from tests.helpers import IN_CI, ROOT, free_port

hypothesis_settings.register_profile("archivage", deadline=None, max_examples=100)
hypothesis_settings.load_profile("archivage")


# -- sockets pynetdicom leaves behind in this process -----------------------------------------------

_associations: "weakref.WeakSet" = weakref.WeakSet()


@pytest.fixture(scope="session", autouse=True)
def _watch_client_associations():
    """pynetdicom does not close the socket of an association the peer rejected or aborted (nor of
    one whose peer was killed); the socket is then freed whenever the last reference goes, often in
    a later test, where ``filterwarnings = error`` turns its ResourceWarning into that test's
    failure (CI failed so, in test_worklist_rules). Every association a test opens is noted, and
    the sockets of those that ended are closed at the end of each test. The archive's own sockets
    are checked apart (tests/integration/test_server_sockets.py)."""
    from pynetdicom.ae import ApplicationEntity

    original = ApplicationEntity.associate

    def associate(self, *args, **kwargs):
        assoc = original(self, *args, **kwargs)
        _associations.add(assoc)
        return assoc

    ApplicationEntity.associate = associate
    yield
    ApplicationEntity.associate = original


@pytest.fixture(autouse=True)
def _close_ended_associations():
    yield
    for assoc in list(_associations):
        if assoc.is_alive():
            continue
        raw = getattr(getattr(assoc.dul, "socket", None), "socket", None)
        if raw is not None and raw.fileno() != -1:
            raw.close()
        _associations.discard(assoc)


# -- the clock -----------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def shifted_clock():
    """With ``ARCHIVAGE_TEST_NOW`` set, the whole session (and every Python child it starts) runs on that date."""
    when = os.environ.get("ARCHIVAGE_TEST_NOW")
    if not when:
        yield None
        return
    from tests.clock.shift import travel

    clock_dir = str(Path(__file__).resolve().parent / "clock")
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (clock_dir, str(ROOT), previous) if p)
    with travel(when):
        yield when
    if previous is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = previous


# -- passwords -----------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _cheap_password_hashes():
    """Users made in this process get argon2id hashes at the library's lowest cost (8 KiB, one pass).

    The archive's own parameters (argon2-cffi's RFC 9106 profile: 64 MiB, 3 passes, 4 lanes) take
    0.1-0.3 s a hash on these 2 cores, and the tests make thousands of users: half of some modules'
    time. The hash is still argon2id and verification reads its cost from the hash itself, so signing
    in works the same. tests/unit/test_accounts.py runs on the real parameters (this fixture's value)
    and checks them; child processes (``flask users ...``, the servers) never see this."""
    from argon2 import PasswordHasher

    from backoffice.auth import services

    real = services._hasher
    services._hasher = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    services._dummy_hash = None
    yield real
    services._hasher = real
    services._dummy_hash = None


# -- PostgreSQL ---------------------------------------------------------------------------------


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


@pytest.fixture(scope="session")
def postgres_url():
    """A throw-away PostgreSQL server on 127.0.0.1 and a free port, for the whole session."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        if IN_CI:
            pytest.fail("PostgreSQL (initdb, pg_ctl) is required in CI")
        pytest.skip("PostgreSQL binaries not installed")
    as_root = os.geteuid() == 0
    # runuser cannot enter pytest's root-only temporary folders: make our own and hand it over.
    data = Path(tempfile.mkdtemp(prefix="archivage-pg-"))
    if as_root:
        shutil.chown(data, "postgres", "postgres")
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    port = free_port()
    subprocess.run([*prefix, initdb, "-D", str(data / "db"), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                    "--locale=C.UTF-8"], check=True, capture_output=True)
    subprocess.run([*prefix, pg_ctl, "-D", str(data / "db"), "-l", str(data / "log"), "-w", "-o",
                    f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off -c max_connections=100", "start"],
                   check=True, capture_output=True)
    import psycopg

    for _ in range(50):
        try:
            with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as c:
                c.execute("CREATE DATABASE archivage_test")
            break
        except psycopg.OperationalError:
            time.sleep(0.1)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/archivage_test"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data / "db"), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def _reset_postgres(url: str) -> None:
    """An empty schema for the next test. A connection a previous test's child process left behind (a web
    process killed while it stored a PDF after its commit) is ended first: its backend, still inside its
    INSERT, deadlocked with DROP SCHEMA once (PostgreSQL log: "deadlock detected", DROP SCHEMA against
    INSERT INTO billing_document)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request, tmp_path):
    """Each test using this runs on SQLite and on a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'archivage.sqlite3'}"
    url = request.getfixturevalue("postgres_url")
    _reset_postgres(url)
    return url


# -- storage: a local folder, or an S3-compatible server ----------------------------------------------


def pytest_generate_tests(metafunc):
    # tests/helpers.py STORAGE_BACKENDS: each test of the module whose archive stores objects runs twice.
    if metafunc.definition.get_closest_marker("storage_backends") and "storage_overrides" in metafunc.fixturenames:
        metafunc.parametrize("storage_overrides", ["filesystem", "s3"], indirect=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server (a real HTTP endpoint) for the whole session; each test takes its own buckets."""
    from tests.servers import S3Server

    server = S3Server(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture
def storage_overrides(request) -> dict:
    """Settings of the storage the test's archive uses: ``{}`` (folders of the instance), or, in a module
    that runs its tests on both (``pytestmark = STORAGE_BACKENDS``), buckets of the S3 server."""
    if getattr(request, "param", "filesystem") == "filesystem":
        return {}
    return request.getfixturevalue("s3_storage")


@pytest.fixture
def s3_storage(s3_server, monkeypatch) -> dict:
    """Two fresh buckets (active tier, archive tier) and the settings that point the archive at them;
    the credentials are in the environment, as in production (this process and its children)."""
    import uuid

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    name = uuid.uuid4().hex[:12]
    return {
        "STORAGE_URL": f"s3://{s3_server.create_bucket('active-' + name)}/objects",
        "ARCHIVE_TIER_STORAGE_URL": f"s3://{s3_server.create_bucket('archive-' + name)}/archive",
        "ARCHIVE_TIER_S3_STORAGE_CLASS": "STANDARD_IA",
        "S3_ENDPOINT_URL": s3_server.url,
        "S3_ADDRESSING_STYLE": "path",
    }


# -- the archive ---------------------------------------------------------------------------------


@pytest.fixture
def instance_path(tmp_path) -> Path:
    path = tmp_path / "instance"
    path.mkdir()
    return path


@pytest.fixture
def settings(instance_path, storage_overrides):
    from archive_core.config import Settings

    # The tests' modalities are not registered peers: storage from unknown AEs is opened here
    # (the default refuses it; tests/integration/test_peer_access.py tests the default).
    return Settings(instance_path=instance_path, STORAGE_MIN_FREE_BYTES=0, DICOM_STORE_FROM_UNKNOWN_AES=True,
                    **storage_overrides)


@pytest.fixture
def migrated(settings):
    from tests.helpers import migrate

    migrate(settings.database_url)
    return settings


@pytest.fixture
def archive(migrated):
    from archive_core.archive import Archive

    arch = Archive.open(migrated)
    yield arch
    arch.close()


@pytest.fixture
def scp(archive):
    """The DICOM server in this process, on a free port."""
    from archive_core.net.server import start_server

    running = start_server(archive, host="127.0.0.1", port=0)
    yield running
    running.stop()


# -- the web app --------------------------------------------------------------------------------


@pytest.fixture
def app(instance_path, migrated, storage_overrides):
    from backoffice import create_app

    app = create_app({"TESTING": True, "INSTANCE_PATH": str(instance_path), "STORAGE_MIN_FREE_BYTES": 0,
                      **storage_overrides})
    yield app
    app.extensions["archivage"].archive.close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def facade(app):
    """The app's ArchiveFacade (modules testing the core without the app define theirs over ``archive``)."""
    return app.extensions["archivage"]


# -- real server processes ----------------------------------------------------------------------


@pytest.fixture
def archive_process(tmp_path, storage_overrides):
    """``flask --app wsgi archive serve`` as a child process on a free port, answering C-ECHO.

    Its instance folder is ``tmp_path / "instance-serve"`` (database migrated); ``.cli(...)`` runs
    other ``flask --app wsgi`` commands against the same instance; ``.kill()`` is a kill -9.
    """
    from tests.servers import ArchiveProcess

    server = ArchiveProcess(tmp_path / "instance-serve",
                            env={f"ARCHIVAGE_{k}": str(v) for k, v in storage_overrides.items()})
    server.start()
    yield server
    server.stop()
