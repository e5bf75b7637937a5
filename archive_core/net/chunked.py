"""Incoming C-STORE datasets written to the journal's folder as they arrive, on the SCP's associations.

pynetdicom writes a C-STORE's dataset fragments to a temporary file (its "chunked receive", then
``event.dataset_path``) when ``_config.STORE_RECV_CHUNKED_DATASET`` is true, instead of gathering
them in memory: memory then stays flat whatever the object's size. That switch is library-wide,
and under it ``event.encoded_dataset()`` and ``request.DataSet`` are empty: another pynetdicom
association in the same process (a test's storage SCP, a C-GET requestor) would lose its datasets.
:func:`install` therefore gives pynetdicom's DIMSE message module

- a view of ``_config`` in which the switch is on for the DUL threads of the associations we
  accepted (marked by :func:`on_conn_open`) and as configured everywhere else;
- a ``NamedTemporaryFile`` that, on those threads, returns a :class:`ReceiveFile`: a ``.tmp`` file
  in the ingest journal's folder that starts with *our* file meta header instead of pynetdicom's
  (which is then not built at all: ``create_file_meta``/``write_file_meta_info`` skip it).
  The file is then, byte for byte, the journal entry: the ingestor renames it into the journal
  instead of copying it. Past ``DICOM_MAX_OBJECT_BYTES`` it stops writing (the disk is not filled
  by an object that will be refused) and the C-STORE is answered 0xA700.

Correctness does not depend on any of this: :func:`received_dataset` takes the dataset from
pynetdicom's own temporary file, or from memory, when the file is not a :class:`ReceiveFile`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import dimse_messages as _dimse_messages

from archive_core.errors import ObjectTooLarge, StorageFull
from archive_core.index.received import dataset_in_file
from archive_core.part10 import file_header
from archive_core.storage.base import FileRange

_MARK = "_archivage_chunked_receive"
RECEIVING_PREFIX = "receiving-"


@dataclass(frozen=True)
class _Receiving:
    assoc: object
    directory: Path
    max_bytes: int


class _ScopedConfig:
    """pynetdicom's ``_config`` module as the DIMSE decoder sees it: the same, but for one switch."""

    def __init__(self, real) -> None:
        object.__setattr__(self, "_real", real)

    def __getattr__(self, name: str):
        return getattr(self._real, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self._real, name, value)

    @property
    def STORE_RECV_CHUNKED_DATASET(self) -> bool:  # noqa: N802 (pynetdicom's name)
        # The decoder runs in the association's DUL thread.
        if getattr(threading.current_thread(), _MARK, None) is not None:
            return True
        return self._real.STORE_RECV_CHUNKED_DATASET


