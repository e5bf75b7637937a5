"""Real server processes for tests: ``flask --app wsgi archive serve`` started, awaited and stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
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


class ArchiveProcess:
    """``flask --app wsgi archive serve`` (or any command line) on a free port, as a child process.

    ``start()`` migrates the instance's database (once) and returns when the server answers
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
            done = self.cli("db", "upgrade")
            assert done.returncode == 0, done.stderr
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
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout)

    def kill(self) -> None:
        """``kill -9``: no clean-up of any kind in the server."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
