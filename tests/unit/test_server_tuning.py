"""The server's speed tweaks on pynetdicom (archive_core/net/tuning.py): what they rely on, and that they apply.

pynetdicom polls: the DUL thread sleeps ``_run_loop_delay`` (1 ms) when its socket is idle and
the acceptor's reactor sleeps 1 ms before each look at the DIMSE queue. The server replaces both
sleeps on the associations it accepts, and turns Nagle off on their sockets. These are private
details of the pinned pynetdicom: an upgrade must go through this file.
"""

from __future__ import annotations

import inspect
import socket

import pynetdicom
import pytest
from pynetdicom import AE
from pynetdicom import association as pynetdicom_association
from pynetdicom import dul as pynetdicom_dul
from pynetdicom.sop_class import Verification

from tests.helpers import ROOT


def test_pynetdicom_is_the_pinned_version():
    pinned = next(line.split("==")[1].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
                  if line.lower().startswith("pynetdicom=="))
    assert pynetdicom.__version__ == pinned


def test_the_private_details_the_tuning_replaces_are_there():
    from pynetdicom.dimse import DIMSEServiceProvider
    from pynetdicom.dul import DULServiceProvider

    from archive_core.net import tuning

    dul_source = inspect.getsource(DULServiceProvider)
    assert "self._run_loop_delay = 0.001" in dul_source
    assert "time.sleep(self._run_loop_delay)" in dul_source
    assert "self.to_provider_queue" in dul_source
    # The acceptor's reactor: its 1 ms sleep is the literal tuning._REACTOR_POLL.
    reactor = inspect.getsource(pynetdicom_association.Association._run_reactor)
    assert f"time.sleep({tuning._REACTOR_POLL})" in reactor
    assert "self.dimse.get_msg()" in reactor or "self.dimse.get_msg(" in reactor
    assert "msg_queue" in inspect.getsource(DIMSEServiceProvider.__init__)
    assert hasattr(pynetdicom_dul, "time") and hasattr(pynetdicom_association, "time")


def _served(scp, title: str):
    # pynetdicom's acceptor marks itself established just after sending the A-ASSOCIATE-AC: the
    # requestor may see its association established a moment before.
    import time

    deadline = time.monotonic() + 5
    while True:
        served = [a for a in scp.ae.active_associations if a.is_established and a.requestor.ae_title == title]
        if served or time.monotonic() > deadline:
            (assoc,) = served
            return assoc
        time.sleep(0.01)


def test_accepted_associations_wait_instead_of_sleeping_and_have_nagle_off(scp):
    from archive_core.net import tuning

    ae = AE(ae_title="TUNING")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="ARCHIVAGE")
    assert assoc.is_established
    try:
        served = _served(scp, "TUNING")
        assert isinstance(served.dul.to_provider_queue, tuning._WakingQueue)
        assert callable(getattr(served.dul, "_archivage_wait", None))
        assert callable(getattr(served, "_archivage_wait", None))
        assert served.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert isinstance(pynetdicom_dul.time, tuning._TunableTime)
        # Our own requestor in the same process keeps pynetdicom's behaviour.
        assert not hasattr(assoc.dul, "_archivage_wait")
        assert assoc.dul._run_loop_delay == 0.001
        for _ in range(20):
            assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def test_each_association_gets_its_own_supported_contexts_without_a_deep_copy(scp):
    """pynetdicom deep-copies the server's supported contexts for every association it accepts
    (every storage class with every transfer syntax: tens of milliseconds). The server's list copies
    itself cheaply instead; each association must still negotiate from contexts of its own, equal to
    the server's (bad outcome tried: one association's negotiation changing the next one's contexts)."""
    import copy

    from pynetdicom import transport
    from pynetdicom.sop_class import CTImageStorage

    from archive_core.net import tuning

    assert "deepcopy(self.server.contexts)" in inspect.getsource(transport.RequestHandler._create_association)
    assert isinstance(scp.server.contexts, tuning.SupportedContexts)
    twins = copy.deepcopy(scp.server.contexts)
    assert len(twins) == len(scp.server.contexts) > 150
    for twin, context in zip(twins, scp.server.contexts):
        assert twin is not context and twin._transfer_syntax is not context._transfer_syntax
        assert (twin.abstract_syntax, twin.transfer_syntax, twin.scu_role, twin.scp_role) == (
            context.abstract_syntax, context.transfer_syntax, context.scu_role, context.scp_role)
    twins[0]._transfer_syntax.clear()
    assert scp.server.contexts[0].transfer_syntax
    for title in ("FIRST", "SECOND"):
        ae = AE(ae_title=title)
        ae.add_requested_context(Verification)
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="ARCHIVAGE")
        assert assoc.is_established
        try:
            assert len(assoc.accepted_contexts) == 2
            assert assoc.send_c_echo().Status == 0x0000
        finally:
            assoc.release()


