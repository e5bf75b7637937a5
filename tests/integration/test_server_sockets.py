"""The archive closes every connection it is done with, however the peer behaved.

tests/integration/conftest.py collects the sockets pynetdicom leaves behind in the *client's*
process; this test makes sure the same leak does not exist on the server's side, where it would
run a busy archive out of file descriptors. Peers tried, twenty times each, against `archive
serve` as a child process (one process, then two workers): a calling AE title nobody registered
(A-ASSOCIATE-RJ), an association aborted by the peer (A-ABORT), a TCP connection closed without a
word, a connection that sends bytes that are no PDU, and DCMTK's `echoscu` (a normal release).
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.helpers import require_tool, tool_env
from tests.servers import ArchiveProcess

pytestmark = pytest.mark.dcmtk


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            pass  # a thread or a short-lived child that ended while being read
    return pids


def _sockets(pid: int) -> int:
    """Sockets held by the archive's process and its workers."""
    count = 0
    for p in _tree(pid):
        try:
            for fd in Path(f"/proc/{p}/fd").iterdir():
                try:
                    count += str(fd.readlink()).startswith("socket:[")
                except OSError:
                    pass
        except OSError:
            pass
    return count


def _settled(pid: int, baseline: int, timeout: float = 15) -> int:
    deadline = time.monotonic() + timeout
    while (now := _sockets(pid)) > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    return now


def _bad_peers(port: int) -> None:
    unknown = AE(ae_title="NOBODY")
    unknown.add_requested_context(Verification)
    known = AE(ae_title="CT1")
    known.add_requested_context(Verification)
    for _ in range(20):
        refused = unknown.associate("127.0.0.1", port, ae_title="ARCHIVAGE")
        assert refused.is_rejected
        leftover = getattr(getattr(refused.dul, "socket", None), "socket", None)
        if leftover is not None:
            leftover.close()  # pynetdicom's own leak, in this process
        aborted = known.associate("127.0.0.1", port, ae_title="ARCHIVAGE")
        assert aborted.is_established
        aborted.abort()
        with socket.create_connection(("127.0.0.1", port)):
            pass
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\nHost: archive\r\n\r\n")
            raw.settimeout(30)
            # The archive answers with an A-ABORT (PDU type 07H) and waits for the peer to close.
            assert raw.recv(4096)[:1] == b"\x07"
        done = subprocess.run(["echoscu", "-aet", "CT1", "-aec", "ARCHIVAGE", "127.0.0.1", str(port)],
                              env=tool_env(), capture_output=True, timeout=30)
        assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_no_socket_is_left_open_by_refused_aborted_or_garbage_connections(tmp_path, workers):
    require_tool("echoscu")
    server = ArchiveProcess(tmp_path / "instance", open_storage=False,
                            env={"ARCHIVAGE_DICOM_WORKERS": workers})
    server.start()
    try:
        assert server.cli("peers", "add", "CT1", "127.0.0.1", "104").returncode == 0
        baseline = _settled(server.proc.pid, 0, timeout=0)
        _bad_peers(server.port)
        after = _settled(server.proc.pid, baseline)
        assert after <= baseline, f"{after - baseline} sockets left open after 100 connections"
        # and it still answers
        done = subprocess.run(["echoscu", "-aet", "CT1", "-aec", "ARCHIVAGE", "127.0.0.1", str(server.port)],
                              env=tool_env(), capture_output=True, timeout=30)
        assert done.returncode == 0, done.stderr
    finally:
        server.stop()
