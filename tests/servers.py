"""Real server processes for tests: ``flask --app wsgi archive serve`` and Debian's Orthanc, started, awaited and stopped."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from tests.helpers import ROOT, free_port


def flask_cli(instance_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120,
              input: str | None = None) -> subprocess.CompletedProcess:
    """Run ``flask --app wsgi ARGS`` in the project root against *instance_path*."""
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", *args],
        cwd=ROOT,
        env={**os.environ, **archive_env(instance_path), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )


def archive_env(instance_path: Path, port: int | None = None, *, open_storage: bool = True) -> dict[str, str]:
    env = {"ARCHIVAGE_INSTANCE_PATH": str(instance_path), "ARCHIVAGE_STORAGE_MIN_FREE_BYTES": "0"}
    if open_storage:
        # Storage from unknown AEs opened as in the ``settings`` fixture (tests/conftest.py).
        env["ARCHIVAGE_DICOM_STORE_FROM_UNKNOWN_AES"] = "true"
    if port is not None:
        env["ARCHIVAGE_DICOM_PORT"] = str(port)
    return env


def echo(port: int, *, ae_title: str = "ECHOSCU", timeout: float = 5) -> int | None:
    """The C-ECHO status the server on *port* answers, or None when nobody answers."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVAGE")
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


def _answers(port: int) -> bool:
    """The server answers an association: C-ECHO success, or a rejection (an unknown AE under the
    default access rules, ``open_storage=False``)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="ECHOSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    with warnings.catch_warnings():
        # pynetdicom drops a refused connection's socket without closing it (transport.py, connect):
        # that ResourceWarning is pynetdicom's, and a server still starting refuses by design.
        warnings.simplefilter("ignore", ResourceWarning)
        assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVAGE")
    if assoc.is_rejected:
        return True
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return "Status" in status and status.Status == 0x0000
    finally:
        assoc.release()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _end(proc: subprocess.Popen, timeout: float = 30) -> int:
    """Stop a child process: SIGTERM, and kill it if it is still there after *timeout* seconds."""
    proc.terminate()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout)


def _wait_listening(proc: subprocess.Popen, port: int, timeout: float, what: str, log_path: Path) -> None:
    """Return once *proc* accepts connections on *port*; raise with the end of its log if it exits or
    *timeout* seconds pass first."""
    deadline = time.monotonic() + timeout
    while not _listening(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start: {Path(log_path).read_text()[-2000:]}")
        time.sleep(0.1)  # polling a port that is not open yet: there is no event to wait on


@contextmanager
def web_process(env: dict[str, str], log_path: Path, *, port: int | None = None, timeout: float = 60):
    """``flask --app wsgi web`` as a child process (no DICOM server in it) with *env* on 127.0.0.1;
    yields its base URL once it accepts connections, and stops it on exit (SIGTERM, then kill)."""
    port = port or free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "web", "--host", "127.0.0.1",
                                    "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_listening(process, port, timeout, "web server", log_path)
        yield f"http://127.0.0.1:{port}"
    finally:
        _end(process, 20)


class ArchiveProcess:
    """``flask --app wsgi archive serve`` (or any command line) on a free port, as a child process.

    ``start()`` migrates the instance's database (once, a copy of the migrated template) and returns when the server answers
    C-ECHO; ``stop()`` sends SIGTERM; ``kill()`` is a ``kill -9``. It can be started again on the
    same instance and port (a restart after a crash). ``open_storage=False`` keeps the default
    access rules (storage from unknown AEs refused).
    """

    def __init__(self, instance_path: Path, *, command: list[str] | None = None, env: dict[str, str] | None = None,
                 open_storage: bool = True):
        self.instance_path = Path(instance_path)
        self.open_storage = open_storage
        self.port = free_port()
        self.command = command or [sys.executable, "-m", "flask", "--app", "wsgi", "archive", "serve"]
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log_path = self.instance_path.parent / f"archive-serve-{self.port}.log"
        self._migrated = False

    def cli(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        env = {**archive_env(self.instance_path, self.port, open_storage=self.open_storage), **self.env}
        return flask_cli(self.instance_path, *args, env=env, **kwargs)

    def start(self, timeout: float = 60) -> "ArchiveProcess":
        self.instance_path.mkdir(parents=True, exist_ok=True)
        if not self._migrated:
            # A copy of the migrated template (tests.helpers.migrate), not a `flask db upgrade` child (3.5 s);
            # that command runs for real in test_backup, test_dicom_tls, test_outgoing and test_web_edge.
            from archive_core.config import Settings
            from tests.helpers import migrate

            url = self.env.get("ARCHIVAGE_DATABASE_URL")
            migrate(url or Settings(instance_path=self.instance_path).database_url)
            self._migrated = True
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env={**os.environ, **archive_env(self.instance_path, self.port, open_storage=self.open_storage),
                 **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"archive serve exited with {self.proc.returncode}:\n{self.log()}")
            # Probe with a plain socket first: pynetdicom leaks a socket on a refused connection.
            if _listening(self.port) and _answers(self.port):
                return self
            time.sleep(0.1)
        self.kill()
        raise TimeoutError(f"archive serve did not answer C-ECHO within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        return _end(self.proc, timeout)

    def kill(self) -> None:
        """``kill -9``: no clean-up of any kind in the server."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


