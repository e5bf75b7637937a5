"""Sending a C-STORE on an association (:func:`send_c_store`), bound to each association that sends
stored objects, and the pending C-MOVE/C-GET responses of an association that serves them.

Every association that sends stored objects sends them through :func:`send_c_store`, bound to that
association (:func:`use_stored_sender`): an instance whose stored transfer syntax the receiver
accepted (:class:`archive_core.net.outgoing.StoredDataset`) goes out as the bytes received, never
decoded (:class:`archive_core.net.wire.Wire`); any other goes through pynetdicom's own
``send_c_store``. Nothing depends on process-wide patching, so the web, scheduler and archive
processes send the same bytes.
"""

from __future__ import annotations

import functools
import logging
import threading
import time

from pydicom.dataset import Dataset
from pynetdicom.association import Association

from archive_core.net.framing import StoreStatus, pending_response_command, store_command
from archive_core.net.wire import HANDED_BACK, Wire, peer_title

log = logging.getLogger(__name__)


def send_c_store(assoc: Association, dataset: Dataset, msg_id: int = 1, priority: int = 2,
                 originator_aet: str | None = None, originator_id: int | None = None):
    """pynetdicom's ``Association.send_c_store``, sending a :class:`StoredDataset` as its stored bytes.

    The stored syntax must be an accepted context of the SOP class (``load_for_sending`` makes
    sure of it). The request is framed here straight into P-DATA-TF PDUs and written to the
    association's socket by the calling thread (:class:`Wire`); the response is read from the
    socket by the same thread while the DUL thread is parked (:meth:`Wire.store_response`), or,
    for anything else than a plain C-STORE-RSP, by pynetdicom (no asynchronous operations are
    negotiated: each request waits for its response). Returns a :class:`StoreStatus`, or an
    empty dataset when no answer came. The steps around the message are pynetdicom's own
    (pinned in requirements.txt; tests/unit/test_sender.py covers the private attributes used).
    """
    raw = getattr(dataset, "_archivage_raw", None)
    if raw is None:  # converted (or unsendable): pynetdicom encodes it
        give_back_reads(assoc)
        after_send = assoc.__dict__.get("_archivage_after_send")
        if after_send is not None:
            after_send()
        answer = Association.send_c_store(assoc, dataset, msg_id=msg_id, priority=priority,
                                          originator_aet=originator_aet, originator_id=originator_id)
        if getattr(assoc, "_archivage_held", False) and assoc.is_established:
            _wait_resumed(assoc)  # pynetdicom resumed the reactor: hold it again
            _pause(assoc)
        return answer
    if not assoc.is_established:
        raise RuntimeError("the association is not established")
    sop_class = str(dataset.SOPClassUID)
    context_id = Wire.of(assoc).context_id(sop_class, str(dataset.file_meta.TransferSyntaxUID))
    command = store_command(msg_id, sop_class, str(dataset.SOPInstanceUID), priority, originator_aet, originator_id)
    # As pynetdicom does: pause the association's reactor so the response is ours to read (a
    # C-GET's sub-operations run in the reactor's own thread, which is paused while it serves).
    if getattr(assoc, "_archivage_hold", False) and not getattr(assoc, "_archivage_held", False):
        hold(assoc)
    paused_here = threading.current_thread() is not assoc and not getattr(assoc, "_archivage_held", False)
    if paused_here:
        _pause(assoc)
    try:
        wire = Wire.of(assoc)
        reads = wire.take_reads()
        try:
            wire.send(context_id, command, raw)
        except ConnectionError as exc:  # the peer closed or aborted while we wrote: no response will come
            log.warning("association with %s lost while sending %s: %s", peer_title(assoc), dataset.SOPInstanceUID, exc)
            _lost(assoc)
            return Dataset()
        after_send = assoc.__dict__.get("_archivage_after_send")
        if after_send is not None:
            after_send()
        if reads:
            wire.read_ahead(dataset.__dict__.get("_archivage_next"))
        answer = wire.store_response(msg_id) if reads else HANDED_BACK
        if answer is HANDED_BACK:  # pynetdicom's DUL reads (and decodes) the answer
            if getattr(assoc, "_archivage_held", False) or reads:
                rsp = _response(assoc)
            else:
                rsp = assoc.dimse.get_msg(block=True)[1]
            answer = _status_of(assoc, rsp) if rsp is not None else None
    finally:
        if paused_here:
            give_back_reads(assoc)
            assoc._reactor_checkpoint.set()
            _wait_resumed(assoc)
    if answer is None:
        if assoc.is_established:
            give_back_reads(assoc)
            assoc._handle_no_response()  # DIMSE timeout: pynetdicom aborts
        return Dataset()
    return answer


def _status_of(assoc: Association, rsp) -> "StoreStatus | None":
    # pynetdicom's _check_received_status, without a pydicom dataset.
    if not rsp.is_valid_response:
        log.error("invalid %s response from %s", type(rsp).__name__, peer_title(assoc))
        assoc.abort()
        return None
    return StoreStatus(rsp.Status, rsp.ErrorComment, rsp.OffendingElement)


def give_back_reads(assoc) -> None:
    """Let pynetdicom's DUL thread read this association's socket again (see :meth:`Wire.take_reads`)."""
    wire = getattr(assoc, "_archivage_wire", None)
    if wire is not None:
        wire.give_back_reads()


