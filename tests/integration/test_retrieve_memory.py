"""Memory of the ``archive serve`` process while it sends a study of large objects (C-GET and C-MOVE)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.helpers import free_port, make_ct, peak_rss, require_tool, tool_env

pytestmark = pytest.mark.dcmtk

ROWS = 4096  # 4096 x 4096 x 16 bits: 32 MiB of pixel data per object
OBJECT_BYTES = ROWS * ROWS * 2


def _dcmtk(tool: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool(tool), *args], env=tool_env(), capture_output=True, text=True,
                          timeout=timeout)




def _study(tmp_path: Path, name: str, count: int, rows: int) -> tuple[str, list[Path]]:
    study, series = generate_uid(), generate_uid()
    files = []
    for n in range(count):
        path = tmp_path / f"{name}{n}.dcm"
        make_ct(study_uid=study, series_uid=series, rows=rows, InstanceNumber=n + 1).save_as(
            path, enforce_file_format=True)
        files.append(path)
    return study, files


def test_sending_a_study_of_large_objects_streams_each_file(archive_process, tmp_path):
    """The archive sends each stored file in PDU-sized chunks, never holding an object whole.

    Bad case tried: the sender as it was, reading each 32 MiB file whole and handing pynetdicom a
    copy of every fragment (its peak grew by more than two objects). Three 32 MiB objects are
    stored, the server is restarted (its peak memory starts afresh), warmed up with a C-GET of a
    small study, then the large study goes out by C-GET (getscu) and by C-MOVE (to a storescp), both
    discarding: its peak may not grow by a quarter of one object.
    """
    storescp = require_tool("storescp")
    small, small_files = _study(tmp_path, "small", 2, 16)
    large, large_files = _study(tmp_path, "large", 3, ROWS)
    port = str(archive_process.port)
    done = _dcmtk("storescu", "-aec", "ARCHIVAGE", "127.0.0.1", port, *map(str, small_files + large_files))
    assert done.returncode == 0, done.stdout + done.stderr
    for path in large_files:
        path.unlink()
    dest_port = free_port()
    for ae, peer_port in (("GETTER", "104"), ("DEST", str(dest_port))):
        assert archive_process.cli("peers", "add", ae, "127.0.0.1", peer_port).returncode == 0
    archive_process.stop()
    archive_process.start()

    def retrieve(study: str) -> None:
        keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
        got = _dcmtk("getscu", "-S", "-aet", "GETTER", "-aec", "ARCHIVAGE", "--ignore", *keys, "127.0.0.1", port)
        assert got.returncode == 0 and "Failed" not in got.stdout + got.stderr, got.stdout + got.stderr
        moved = _dcmtk("movescu", "-S", "-aet", "GETTER", "-aec", "ARCHIVAGE", "-aem", "DEST", *keys, "127.0.0.1", port)
        assert moved.returncode == 0, moved.stdout + moved.stderr

    receiver = subprocess.Popen([storescp, "--ignore", "-aet", "DEST", str(dest_port)], env=tool_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        retrieve(small)
        before = peak_rss(archive_process.proc.pid)
        retrieve(large)
        after = peak_rss(archive_process.proc.pid)
    finally:
        receiver.terminate()
        receiver.wait(30)
    log = archive_process.log()
    assert "C-GET from GETTER: 3 instances" in log and "C-MOVE from GETTER: 3 instances" in log, log[-3000:]
    assert after - before < OBJECT_BYTES // 4, f"peak RSS grew by {(after - before) >> 20} MiB"