def test_listening_socket_has_nagle_off(scp):
    assert scp.server.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


@pytest.mark.parametrize("delay", [0.002])
def test_a_non_zero_dul_loop_delay_turns_the_tuning_off(instance_path, delay):
    from archive_core.archive import Archive
    from archive_core.config import Settings
    from archive_core.net.server import start_server
    from tests.helpers import migrate

    settings = Settings(instance_path=instance_path, STORAGE_MIN_FREE_BYTES=0, DICOM_DUL_LOOP_DELAY=delay,
                        DICOM_STORE_FROM_UNKNOWN_AES=True)  # PLAIN is not a registered peer
    migrate(settings.database_url)
    archive = Archive.open(settings)
    running = start_server(archive, host="127.0.0.1", port=0)
    ae = AE(ae_title="PLAIN")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", running.port, ae_title="ARCHIVAGE")
    try:
        assert assoc.is_established
        served = _served(running, "PLAIN")
        assert served.dul._run_loop_delay == delay
        assert not hasattr(served.dul, "_archivage_wait")
        assert served.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
        running.stop()
        archive.close()


def test_the_private_details_the_edge_relies_on_are_there():
    """archive_core/net/chunked.py and limits.py: what they rely on in the pinned pynetdicom."""
    from pynetdicom import dimse_messages
    from pynetdicom.dul import DULServiceProvider
    from pynetdicom.service_class import StorageServiceClass

    # The chunked receive reads the switch through the module's own _config, at each C-STORE-RQ.
    assert "_config.STORE_RECV_CHUNKED_DATASET" in inspect.getsource(dimse_messages.DIMSEMessage.decode_msg)
    # Its temporary file: created by the module's NamedTemporaryFile once the command set is decoded;
    # the header written first, then each dataset fragment followed by a flush (chunked.ReceiveFile).
    decode = inspect.getsource(dimse_messages.DIMSEMessage.decode_msg)
    assert "NamedTemporaryFile(delete=False" in decode
    assert "write_file_meta_info(\n                            self._data_set_file," in decode
    assert "create_file_meta(" in decode
    assert "self._data_set_file.write(data[1:])\n                    self._data_set_file.file.flush()" in decode
    assert "primitive._dataset_file = self._data_set_file" in inspect.getsource(dimse_messages.DIMSEMessage)
    # ... and deletes the temporary file once the handler has answered.
    assert "os.unlink(req._dataset_file.name)" in inspect.getsource(StorageServiceClass.SCP)
    # The idle timer the handlers restart.
    assert "self._idle_timer = Timer(" in inspect.getsource(DULServiceProvider)
    # pynetdicom's own association count includes connections that have not asked yet.
    assert "tt for tt in self.assoc.ae.active_associations if tt.is_acceptor" in inspect.getsource(
        pynetdicom.acse.ACSE._negotiate_as_acceptor)


def test_the_chunked_receive_applies_to_the_servers_associations_only(scp):
    """Other pynetdicom users in the process keep their datasets in memory (the switch stays off)."""
    import threading

    from pynetdicom import _config, dimse_messages

    from archive_core.net import chunked

    assert chunked.is_installed()
    assert _config.STORE_RECV_CHUNKED_DATASET is False
    assert dimse_messages._config.STORE_RECV_CHUNKED_DATASET is False
    marked = threading.Thread(target=lambda: None)
    setattr(marked, chunked._MARK, True)
    seen = []
    marked.run = lambda: seen.append(dimse_messages._config.STORE_RECV_CHUNKED_DATASET)
    marked.start()
    marked.join()
    assert seen == [True]


