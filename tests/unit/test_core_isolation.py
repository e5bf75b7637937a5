"""The archive core stands alone: no Flask, back-office, WeasyPrint or APScheduler in its process."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT
from tests.servers import ArchiveProcess, echo

FORBIDDEN = ("flask", "backoffice", "weasyprint", "apscheduler")


def test_core_modules_import_nothing_of_the_back_office():
    code = (
        "import importlib, pkgutil, sys\n"
        "import archive_core.__main__, archive_core.net.server, archive_core.api, archive_core.maintenance\n"
        "import archive_core\n"
        "for m in pkgutil.walk_packages(archive_core.__path__, 'archive_core.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
        "assert 'archive_core.net.server' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_python_m_archive_core_serve_answers_c_echo(tmp_path):
    # The database is migrated with `flask --app wsgi db upgrade`; the server itself is the bare core.
    server = ArchiveProcess(tmp_path / "instance", command=[sys.executable, "-m", "archive_core", "serve"])
    server.start()
    try:
        assert echo(server.port) == 0x0000
        assert f"listening on port {server.port}" in server.log()
    finally:
        assert server.stop() == 0  # SIGTERM: a clean stop
