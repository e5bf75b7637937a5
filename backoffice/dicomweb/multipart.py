"""A WADO-RS answer as one seekable, read-only file (:class:`MultipartFile`): each part's boundary and
headers, the stored file itself, the closing boundary, one after the other.

Its length is known before the first byte is sent (an exact ``Content-Length``, no chunked
encoding); a ``Range`` request is answered from it as from a single stored file (wado.py
``byte_ranges``); and it goes to the WSGI server as ``wsgi.file_wrapper``, which waitress reads from
the loop that writes the socket (no copy through a worker thread's output buffer).

Stored files are opened when the reading reaches them, one at a time, and read at the offset asked:
memory and file descriptors stay flat whatever the study's size. Only files of a local filesystem
store are parts of it (opening one blocks the sending loop for a system call, never for a network
round trip); an object store's answer, or a converted one, is streamed by a generator instead.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import io
import logging
import os
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, NoReturn, Union

log = logging.getLogger(__name__)
# At most this much per read (a short read, as a raw file may answer): waitress asks for its socket's
# send buffer size (4 MiB on loopback here) and keeps a chunk while it reads the next one.
MAX_READ = 1 << 20


class AnswerAborted(OSError):
    """A stored file went missing or changed under an answer already under way.

    An OSError, so that the server treats it as a broken connection: it closes the socket, and the
    client, short of the announced ``Content-Length``, sees a failed transfer, never a shorter body
    passed off as whole."""


@dataclass(frozen=True)
class StoredPart:
    """The stored file of one instance (*stored*, a StoredInstance) of *size* bytes, sent unchanged."""

    stored: Any
    size: int

    def __len__(self) -> int:
        return self.size


Segment = Union[bytes, StoredPart]


def answer_identity(secret: bytes, found: list, sizes: list[int]) -> str:
    """64 hex digits naming this answer's bytes: an HMAC (keyed by the app's secret, so nobody can
    predict it and store an object holding it) of each instance's key, checksum, size and syntax.
    The boundary is its first half and the ETag the whole: the same answer twice is the same bytes,
    so a download can resume with ``Range`` (and ``If-Range``)."""
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    for stored, size in zip(found, sizes):
        mac.update(f"{stored.sop_instance_uid}\0{stored.storage_key}\0{stored.checksum_sha256}\0{size}\0"
                   f"{stored.transfer_syntax_uid}\n".encode())
    return mac.hexdigest()


def multipart_segments(found: list, sizes: list[int], boundary: str) -> list[Segment]:
    """The parts of ``multipart/related; type="application/dicom"``, each instance in its stored syntax."""
    segments: list[Segment] = []
    for stored, size in zip(found, sizes):
        segments.append(f"--{boundary}\r\nContent-Type: application/dicom; "
                        f"transfer-syntax={stored.transfer_syntax_uid}\r\n\r\n".encode())
        segments.append(StoredPart(stored, size))
        segments.append(b"\r\n")
    segments.append(f"--{boundary}--\r\n".encode())
    # Adjacent bytes segments merged: fewer pieces per read.
    merged: list[Segment] = []
    for segment in segments:
        if isinstance(segment, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += segment
        else:
            merged.append(segment)
    return merged


class MultipartFile(io.RawIOBase):
    """*segments* (bytes, or :class:`StoredPart` opened by *opener*) read as one file.

    ``read`` (of at most :data:`MAX_READ` bytes), ``seek`` and ``tell`` as a raw file's (waitress's ``ReadOnlyFileBasedBuffer`` reads, seeks
    back and skips forward; werkzeug's Range wrapper seeks to the start of the range). At most one
    stored file is open at a time; ``close`` closes it.
    """

    def __init__(self, segments: list[Segment], opener: Callable[[Any], BinaryIO]) -> None:
        super().__init__()
        self._segments = segments
        self._starts: list[int] = []
        position = 0
        for segment in segments:
            self._starts.append(position)
            position += len(segment)
        self.length = position
        self._position = 0
        self._opener = opener
        self._open_index = -1
        self._open_fd = -1
        self._open_file: BinaryIO | None = None

    # -- io ------------------------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._checkClosed()
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.length}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._position = base + offset
        return self._position

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        memoryview(buffer)[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        """At most *size* bytes, and never past the end of one segment nor :data:`MAX_READ` (a short
        read, as a raw file may answer): no copy to join pieces; the server sends what it got."""
        self._checkClosed()
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(MAX_READ), b""))
        position = self._position
        if position >= self.length or size == 0:
            return b""
        index = bisect.bisect_right(self._starts, position) - 1
        segment, start = self._segments[index], self._starts[index]
        take = min(size, MAX_READ, start + len(segment) - position)
        if isinstance(segment, bytes):
            data = segment[position - start: position - start + take]
        else:
            try:
                data = self._read_stored(index, position - start, take)
            except AnswerAborted as exc:
                log.error("%s", exc)
                raise
        self._position = position + len(data)
        return data

    def close(self) -> None:
        self._close_stored()
        super().close()

    # -- the stored files ----------------------------------------------------------------------

    def _read_stored(self, index: int, offset: int, size: int) -> bytes:
        part = self._segments[index]
        if index != self._open_index:
            self._close_stored()
            self._open_stored(index, part)
        data = os.pread(self._open_fd, size, offset)
        while len(data) < size:  # a regular file reads short only at its end (or past 2 GiB at once)
            more = os.pread(self._open_fd, size - len(data), offset + len(data))
            if not more:
                self._abort(part, f"ended {size - len(data)} bytes early")
            data += more
        return data

    def _open_stored(self, index: int, part: StoredPart) -> None:
        try:
            f = self._opener(part.stored)
        except Exception as exc:  # BlobMissing, OSError: whatever it is, the answer cannot go on
            self._abort(part, f"could not be opened ({exc})")
        try:
            fd = f.fileno()
            size = os.fstat(fd).st_size
        except BaseException:
            f.close()
            raise
        if size != part.size:
            f.close()
            self._abort(part, f"is {size} bytes, not the {part.size} the answer announced")
        self._open_file, self._open_fd, self._open_index = f, fd, index

    def _close_stored(self) -> None:
        f, self._open_file, self._open_fd, self._open_index = self._open_file, None, -1, -1
        if f is not None:
            f.close()

    @staticmethod
    def _abort(part: StoredPart, why: str) -> NoReturn:
        raise AnswerAborted(f"WADO-RS answer cut short: the stored file of {part.stored.sop_instance_uid} {why}")