def test_a_lent_dul_reads_nothing_until_given_back():
    """tuning.ReadGate, with a stand-in DUL loop (a thread that reads a socket whenever it is not
    parked). Bad cases tried: take() returning before the DUL is parked (both would read the
    same socket), a give_back() followed at once by take() letting the DUL run on, a killed DUL
    that stays parked."""
    import os
    import threading
    import time

    from archive_core.net.tuning import ReadGate

    ours, theirs = socket.socketpair()
    read_by_dul: list[bytes] = []

    class StandInDul(threading.Thread):
        _kill_thread = False
        turns = 0  # reads it ended

        def run(self) -> None:
            while not self._kill_thread:
                if gate.park():
                    continue
                ours.settimeout(0.01)
                try:
                    data = ours.recv(100)
                except TimeoutError:
                    continue
                finally:
                    self.turns += 1  # a read that ended: none may end once take() returned
                read_by_dul.append(data)

    wake = os.eventfd(0, os.EFD_NONBLOCK)
    dul = StandInDul(daemon=True)
    gate = ReadGate(dul, wake)
    dul.start()
    try:
        for n in range(50):
            assert gate.take(timeout=5)
            if n < 5:
                turns = dul.turns
                time.sleep(0.05)
                assert dul.turns == turns  # parked when take() returned, not a turn later
            theirs.sendall(b"x")
            ours.settimeout(5)
            assert ours.recv(100) == b"x"  # ours to read: the DUL read nothing
            gate.give_back()
            assert gate.take(timeout=5)  # at once: still parked, still ours
            gate.give_back()
        assert read_by_dul == []
        theirs.sendall(b"y")
        deadline = time.monotonic() + 5
        while not read_by_dul and time.monotonic() < deadline:
            time.sleep(0.01)  # polling the stand-in's list: it signals nothing
        assert read_by_dul == [b"y"]  # given back: the DUL reads again
        assert gate.take(timeout=5)
        dul._kill_thread = True
        dul.join(5)
        assert not dul.is_alive()  # a killed DUL leaves its park by itself
    finally:
        dul._kill_thread = True
        gate.give_back()
        ours.close()
        theirs.close()
        os.close(wake)


def _voluntary_switches(thread) -> int:
    """How many times *thread* blocked (each wake-up from a wait or a sleep is one), from /proc."""
    with open(f"/proc/self/task/{thread.native_id}/status") as f:
        status = f.read()
    return int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])


def test_an_idle_accepted_association_does_not_poll(scp):
    """The reactor of an accepted association waits for its next message instead of looking every
    millisecond (pynetdicom's polling: 1,000 wake-ups a second per open association, each taking the
    GIL from the threads that receive). Bad case tried: the 1 ms queue poll the tuning used before,
    which this counts at about 500 wake-ups in half a second."""
    import time

    ae = AE(ae_title="IDLE")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="ARCHIVAGE")
    assert assoc.is_established
    try:
        served = _served(scp, "IDLE")
        assert assoc.send_c_echo().Status == 0x0000
        before = _voluntary_switches(served)
        time.sleep(0.5)
        woken = _voluntary_switches(served) - before
        assert woken < 25, f"the idle reactor woke {woken} times in 0.5 s"
        assert assoc.send_c_echo().Status == 0x0000  # and it still answers at once
    finally:
        assoc.release()


def test_a_release_is_answered_at_once_by_a_waiting_reactor(scp):
    """The A-RELEASE request reaches the reactor through pynetdicom's queue to the user, not its
    message queue: that queue wakes the waiting reactor. Bad case tried: a reactor that only sees the
    release at the end of its wait (50 ms), which makes every short association 50 ms longer."""
    import statistics
    import time

    took = []
    for n in range(12):
        ae = AE(ae_title=f"REL{n}")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="ARCHIVAGE")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        time.sleep(0.005)  # the reactor is back in its wait
        started = time.monotonic()
        assoc.release()
        took.append(time.monotonic() - started)
        assert assoc.is_released
    assert statistics.median(took) < 0.03, f"releases took {sorted(took)}"