class OrthancProcess:
    """Debian's Orthanc as a child process with its own configuration and storage under *workdir*.

    *modalities* maps an AE title to ``(host, port)`` (Orthanc's DicomModalities); *settings* are
    added to its configuration (e.g. ``{"DicomAlwaysAllowStore": False}``: only those modalities may
    store). ``rest()`` calls its REST API.
    """

    AE_TITLE = "ORTHANC"

    def __init__(self, workdir: Path, *, modalities: dict[str, tuple[str, int]] | None = None, **settings):
        import json

        from tests.helpers import require_tool

        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Debian installs it in /usr/sbin, which is not on every user's PATH.
        binary = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin") or require_tool("Orthanc")
        self.dicom_port, self.http_port = free_port(), free_port()
        config = {
            "Name": "archivage-tests",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "DicomAet": self.AE_TITLE,
            "DicomCheckCalledAet": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            "DicomModalities": {ae: [ae, host, port] for ae, (host, port) in (modalities or {}).items()},
            **settings,
        }
        (self.workdir / "orthanc.json").write_text(json.dumps(config, indent=2))
        self.log_path = self.workdir / "orthanc.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([binary, str(self.workdir / "orthanc.json")], cwd=self.workdir,
                                         env={**os.environ, "TCP_NODELAY": "1"}, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                self.rest("GET", "/system")
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError("Orthanc did not start")

    def rest(self, method: str, path: str, body=None, *, raw: bool = False):
        """Call Orthanc's REST API; JSON in and out (*body* bytes are sent as they are; *raw* returns bytes)."""
        import json
        import urllib.request

        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method)
        with urllib.request.urlopen(request, timeout=60) as response:
            content = response.read()
        return content if raw else (json.loads(content) if content else None)

    def stop(self) -> None:
        if self.proc.poll() is None:
            _end(self.proc)


class S3Server:
    """moto's S3-compatible HTTP server (``python -m moto.server``) as a child process on 127.0.0.1.

    A real HTTP endpoint: the archive talks to it through boto3 as it would to MinIO or Ceph RGW.
    ``stop()`` then ``start()`` brings it back on the same port, empty (an outage); ``env`` are the
    (fake) credentials a client needs; *auth* true makes moto check them (every key is unknown to it).
    """

    ACCESS_KEY, SECRET_KEY, REGION = "archivage-test", "archivage-test-secret", "us-east-1"

    def __init__(self, workdir: Path, *, auth: bool = False):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.auth = auth
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY,
                "AWS_DEFAULT_REGION": self.REGION, "AWS_EC2_METADATA_DISABLED": "true"}

    def start(self, timeout: float = 60) -> None:
        env = {**os.environ, "TCP_NODELAY": "1"}
        if self.auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"  # moto checks credentials from the first request
        log = open(self.workdir / "moto.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _wait_listening(self.proc, self.port, timeout, "moto server", self.workdir / "moto.log")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            _end(self.proc)

    def client(self):
        import boto3

        return boto3.session.Session().client(
            "s3", endpoint_url=self.url, region_name=self.REGION, aws_access_key_id=self.ACCESS_KEY,
            aws_secret_access_key=self.SECRET_KEY)

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object of *bucket* under *prefix*, by its name below the prefix."""
        client = self.client()
        found = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", ()):
                found[obj["Key"][len(prefix):]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        return found
