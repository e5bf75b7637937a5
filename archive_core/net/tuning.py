"""Per-association tuning of pynetdicom: Nagle off, and no fixed sleeps on the message path.

pynetdicom (pinned in requirements.txt) polls: its DUL thread sleeps ``_run_loop_delay``
(1 ms) whenever the socket is idle, and the acceptor's reactor sleeps 1 ms before each look at
the DIMSE queue. On loopback that doubles the time of a small C-STORE. For the associations we
accept, both sleeps are replaced by waits that end as soon as there is work: the DUL waits on
its socket and on an eventfd written whenever a primitive is queued for sending, and the reactor
waits on its message queue, woken by a message, a release or abort request or a pause, and
otherwise every 50 ms (it polled every millisecond). An idle association still wakes only every
few milliseconds.

On an accepted plain (not TLS) association, the receive path also skips pynetdicom's costliest
steps, which with several associations in one process are GIL hand-offs between threads: a PDU
is read in as few system calls as the socket gives it (pynetdicom: 4 KiB per ``recv`` and a poll
before each), a P-DATA-TF PDU reaches the DIMSE decoder as views of that buffer (no copies), and
a C-STORE response is written by the thread that answers instead of being queued to the DUL
thread. docs/performance.md ("Ingest with several SCP processes") has the measures.
tests/unit/test_server_tuning.py covers the private attributes this relies on.
"""

from __future__ import annotations

import copy
import logging
import os
import queue
import select
import socket
import ssl
import struct
import threading
import time as _time
import weakref

from pynetdicom import association as _association
from pynetdicom import dul as _dul
from pynetdicom import evt
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

log = logging.getLogger(__name__)

_REACTOR_POLL = 0.001  # the literal pynetdicom's acceptor reactor sleeps
_IDLE_WAIT = 0.005  # longest wait before the DUL looks at its timers again
# Longest wait of an accepted association's reactor for a DIMSE message: whatever else it must see
# (a release or abort request, a pause) wakes it at once (_ReactorQueue.nudge); only its timers
# (network timeout) and a DUL that died without a word are seen this late.
_REACTOR_IDLE = 0.05
_PDU_TYPES = frozenset(range(0x01, 0x08))
_READ_FIRST = 1 << 21  # a PDU is read into a buffer this large at first, grown as its bytes arrive


class _TunableTime:
    """Stands in for ``time`` inside one pynetdicom module; tuned threads wait instead of sleeping."""

    def __init__(self, real) -> None:
        self._real = real

    def __getattr__(self, name: str):
        return getattr(self._real, name)

    def sleep(self, seconds: float) -> None:
        wait = getattr(threading.current_thread(), "_archivage_wait", None)
        if wait is not None and wait(seconds):
            return
        self._real.sleep(seconds)


