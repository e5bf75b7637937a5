"""One association's socket as the thread that sends C-STOREs uses it (:class:`Wire`): each request
framed and written straight to the socket, each answer read back in the same thread."""

from __future__ import annotations

import logging
import select
import socket
import ssl
import struct
import threading
import time
from contextlib import suppress

from pydicom.uid import UID
from pynetdicom.association import Association

from archive_core.net.framing import StoreStatus, frame, frame_pieces, parse_store_response
from archive_core.net.outgoing import StoredFile

log = logging.getLogger(__name__)


_WRITE_BYTES = 1 << 20  # about this much is read from the file and written per system call
_UNLIMITED_FRAGMENT = 1 << 20  # PDV size when the peer sets no maximum PDU length
_IOV_MAX = 1024
HANDED_BACK = object()  # Wire.store_response: pynetdicom reads this answer


def _sendmsg_all(sock: socket.socket, pieces: list) -> None:
    """Write every buffer of *pieces* in order, with as few ``sendmsg`` calls as the socket takes."""
    start = 0
    while start < len(pieces):
        sent = sock.sendmsg(pieces[start:start + _IOV_MAX])
        while start < len(pieces) and sent >= len(pieces[start]):
            sent -= len(pieces[start])
            start += 1
        if sent:
            pieces[start] = memoryview(pieces[start])[sent:]