def test_whole_reads_read_what_came_in_one_buffer_and_stop_where_recv_stops():
    """inbound.whole_reads (an accepted plain socket's AssociationSocket.recv): the PDU whole from
    several writes; fewer bytes only when the peer closed, without a buffer the size of a PDU length
    the peer only claimed (bad input tried: 4 GiB announced, 10 bytes sent); a timeout raises."""
    import threading
    import time
    import tracemalloc

    from archive_core.net.inbound import whole_reads

    ours, theirs = socket.socketpair()
    try:
        ours.settimeout(5)
        recv = whole_reads(ours)
        payload = bytes(range(256)) * 4096  # 1 MiB, more than the socket holds at once

        def send_slowly():
            for start in range(0, len(payload), 300_000):
                theirs.sendall(payload[start:start + 300_000])
                time.sleep(0.01)

        sender = threading.Thread(target=send_slowly)
        sender.start()
        got = recv(len(payload))
        sender.join()
        assert isinstance(got, bytearray) and got == payload
        theirs.sendall(b"abcdef")
        assert recv(6) == b"abcdef"

        ours.settimeout(0.05)
        with pytest.raises(TimeoutError):
            recv(10)

        ours.settimeout(5)
        theirs.sendall(b"0123456789")
        theirs.close()
        tracemalloc.start()
        try:
            short = recv(1 << 32)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert short == b"0123456789"
        assert peak < 8 << 20
        assert recv(6) == b""
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize("body", [
    b"\x00\x00\x00\x10\x01\x03" + b"x" * 4,  # a PDV item announcing 16 bytes, 5 there
    b"\x00\x00\x00\x00\x01",  # a PDV item of length 0
    b"\x00\x00\x00",  # a PDV item header cut short
])
def test_a_malformed_p_data_pdu_aborts_the_association_and_the_server_goes_on(scp, body):
    """The P-DATA-TF PDUs of an accepted association are read without pynetdicom's decoder
    (inbound.ReceivedPData): one it would refuse is refused the same way (Evt19: the association is
    aborted), and the server serves the next association."""
    import struct
    import time

    ae = AE(ae_title="BROKEN")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="ARCHIVAGE")
    assert assoc.is_established
    _served(scp, "BROKEN")
    assoc.dul.socket.socket.sendall(struct.pack(">BBL", 0x04, 0, len(body)) + body)
    deadline = time.monotonic() + 5
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.01)
    assert assoc.is_aborted
    again = ae.associate("127.0.0.1", scp.port, ae_title="ARCHIVAGE")
    try:
        assert again.is_established and again.send_c_echo().Status == 0x0000
    finally:
        again.release()


def test_the_private_details_the_receive_path_relies_on_are_there():
    """What tuning.tune_acceptor replaces or calls in the pinned pynetdicom (an upgrade must come here)."""
    from pynetdicom import acse, dimse, fsm, transport
    from pynetdicom.dul import DULServiceProvider

    dul = inspect.getsource(DULServiceProvider)
    # The reads: one PDU per _read_pdu_data, from socket.recv, decoded by _decode_pdu into an event
    # and a PDU on _recv_pdu; a P-DATA-TF in Sta6 (Evt10) goes to DT-2, which only asks to_primitive().
    assert "def _read_pdu_data(self) -> None:" in dul and "self._read_pdu_data()" in dul
    assert "self.socket.recv(6)" in dul and "self.socket.recv(pdu_length)" in dul
    assert "pdu, event = self._decode_pdu(bytestream)" in dul and "self._recv_pdu.put(pdu)" in dul
    assert "dul.assoc.dimse.receive_primitive(cast(\"P_DATA\", pdu.to_primitive()))" in inspect.getsource(fsm.DT_2)
    assert fsm.TRANSITION_TABLE[("Evt10", "Sta6")] == "DT-2"
    assert "bufsize = 4096" in inspect.getsource(transport.AssociationSocket.recv)
    # The reactor: sees a release or an abort by peeking to_user_queue; pauses at its checkpoint.
    assert "self.to_user_queue.queue[0]" in dul
    assert "self.dul.peek_next_pdu()" in inspect.getsource(acse.ACSE.is_release_requested)
    assert "self._reactor_checkpoint.wait()" in inspect.getsource(pynetdicom_association.Association._run_reactor)
    # The sends: a DIMSE message becomes P-DATA primitives queued one by one to the DUL.
    send = inspect.getsource(dimse.DIMSEServiceProvider.send_msg)
    assert "dimse_msg.encode_msg(context_id, self.maximum_pdu_size)" in send and "self.dul.send_pdu(pdata)" in send
    assert "dul._send(P_DATA_TF(primitive))" in inspect.getsource(fsm.DT_1)