class _WakingQueue(queue.Queue):
    """The DUL's outgoing queue: every put also wakes the DUL thread through an eventfd."""

    def __init__(self) -> None:
        super().__init__()
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        try:
            os.eventfd_write(self.fd, 1)
        except OSError:
            pass

    def __del__(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


class _ReactorQueue(queue.Queue):
    """An accepted association's DIMSE message queue (``dimse.msg_queue``), on which its reactor
    waits (:meth:`reactor_get`) until a message arrives or it is nudged, instead of looking every
    millisecond: four idle reactors polling took the GIL 4,000 times a second from the threads
    that receive (docs/performance.md, "Ingest with several SCP processes")."""

    def __init__(self) -> None:
        super().__init__()
        self._nudged = False

    def nudge(self) -> None:
        """Wake the reactor: something besides a message needs its look (release, abort, pause)."""
        with self.not_empty:
            self._nudged = True
            self.not_empty.notify_all()

    def reactor_get(self, timeout: float):
        with self.not_empty:
            if not self._qsize() and not self._nudged:
                self.not_empty.wait(timeout)
            self._nudged = False
            if not self._qsize():
                return None, None
            item = self._get()
            self.not_full.notify()
            return item


class _NudgingQueue(queue.Queue):
    """The DUL's queue to the association (``to_user_queue``: A-RELEASE, A-ABORT, A-P-ABORT
    indications), whose every put also wakes the reactor."""

    def __init__(self, reactor: _ReactorQueue) -> None:
        super().__init__()
        self._reactor = reactor

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._reactor.nudge()


class _NudgingEvent(threading.Event):
    """The reactor's checkpoint: pausing it (``clear``, before a send on the association from another
    thread) wakes it, so it reaches the checkpoint at once and the waiting sender goes on."""

    def __init__(self, reactor: _ReactorQueue, was_set: bool) -> None:
        super().__init__()
        self._reactor = reactor
        if was_set:
            self.set()

    def clear(self) -> None:
        super().clear()
        self._reactor.nudge()


def _whole_reads(raw: socket.socket):
    """``AssociationSocket.recv`` for a plain (not TLS) accepted socket: read *nr_bytes* in as few
    system calls as the socket gives them, into one buffer.

    pynetdicom reads 4 KiB per ``recv`` (and, the socket having a timeout, polls before each one):
    256 system calls for a 512 KiB CT image, each a release and a re-acquisition of the GIL; with
    several associations each of those is a hand-off to another thread and back. Here each call
    reads whatever has arrived (``readv`` into the buffer, no poll while data is there), and polls
    only when nothing has. Same contract: returns fewer bytes only when the peer closed; a
    timeout or a socket error raises as ``socket.recv`` would.
    """

    def recv(nr_bytes: int) -> bytearray:
        buffer = bytearray(min(nr_bytes, _READ_FIRST))  # a PDU length is the peer's word: grown as bytes arrive
        got = 0
        while got < nr_bytes:
            if got == len(buffer):
                buffer.extend(bytes(min(nr_bytes - got, len(buffer))))
            fd = raw.fileno()  # -1 once closed: EBADF, as socket.recv would raise
            view = memoryview(buffer)[got:]
            try:
                count = os.readv(fd, [view])
            except (BlockingIOError, InterruptedError):
                count = None
            finally:
                view.release()
            if count is None:
                ready, _, _ = select.select([fd], [], [], raw.gettimeout())
                if not ready:
                    raise TimeoutError("timed out")
                continue
            if count == 0:  # the peer closed
                break
            got += count
        if got < len(buffer):
            del buffer[got:]
        return buffer

    return recv


def _direct_store_responses(assoc, raw: socket.socket) -> None:
    """C-STORE responses of an accepted plain association written by the thread that answers (its
    reactor), under a lock every write of the DUL takes too, instead of being queued to the DUL
    thread: one thread wake-up and one GIL hand-off less per stored object.

    Only in the data transfer state (Sta6) and with nothing queued for the DUL (what was queued
    before goes first); otherwise, and for every other message, pynetdicom's path. The bytes are
    those pynetdicom's DUL would write (the same encoder); a failed write is reported to the DUL
    as a closed connection (Evt17), as its own send does.
    """
    dimse, dul = assoc.dimse, assoc.dul
    sock = dul.socket
    lock = threading.Lock()
    send = sock.send

    def locked_send(data: bytes) -> None:
        with lock:
            send(data)

    sock.send = locked_send  # this association's socket object only
    queued_send_msg = dimse.send_msg
    pending = dul.to_provider_queue.queue

    def send_msg(primitive, context_id: int) -> None:
        if (type(primitive) is not C_STORE or primitive.MessageIDBeingRespondedTo is None or pending
                or dul.state_machine.current_state != "Sta6"):
            queued_send_msg(primitive, context_id)
            return
        message = C_STORE_RSP()
        message.primitive_to_message(primitive)
        message.context_id = context_id
        evt.trigger(assoc, evt.EVT_DIMSE_SENT, {"message": message})
        data = b"".join(P_DATA_TF(p_data).encode() for p_data in message.encode_msg(context_id, dimse.maximum_pdu_size))
        with lock:
            try:
                raw.sendall(data)
            except OSError:
                dul.event_queue.put("Evt17")

    dimse.send_msg = send_msg


class _ReceivedPData:
    """A P-DATA-TF PDU as received, its PDVs views of the buffer it was read into.

    pynetdicom copies a received PDU four times before a fragment reaches its file (the PDU's
    bytes, its body, each item, each value): 2 MiB of copying for a 512 KiB CT image. Only
    :meth:`to_primitive` is asked of it (pynetdicom's DT-2, in the data transfer state).
    """

    __slots__ = ("_items",)

    def __init__(self, body: bytearray) -> None:
        view = memoryview(body)
        items, pos, end = [], 0, len(view)
        while pos < end:
            # Refused where pynetdicom's decoder fails: a cut item header, an item of length 0, an
            # item running past the PDU.
            if pos + 5 > end:
                raise ValueError("P-DATA-TF ends inside a PDV item header")
            length = int.from_bytes(view[pos:pos + 4], "big")
            if length < 1 or pos + 4 + length > end:
                raise ValueError("PDV item length does not fit the P-DATA-TF PDU")
            items.append((view[pos + 4], view[pos + 5:pos + 4 + length]))
            pos += 4 + length
        self._items = items

    def to_primitive(self) -> P_DATA:
        primitive = P_DATA()
        # pynetdicom's setter wants bytes; its decoder reads a view alike (first byte, then a slice written out).
        primitive._presentation_data_value_list = self._items
        return primitive


def _p_data_reads(dul):
    """The DUL's ``_read_pdu_data`` for an accepted plain association: a P-DATA-TF PDU in the data
    transfer state becomes a :class:`_ReceivedPData` (no copies); anything else, in any other
    state, is read and decoded as pynetdicom does. The same events as pynetdicom's: Evt10 for a
    P-DATA-TF, Evt17 for a connection closed or cut short, Evt19 for an unknown or invalid PDU.
    """
    original = dul._read_pdu_data
    sock = dul.socket

    def read_pdu_data() -> None:
        if dul.state_machine.current_state != "Sta6":
            original()
            return
        try:
            head = sock.recv(6)
            if len(head) < 6:
                dul.event_queue.put("Evt17")
                return
            pdu_type, _, length = struct.unpack(">BBL", head)
            if pdu_type not in _PDU_TYPES:
                log.error("unknown PDU type 0x%02X received", pdu_type)
                dul.event_queue.put("Evt19")
                return
            body = sock.recv(length)
        except (OSError, TimeoutError) as exc:
            log.error("connection closed before the entire PDU was received: %s", exc)
            dul.event_queue.put("Evt17")
            return
        if len(body) != length:
            log.error("the received PDU is shorter than expected (%d of %d bytes)", 6 + len(body), 6 + length)
            dul.event_queue.put("Evt17")
            return
        try:
            if pdu_type == 0x04:
                pdu, event = _ReceivedPData(body), "Evt10"
            else:
                pdu, event = dul._decode_pdu(head + body)
        except Exception as exc:
            log.error("unable to decode the received PDU: %s", exc)
            dul.event_queue.put("Evt19")
            return
        dul.event_queue.put(event)
        dul._recv_pdu.put(pdu)

    return read_pdu_data


def install() -> None:
    """Route pynetdicom's sleeps through :class:`_TunableTime` (idempotent; untuned threads sleep as before)."""
    for module in (_association, _dul):
        if not isinstance(module.time, _TunableTime):
            module.time = _TunableTime(module.time)


class SupportedContexts(list):
    """A server's supported presentation contexts, copied cheaply for each association it accepts.

    pynetdicom deep-copies the server's contexts for every association (``transport.py``,
    ``_create_association``): with every storage SOP class and every transfer syntax (about 170
    contexts, 7,600 UIDs) that is tens of milliseconds before the A-ASSOCIATE-AC, longer than a
    whole C-FIND. Each association still gets its own context objects and transfer syntax lists;
    the UIDs in them are immutable strings and are shared.
    """

    def __deepcopy__(self, memo) -> list:
        copies = []
        for context in self:
            twin = copy.copy(context)
            twin._transfer_syntax = list(context._transfer_syntax)
            copies.append(twin)
        return copies


def set_nodelay(sock: socket.socket | None) -> None:
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class ReadGate:
    """Lends the reads of one association's socket to another thread (the sender of stored objects,
    archive_core/net/wire.py), which then reads the peer's answers itself: the DUL thread, at its
    next idle wait, parks until they are given back, and so reads nothing meanwhile.

    Only an idle DUL parks (it has no event left to process), and whatever it read before is
    already on pynetdicom's queues. :meth:`take` returns once the DUL is parked (False if it did
    not park within the timeout: the reads stay the DUL's); :meth:`give_back` lets it run on.
    A killed DUL leaves its park by itself.
    """

    def __init__(self, dul, wake_fd: int) -> None:
        self._dul = dul
        self._wake_fd = wake_fd
        self._cond = threading.Condition()
        self._lent = False
        self._parked = False

    @property
    def lent(self) -> bool:
        return self._lent

    def take(self, timeout: float = 1.0) -> bool:
        with self._cond:
            if self._lent and self._parked:
                return True
            self._lent = True
            try:
                os.eventfd_write(self._wake_fd, 1)  # out of its select
            except OSError:
                pass
            if self._cond.wait_for(lambda: self._parked, timeout):
                return True
            self._lent = False
            self._cond.notify_all()
            return False

    def give_back(self) -> None:
        with self._cond:
            if self._lent:
                self._lent = False
                self._cond.notify_all()

    def park(self) -> bool:
        """In the DUL thread: wait here while the reads are lent (True if it waited)."""
        if not self._lent:
            return False
        with self._cond:
            if not self._lent:
                return False
            self._parked = True
            self._cond.notify_all()
            while self._lent and not self._dul._kill_thread:
                self._cond.wait(0.5)
            self._parked = False
        return True


def _dul_wait(raw: socket.socket, wake_fd: int, gate: ReadGate | None = None):
    """The DUL's idle wait: until its socket is readable or something is queued for sending (*wake_fd*);
    parked while *gate* lends its reads."""

    def dul_wait(seconds: float) -> bool:
        if gate is not None and gate.park():
            return True
        if seconds > _REACTOR_POLL:
            return False
        try:
            ready, _, _ = select.select([raw, wake_fd], [], [], _IDLE_WAIT)
        except (OSError, ValueError):
            return False
        if wake_fd in ready:
            try:
                os.eventfd_read(wake_fd)
            except OSError:
                pass
        return True

    return dul_wait


def tune_acceptor(assoc) -> None:
    """Tune an accepted association before its threads start (pynetdicom's EVT_CONN_OPEN)."""
    raw = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    set_nodelay(raw)
    dul = assoc.dul
    outgoing = _WakingQueue()
    dul.to_provider_queue = outgoing
    if raw is not None:
        dul._archivage_gate = ReadGate(dul, outgoing.fd)
        dul._archivage_wait = _dul_wait(raw, outgoing.fd, dul._archivage_gate)

    # Before the association's threads start: nothing is queued yet.
    messages = _ReactorQueue()
    assoc.dimse.msg_queue = messages
    dul.to_user_queue = _NudgingQueue(messages)
    assoc._reactor_checkpoint = _NudgingEvent(messages, assoc._reactor_checkpoint.is_set())
    if raw is not None and not isinstance(raw, ssl.SSLSocket):
        dul.socket.recv = _whole_reads(raw)  # this association's socket object only
        _direct_store_responses(assoc, raw)
        # Unless something watches the bytes received (pynetdicom's debug log handlers, say).
        if not assoc.get_handlers(evt.EVT_DATA_RECV) and not assoc.get_handlers(evt.EVT_PDU_RECV):
            dul._read_pdu_data = _p_data_reads(dul)
    blocking_get = assoc.dimse.get_msg

    def get_msg(block: bool = False):
        if block:
            return blocking_get(block=True)
        return messages.reactor_get(_REACTOR_IDLE)

    assoc.dimse.get_msg = get_msg
    # The reactor's own 1 ms sleep is skipped: the queue wait above takes its place.
    assoc._archivage_wait = lambda seconds: seconds == _REACTOR_POLL


def tune_requestor(assoc) -> None:
    """The DUL of an association we requested (C-MOVE destinations, send jobs) with no loop delay
    spins through ``time.sleep(0)``, a core taken from the sender on a small machine: it waits
    instead, as an acceptor's does (:func:`tune_acceptor`), woken by its socket or by a primitive
    queued for sending (this association's queue only: its ``put`` also writes an eventfd)."""
    dul = assoc.dul
    raw = dul.socket.socket if dul.socket is not None else None
    if raw is None:
        return
    wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    outgoing = dul.to_provider_queue
    put = outgoing.put

    def waking_put(item, block: bool = True, timeout: float | None = None) -> None:
        put(item, block, timeout)
        try:
            os.eventfd_write(wake_fd, 1)
        except OSError:
            pass

    outgoing.put = waking_put
    weakref.finalize(outgoing, os.close, wake_fd)
    dul._archivage_gate = ReadGate(dul, wake_fd)
    dul._archivage_wait = _dul_wait(raw, wake_fd, dul._archivage_gate)


__all__ = ["install", "ReadGate", "set_nodelay", "SupportedContexts", "tune_acceptor", "tune_requestor", "_time"]