class Wire:
    """Writes C-STORE requests of one association straight to its socket, framed at the peer's
    maximum PDU length: the stored file is read in chunks of about 1 MiB into a buffer and each
    chunk goes out in one write, with no hand-off to pynetdicom's DUL thread.

    The peer's answer to each C-STORE is read by the same thread (:meth:`store_response`) while
    pynetdicom's DUL thread is parked (:meth:`take_reads`, archive_core/net/tuning.py
    ``ReadGate``): no hand-off between threads and no pydicom decoding per message. Any other PDU
    (an A-ABORT, an A-RELEASE-RQ, a C-CANCEL, a fragmented or malformed answer) is given to the
    DUL as it came, unread from its point of view, and the reads are given back: pynetdicom's
    state machine then handles it as it always does. The reads are given back too before anything
    of pynetdicom's is sent or awaited (a final response, A-RELEASE, A-ABORT: ``release``,
    ``abort`` and ``kill`` of the association do it first, see :func:`use_stored_sender`).

    Otherwise pynetdicom's DUL thread reads the peer's PDUs and writes its own (C-GET pending
    responses, A-RELEASE): every write of it, and every read on a TLS socket (an SSL connection
    is not safe for a read and a write at once), takes this association's lock, as a whole
    message of ours does. Messages are never interleaved and pynetdicom's queued PDUs go out
    before ours.
    """

    def __init__(self, assoc: Association) -> None:
        sock = assoc.dul.socket
        if sock is None or sock.socket is None:
            raise ConnectionError("the connection is closed")
        self._assoc = assoc
        self._sock = sock
        self._raw = sock.socket
        self._lock = threading.Lock()
        max_pdu = assoc.dimse.maximum_pdu_size or 0
        self.fragment = max_pdu - 6 if max_pdu else _UNLIMITED_FRAGMENT
        lock, send, recv = self._lock, sock.send, sock.recv

        def locked_send(data: bytes) -> None:
            with lock:
                send(data)

        sock.send = locked_send  # this association's socket object only
        tls = isinstance(self._raw, ssl.SSLSocket)
        self._unread = bytearray()  # a PDU read here and given to the DUL, which reads it first
        unread = self._unread

        def wire_recv(nr_bytes: int) -> bytearray:
            if unread:
                got = unread[:nr_bytes]
                del unread[:nr_bytes]
                if len(got) < nr_bytes:
                    got += wire_recv(nr_bytes - len(got))
                return got
            if tls:
                with lock:
                    return recv(nr_bytes)
            return recv(nr_bytes)

        sock.recv = wire_recv
        self._contexts: dict[tuple[str, str], int] = {}
        self._buffer = bytearray()  # the file chunks read, reused from message to message
        self._spare = bytearray()  # the next file's first chunk (read_ahead)
        self._deferred = bytearray()  # pending responses framed, not yet written (defer)
        self._ahead = None  # (StoredFile, open file, dataset length, bytes in _spare)
        # A plain socket takes the framed chunk as a list of buffers (sendmsg); TLS gets one copy.
        self._gather = not tls and hasattr(self._raw, "sendmsg")
        self._gate = getattr(assoc.dul, "_archivage_gate", None)  # None: pynetdicom's DUL always reads
        self._reads = False

    @classmethod
    def of(cls, assoc: Association) -> "Wire":
        wire = getattr(assoc, "_archivage_wire", None)
        if wire is None or wire._sock is not assoc.dul.socket:
            wire = assoc._archivage_wire = cls(assoc)
        return wire

    def _chunk_size(self, length: int) -> int:
        # Whole fragments per read: every PDV but the last is full, as pynetdicom fragments.
        return min(length, max(1, _WRITE_BYTES // self.fragment) * self.fragment)

    def send(self, context_id: int, command: bytes, data: "bytes | StoredFile") -> None:
        """Write one C-STORE-RQ: its *command* set then the dataset (bytes, or a stored file read as it goes)."""
        ahead, self._ahead = self._ahead, None
        prefilled = 0
        if ahead is not None and ahead[0] is data:  # opened and first chunk read while the peer answered
            _, source, length, prefilled = ahead
            self._buffer, self._spare = self._spare, self._buffer
        else:
            if ahead is not None:
                ahead[1].close()
            source = data.open() if isinstance(data, StoredFile) else None  # fails before any byte is sent
        try:
            if not prefilled:
                length = data.dataset(source) if source is not None else len(data)
            if length == 0:
                raise ValueError("empty dataset")
            if source is not None:
                size = self._chunk_size(length)
                if len(self._buffer) < size:
                    self._buffer = bytearray(size)
                buffer = memoryview(self._buffer)[:size]
            else:
                buffer = memoryview(data)
            out = bytearray()
            frame(context_id, memoryview(command), self.fragment, True, True, out)
            self._wait_for_pynetdicom()
            with self._lock:
                self._write(out, source, buffer, length, context_id, prefilled)
        finally:
            if source is not None:
                source.close()

    def read_ahead(self, data: "StoredFile | None") -> None:
        """Open the stored file to send next and read its first chunk, while the peer works on the
        message just sent (the C-MOVE/C-GET sub-operations name it, see :func:`read_next`). A file
        that cannot be read here is left for :meth:`send` to report."""
        self.drop_read_ahead()
        if not isinstance(data, StoredFile):
            return
        try:
            source = data.open()  # the file itself on a folder; a ranged GET's stream on an object store
        except Exception:  # missing, or the object store away: send() reports it in its turn
            return
        try:
            length = data.dataset(source)
            size = self._chunk_size(length)
            if len(self._spare) < size:
                self._spare = bytearray(size)
            got = source.readinto(memoryview(self._spare)[:size]) if size else 0
        except Exception:
            source.close()
            return
        if got != size or not size:
            source.close()
            return
        self._ahead = (data, source, length, got)

    def drop_read_ahead(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead[1].close()

    def context_id(self, sop_class_uid: str, transfer_syntax_uid: str) -> int:
        """The accepted context to send *sop_class_uid* in *transfer_syntax_uid* (pynetdicom's choice, kept)."""
        key = (sop_class_uid, transfer_syntax_uid)
        found = self._contexts.get(key)
        if found is None:
            context = self._assoc._get_valid_context(sop_class_uid, UID(transfer_syntax_uid), "scu",
                                                     allow_conversion=False)
            found = self._contexts[key] = context.context_id
        return found

    def take_reads(self) -> bool:
        """Read the peer's answers in this thread from now on (True), the DUL thread parked; False
        when this association's DUL cannot be parked (pynetdicom's own polling, DICOM_DUL_LOOP_DELAY)."""
        if self._reads:
            return True
        if self._gate is None or not self._assoc.is_established or not self._gate.take():
            return False
        self._reads = True
        return True

    def give_back_reads(self) -> None:
        self.drop_read_ahead()
        if self._reads:
            self._reads = False
            self._gate.give_back()

    def store_response(self, msg_id: int):
        """The peer's answer to the C-STORE just sent: a :class:`StoreStatus`; None when none came
        within the DIMSE timeout; HANDED_BACK when it is pynetdicom's to read (anything other
        than one P-DATA-TF PDU holding the C-STORE-RSP: the PDU read is given to the DUL)."""
        timeout = self._assoc.dimse_timeout
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        header = self._recv_exact(6, deadline)
        if header is None:
            return None
        if len(header) < 6:  # the connection closed: the DUL finds it closed too
            self.give_back_reads()
            return HANDED_BACK
        pdu_type, _, length = struct.unpack(">BBI", header)
        body = self._recv_exact(length, deadline) if pdu_type in (0x04, 0x05, 0x06, 0x07) else b""
        if body is None:
            return None
        parsed = parse_store_response(body) if pdu_type == 0x04 and len(body) == length else None
        dul = self._assoc.dul
        with suppress(AttributeError):
            dul._idle_timer.restart()  # as pynetdicom restarts it on each PDU it reads
        if parsed is None or parsed[0] != msg_id:
            self._unread += header
            self._unread += body
            dul._read_pdu_data()  # decoded and queued by pynetdicom, as if its thread had read it
            self.give_back_reads()
            return HANDED_BACK
        return StoreStatus(parsed[1], parsed[2], parsed[3])

    def _recv_exact(self, size: int, deadline: float):
        """*size* bytes from the socket (fewer if it closed), or None (reads given back) at the deadline."""
        out = bytearray()
        raw = self._raw
        pending = getattr(raw, "pending", None)  # an SSL socket's buffered bytes select() cannot see
        while len(out) < size:
            if not (pending and pending()):
                remaining = deadline - time.monotonic()
                try:
                    ready = remaining > 0 and select.select([raw], [], [], remaining)[0]
                except (OSError, ValueError):
                    ready = True  # recv reports what is wrong
                if not ready:
                    self.give_back_reads()
                    if out:  # half a PDU read: the connection cannot carry another
                        self._broken()
                    return None
            try:
                chunk = raw.recv(size - len(out))
            except (OSError, ValueError):
                chunk = b""
            if not chunk:
                return bytes(out)
            out += chunk
        return bytes(out)

    @property
    def deferred(self) -> bool:
        return bool(self._deferred)

    def defer(self, context_id: int, command: bytes) -> None:
        """Frame a message without data set to be written by :meth:`flush_deferred`."""
        frame(context_id, memoryview(command), self.fragment, True, True, self._deferred)

    def flush_deferred(self) -> None:
        out, self._deferred = self._deferred, bytearray()
        self._send_framed(out)

    def send_command(self, context_id: int, command: bytes) -> None:
        """Write one message that has no data set (a pending C-MOVE or C-GET response)."""
        out = bytearray()
        frame(context_id, memoryview(command), self.fragment, True, True, out)
        self._send_framed(out)

    def _send_framed(self, out: bytearray) -> None:
        """Write PDUs already framed, once pynetdicom has nothing queued ahead of them."""
        self._wait_for_pynetdicom()
        with self._lock:
            try:
                self._raw.sendall(out)
            except OSError as exc:
                self._broken()
                raise ConnectionError(str(exc)) from exc

    def _write(self, out: bytearray, source, buffer: memoryview, length: int, context_id: int,
               prefilled: int = 0) -> None:
        sent = 0
        written = False
        gather = self._gather
        try:
            while sent < length:
                if source is None:
                    chunk = buffer[sent:sent + max(1, _WRITE_BYTES // self.fragment) * self.fragment]
                elif prefilled:
                    chunk, prefilled = buffer[:prefilled], 0
                else:
                    size = source.readinto(buffer[:min(length - sent, len(buffer))])
                    if not size:
                        raise OSError("the stored file is shorter than when it was opened")
                    chunk = buffer[:size]
                sent += len(chunk)
                written = True
                if gather:  # the PDU headers and the chunk's slices in one sendmsg: the chunk is not copied
                    pieces = [out] if out else []
                    frame_pieces(context_id, chunk, self.fragment, sent >= length, pieces)
                    _sendmsg_all(self._raw, pieces)
                else:
                    frame(context_id, chunk, self.fragment, False, sent >= length, out)
                    self._raw.sendall(out)
                out = bytearray()
        except BaseException as exc:
            if not written:
                raise
            self._broken()  # part of a message may be on the wire: the connection cannot carry another
            if isinstance(exc, OSError):
                raise ConnectionError(str(exc)) from exc
            raise

    def _broken(self) -> None:
        log.warning("connection to %s dropped in the middle of a C-STORE", peer_title(self._assoc))
        with suppress(OSError):
            self._raw.shutdown(socket.SHUT_RDWR)
        self._sock.event_queue.put("Evt17")  # transport closed, as pynetdicom reports a failed send

    def _wait_for_pynetdicom(self, timeout: float = 5.0) -> None:
        # What pynetdicom queued before (a C-GET pending response) goes out first.
        pending = self._assoc.dul.to_provider_queue.queue
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            time.sleep(0.0001)


def peer_title(assoc: Association) -> str:
    """The AE title of the other end of *assoc*."""
    return assoc.acceptor.ae_title if assoc.is_requestor else assoc.requestor.ae_title