def frame_pending_responses(assoc: Association, *, deferred: bool = False) -> None:
    """Make the pending C-MOVE/C-GET responses pynetdicom sends on *assoc* (one per sub-operation)
    go out as a patched command set written by the calling thread (:meth:`Wire.send_command`): pynetdicom
    builds a pydicom command set and queues it to its DUL thread for each. Other messages, and
    everything on other associations, go through pynetdicom as before.

    *deferred* (C-MOVE): each pending response is written just after the next C-STORE request has
    gone to the destination (see :class:`Capture`), so that the requestor's reading it overlaps
    with the destination's work instead of delaying the next request; any left go before the
    final response."""
    dimse = assoc.dimse
    dimse._archivage_deferred = deferred  # for this operation (a C-GET may follow a C-MOVE)
    if getattr(dimse, "_archivage_framed", False):
        return
    send_msg = dimse.send_msg

    def framed_send_msg(primitive, context_id: int) -> None:
        command = pending_response_command(primitive) if assoc.is_established else None
        if command is None:
            flush_pending_responses(assoc)
            give_back_reads(assoc)  # a final response: pynetdicom's DUL writes it and reads what follows
            send_msg(primitive, context_id)
            return
        if dimse._archivage_deferred:
            Wire.of(assoc).defer(context_id, command)
            return
        try:
            Wire.of(assoc).send_command(context_id, command)
        except ConnectionError as exc:  # as pynetdicom's DUL does: the closed connection ends the association
            log.warning("association with %s lost while answering: %s", peer_title(assoc), exc)

    dimse.send_msg = framed_send_msg  # this association's DIMSE provider only
    dimse._archivage_framed = True


def flush_pending_responses(assoc) -> None:
    """Write the pending responses deferred on *assoc* (see :func:`frame_pending_responses`)."""
    wire = getattr(assoc, "_archivage_wire", None)
    if wire is None or not wire.deferred:
        return
    try:
        wire.flush_deferred()
    except ConnectionError as exc:  # as pynetdicom's DUL does: the closed connection ends the association
        log.warning("association with %s lost while answering: %s", peer_title(assoc), exc)


def _response(assoc: Association):
    """The peer's answer while the reactor is held: what the reactor would notice (an A-ABORT, a
    closed connection) ends the wait, instead of the whole DIMSE timeout."""
    import queue

    deadline = time.monotonic() + (assoc.dimse_timeout or 1e9)
    while time.monotonic() < deadline:
        try:
            return assoc.dimse.msg_queue.get(timeout=0.05)[1]
        except queue.Empty:
            pass
        if assoc.acse.is_aborted() or not assoc.dul.is_alive():
            log.warning("association with %s ended while waiting for a C-STORE response", assoc.acceptor.ae_title)
            _lost(assoc)
            return None
    return None


def _lost(assoc: Association) -> None:
    # The reactor is held or busy in this thread: mark the association ended ourselves (pynetdicom's
    # reactor would) so that callers stop sending on it.
    give_back_reads(assoc)
    assoc._archivage_held = False
    assoc.is_aborted = True
    assoc.is_established = False
    assoc.kill()


def _pause(assoc: Association) -> None:
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)


def hold(assoc: Association) -> None:
    """Keep the reactor of our own association paused between C-STOREs (until ``release()``,
    which resumes it): each C-STORE then skips the wait for the reactor to pause again (about 1 ms)."""
    _pause(assoc)
    assoc._archivage_held = True


def _wait_resumed(assoc: Association, timeout: float = 1.0) -> None:
    # pynetdicom's reactor leaves ``_is_paused`` True until it runs again: a C-STORE sent right
    # after this one would see that stale True, and the reactor would then take its response
    # ("unexpected C-STORE service message"). Wait until the reactor has resumed.
    deadline = time.monotonic() + timeout
    while assoc._is_paused and assoc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.00005)


def use_stored_sender(assoc: Association, *, hold_reactor: bool = False) -> None:
    """Make this association's C-STOREs (pynetdicom's C-GET and C-MOVE sub-operations too) go
    through :func:`send_c_store`; other associations are untouched. *hold_reactor*: an association
    of ours that only sends C-STOREs until it is released (:func:`hold`, from its first C-STORE)."""
    assoc._archivage_hold = hold_reactor
    assoc.send_c_store = functools.partial(send_c_store, assoc)
    if getattr(assoc, "_archivage_gives_back", False):
        return
    assoc._archivage_gives_back = True
    # Whatever pynetdicom does next needs its DUL thread reading again (see Wire.take_reads):
    # these are what pynetdicom calls to end an association, from its own code too.
    for name in ("release", "abort", "kill"):
        setattr(assoc, name, _giving_back(assoc, getattr(assoc, name), idle_first=name == "kill"))


def _giving_back(assoc, method, *, idle_first: bool = False):
    @functools.wraps(method)
    def giving_back(*args, **kwargs):
        give_back_reads(assoc)
        if idle_first and assoc.is_released and assoc.is_requestor:
            _wait_closed(assoc)
        return method(*args, **kwargs)

    return giving_back


def _wait_closed(assoc: Association, timeout: float = 1.0) -> None:
    """After the A-RELEASE-RP of an association we requested: wait, in short steps, for the DUL to
    close the connection and go idle (AR-3, PS3.8 9.2).

    pynetdicom's ``kill`` (which ``release`` ends with) stops the DUL only once it is idle and
    otherwise sleeps 10 ms before looking again; the release confirmation reaches the releasing
    thread while the DUL is still closing the socket, so every release of ours used to wait those
    10 ms (before a C-MOVE's final response, for one). ``kill`` then finds the DUL idle at once."""
    dul = assoc.dul
    deadline = time.monotonic() + timeout
    while dul.is_alive() and dul.state_machine.current_state != "Sta1" and time.monotonic() < deadline:
        time.sleep(0.0001)
