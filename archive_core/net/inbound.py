"""The receive path of an accepted plain (not TLS) association, with fewer copies and thread hand-offs
than pynetdicom's (installed by :func:`archive_core.net.tuning.tune_acceptor`).

With several associations in one process each system call and each hand-off between threads is a
release and a re-acquisition of the GIL: a PDU is read in as few system calls as the socket gives it,
a P-DATA-TF PDU reaches the DIMSE decoder as views of that buffer, and a C-STORE response is written by
the thread that answers. docs/performance.md ("Ingest with several SCP processes") has the measures;
tests/unit/test_server_tuning.py covers the pynetdicom internals this relies on.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import threading

from pynetdicom import evt
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

log = logging.getLogger(__name__)

_PDU_TYPES = frozenset(range(0x01, 0x08))
_READ_FIRST = 1 << 21  # a PDU is read into a buffer this large at first, grown as its bytes arrive


def whole_reads(raw: socket.socket):
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


def direct_store_responses(assoc, raw: socket.socket) -> None:
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


class ReceivedPData:
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


def p_data_reads(dul):
    """The DUL's ``_read_pdu_data`` for an accepted plain association: a P-DATA-TF PDU in the data
    transfer state becomes a :class:`ReceivedPData` (no copies); anything else, in any other
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
                pdu, event = ReceivedPData(body), "Evt10"
            else:
                pdu, event = dul._decode_pdu(head + body)
        except Exception as exc:
            log.error("unable to decode the received PDU: %s", exc)
            dul.event_queue.put("Evt19")
            return
        dul.event_queue.put(event)
        dul._recv_pdu.put(pdu)

    return read_pdu_data