class ReceiveFile:
    """Where pynetdicom writes one incoming dataset on our associations: a journal ``.tmp`` file.

    pynetdicom writes the preamble, ``DICM`` and its own file meta, then each dataset fragment
    followed by ``.file.flush()``. Our header (the one the journal entry carries: our
    implementation UID, the calling AE as Source AE) is written first instead; pynetdicom's header
    writes are recognised by the first flush (every write before the one it follows) and dropped.
    """

    def __init__(self, directory: Path, header: bytes, max_bytes: int) -> None:
        fd, name = tempfile.mkstemp(prefix=RECEIVING_PREFIX, suffix=".tmp", dir=directory)
        self.name = name
        self._fd = fd
        self.header_len = len(header)
        self.max_bytes = max_bytes
        self.written = 0  # dataset bytes
        self.over = False  # the dataset passed max_bytes: what came is gone, the rest is dropped
        self.error: OSError | None = None
        self._header_phase: list[bytes] | None = []
        # Hashed as it is written: the ingestor's checksum does not read the file back.
        self._sha256 = hashlib.sha256()
        try:
            os.fchmod(fd, 0o640)
            self._write_all(header)
        except OSError as exc:
            self._fail(exc)

    @property
    def file(self) -> "ReceiveFile":
        return self  # pynetdicom calls .file.flush()

    @property
    def path(self) -> Path:
        return Path(self.name)

    def write(self, data) -> int:
        if self._header_phase is not None:
            self._header_phase.append(bytes(data))
        else:
            self._dataset(data)
        return len(data)

    def flush(self) -> None:
        if self._header_phase is not None:
            # The write this flush follows was the first dataset fragment; those before, pynetdicom's header.
            first = self._header_phase[-1:]
            self._header_phase = None
            for data in first:
                self._dataset(data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def dataset(self) -> FileRange:
        """The dataset as received (raises when it could not be kept)."""
        self.flush()
        if self.error is not None:
            if self.error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(str(self.error))
            raise self.error
        if self.over:
            raise ObjectTooLarge(f"object over the limit of {self.max_bytes} bytes")
        return FileRange(self.path, self.header_len, self.written, owned=True, digest=self._sha256.hexdigest())

    def _dataset(self, data) -> None:
        if self.over or self.error is not None:
            return
        if self.max_bytes and self.written + len(data) > self.max_bytes:
            self.over = True
            self._truncate()
            return
        try:
            self._write_all(data)
        except OSError as exc:
            self._fail(exc)
            return
        self._sha256.update(data)
        self.written += len(data)

    def _write_all(self, data) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def _fail(self, exc: OSError) -> None:
        self.error = exc
        self._truncate()

    def _truncate(self) -> None:
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass


_real_named_temporary_file = _dimse_messages.NamedTemporaryFile
_real_create_file_meta = _dimse_messages.create_file_meta
_real_write_file_meta_info = _dimse_messages.write_file_meta_info


def _current_receive_file():
    receiving = getattr(threading.current_thread(), _MARK, None)
    if receiving is None:
        return None
    return getattr(getattr(receiving.assoc.dimse, "message", None), "_data_set_file", None)


def _create_file_meta(*args, **kwargs):
    # pynetdicom's own file meta, built and written with pydicom (0.5 ms per object), would only be
    # dropped by a ReceiveFile, which already holds ours.
    if isinstance(_current_receive_file(), ReceiveFile):
        return None
    return _real_create_file_meta(*args, **kwargs)


def _write_file_meta_info(fp, file_meta, *args, **kwargs):
    if isinstance(fp, ReceiveFile):
        return None
    return _real_write_file_meta_info(fp, file_meta, *args, **kwargs)


def _named_temporary_file(*args, **kwargs):
    receiving = getattr(threading.current_thread(), _MARK, None)
    if receiving is not None:
        try:
            return _receive_file(receiving)
        except Exception:
            pass  # anything odd in the command: pynetdicom's own file, copied by the handler
    return _real_named_temporary_file(*args, **kwargs)


def _receive_file(receiving: _Receiving) -> ReceiveFile:
    # Called by the decoder once the C-STORE-RQ command set is complete: it is the current message.
    assoc = receiving.assoc
    message = assoc.dimse.message
    command = message.command_set
    context = assoc._accepted_cx[message.context_id]
    header = file_header(
        sop_class_uid=str(command.AffectedSOPClassUID),
        sop_instance_uid=str(command.AffectedSOPInstanceUID),
        transfer_syntax_uid=str(context.transfer_syntax[0]),
        source_ae=assoc.requestor.ae_title,
    )
    return ReceiveFile(receiving.directory, header, receiving.max_bytes)


def install() -> None:
    """Put the scoped switch and file in place (idempotent; set once when a server starts)."""
    if not isinstance(_dimse_messages._config, _ScopedConfig):
        _dimse_messages._config = _ScopedConfig(_dimse_messages._config)
    _dimse_messages.NamedTemporaryFile = _named_temporary_file
    _dimse_messages.create_file_meta = _create_file_meta
    _dimse_messages.write_file_meta_info = _write_file_meta_info


def on_conn_open(event, directory: Path, max_bytes: int) -> None:
    """Mark an accepted association: its C-STORE datasets go to *directory* as they arrive."""
    setattr(event.assoc.dul, _MARK, _Receiving(event.assoc, Path(directory), max_bytes))


def on_conn_close(event) -> None:
    """Remove the file of a dataset whose association ended before it was complete (an abort).

    A complete dataset's file is renamed into the journal or deleted by pynetdicom once answered;
    an interrupted one would otherwise stay in the journal's folder until the next start.
    """
    message = getattr(getattr(event.assoc, "dimse", None), "message", None)
    received = getattr(message, "_data_set_file", None)
    if isinstance(received, ReceiveFile):
        received.close()
        received.path.unlink(missing_ok=True)


def is_installed() -> bool:
    return isinstance(_dimse_messages._config, _ScopedConfig)


def received_dataset(event) -> bytes | FileRange:
    """The C-STORE's dataset: our journal file, pynetdicom's temporary file, or bytes in memory."""
    received = getattr(event.request, "_dataset_file", None)
    if isinstance(received, ReceiveFile):
        return received.dataset()
    try:
        path = event.dataset_path  # pynetdicom's own chunked receive
    except AttributeError:
        path = None
    return dataset_in_file(path) if path is not None else event.request.DataSet.getvalue()


__all__ = ["ReceiveFile", "install", "is_installed", "on_conn_close", "on_conn_open", "received_dataset"]
