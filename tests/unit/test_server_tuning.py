"""The server's two speed tweaks: pynetdicom's DUL idle sleep off, and TCP_NODELAY on every socket."""

from __future__ import annotations

import socket

import pynetdicom
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.helpers import ROOT


def test_pynetdicom_is_the_pinned_version_whose_dul_has_run_loop_delay():
    # _run_loop_delay is private: a pynetdicom upgrade must go through this test.
    pinned = next(line.split("==")[1].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
                  if line.lower().startswith("pynetdicom=="))
    assert pynetdicom.__version__ == pinned


def test_server_associations_have_no_idle_sleep_and_nagle_off(scp, archive):
    ae = AE(ae_title="TUNING")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="ARCHIVAGE")
    assert assoc.is_established
    try:
        # Our own requestor side keeps pynetdicom's default: the attribute exists and is 1 ms.
        assert assoc.dul._run_loop_delay == 0.001
        served = [a for a in scp.ae.active_associations if a.is_established]
        assert len(served) == 1
        server_side = served[0]
        assert server_side.dul._run_loop_delay == archive.settings.DICOM_DUL_LOOP_DELAY == 0
        sock = server_side.dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def test_listening_socket_has_nagle_off(scp):
    assert scp.server.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0

