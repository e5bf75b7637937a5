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
thread (archive_core/net/inbound.py). docs/performance.md ("Ingest with several SCP processes") has the measures.
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
import threading
import time as _time
import weakref

from archive_core.net import inbound
from pynetdicom import association as _association
from pynetdicom import dul as _dul
from pynetdicom import evt

log = logging.getLogger(__name__)

_REACTOR_POLL = 0.001  # the literal pynetdicom's acceptor reactor sleeps
_IDLE_WAIT = 0.005  # longest wait before the DUL looks at its timers again
# Longest wait of an accepted association's reactor for a DIMSE message: whatever else it must see
# (a release or abort request, a pause) wakes it at once (_ReactorQueue.nudge); only its timers
# (network timeout) and a DUL that died without a word are seen this late.
_REACTOR_IDLE = 0.05


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
        dul.socket.recv = inbound.whole_reads(raw)  # this association's socket object only
        inbound.direct_store_responses(assoc, raw)
        # Unless something watches the bytes received (pynetdicom's debug log handlers, say).
        if not assoc.get_handlers(evt.EVT_DATA_RECV) and not assoc.get_handlers(evt.EVT_PDU_RECV):
            dul._read_pdu_data = inbound.p_data_reads(dul)
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
