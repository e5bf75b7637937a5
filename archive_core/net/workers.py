"""SCP worker processes (``DICOM_WORKERS`` > 1): several processes serve one port, one process indexes.

This module is the worker's side (``python -m archive_core.net.workers``); the parent's side
(starting, serving, replaying and restarting the workers) is :mod:`archive_core.net.supervisor`.

One Python process serves DICOM on one core (the GIL serialises pynetdicom's per-message work).
With ``DICOM_WORKERS=N``, ``archive serve`` becomes a parent and N worker processes:

- The parent owns the journal (its lock), replays every journal folder at start, binds the
  listening sockets (the DICOM port and the DICOM TLS port) and runs the one indexer
  (:class:`~archive_core.index.ingest.Ingestor`): the duplicate and identity checks, the claims
  and the index writes all happen there, under the same lock as with one process.
- Each worker accepts on the parent's sockets (whichever worker is free takes the next
  connection), receives, parses and writes each object into its own journal folder
  (``incoming/worker-N``: fsync of the file, rename, fsync of the folder), then hands the entry to
  the parent. It answers C-FIND, C-MOVE, C-GET, C-ECHO and storage commitment itself (reads).
- The rules stay those of one process: an object is acknowledged only after the parent claimed it
  and it is durable in the worker's journal; the A-RELEASE answer waits until the parent indexed
  everything the association stored; the association limits count every worker's associations.
- A worker that dies (kill -9 included) loses nothing acknowledged: the parent replays its journal
  folder, drops the claims it never wrote, and starts it again. A worker that fails before it
  serves stops the parent (``cannot start``). A worker whose parent dies exits at once; the next
  start replays its folder.

The parent and a worker talk over a socket pair (``multiprocessing.connection``): a call is
``(operation, request id, *arguments)`` answered ``(request id, ok, value, indexed up to)``; request
id 0 is a message that is not answered.
"""


from __future__ import annotations

import hashlib
import itertools
import logging
import os
import signal
import socket
import sys
import threading
from contextlib import suppress
from multiprocessing.connection import Connection

from archive_core.errors import ObjectTooLarge
from archive_core.index.entries import Job, write_entry
from archive_core.index.identity import Identity
from archive_core.index.ingest import Outcome
from archive_core.index.received import dataset_size
from archive_core.index.upsert import INDEX_LEVELS
from archive_core.index.keywords import extract
from archive_core.net import limits
from archive_core.storage.base import FileRange
from archive_core.storage import BlobStore, open_stores
from archive_core.storage.journal import WORKER_JOURNAL_PREFIX

log = logging.getLogger(__name__)

LOST = "the archive's main process is gone"


def journal_name(number: int) -> str:
    return f"{WORKER_JOURNAL_PREFIX}{number}"


# -- the worker's side ---------------------------------------------------------------------------


class Channel:
    """The worker's end of its link to the parent: calls answered by the parent, and messages."""

    def __init__(self, conn: Connection, on_lost) -> None:
        self._conn = conn
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._calls: dict[int, list] = {}
        self._ids = itertools.count(1)
        self._lost = False
        self._on_lost = on_lost
        self.indexed_upto = 0  # as the parent last said
        threading.Thread(target=self._read, name="worker-channel", daemon=True).start()

    def send(self, *message) -> None:
        with self._send_lock:
            self._conn.send(message)

    def call(self, op: str, *args, timeout: float = 60.0):
        rid = next(self._ids)
        slot = [threading.Event(), False, None]
        with self._lock:
            if self._lost:
                raise ConnectionError(LOST)
            self._calls[rid] = slot
        try:
            self.send(op, rid, *args)
            if not slot[0].wait(timeout):
                raise TimeoutError(f"the archive's main process did not answer {op} within {timeout} s")
        finally:
            with self._lock:
                self._calls.pop(rid, None)
        if not slot[1]:
            raise slot[2]
        return slot[2]

    def _read(self) -> None:
        try:
            while True:
                rid, ok, value, indexed_upto = self._conn.recv()
                self.indexed_upto = max(self.indexed_upto, indexed_upto)
                with self._lock:
                    slot = self._calls.get(rid)
                if slot is not None:
                    slot[1], slot[2] = ok, value
                    slot[0].set()
        except (EOFError, OSError):
            pass
        with self._lock:
            self._lost = True
            waiting = list(self._calls.values())
        for slot in waiting:
            slot[1], slot[2] = False, ConnectionError(LOST)
            slot[0].set()
        self._on_lost()


class RemoteIngestor:
    """What the handlers of a worker see as the ingestor: the journal is the worker's, the rest the parent's."""

    def __init__(self, channel: Channel, store: BlobStore, max_object_bytes: int) -> None:
        self._channel = channel
        self.store = store
        self.max_object_bytes = max_object_bytes
        self.running = True
        self.owns_journal = False

    def check_size(self, data: bytes | FileRange) -> None:
        size = dataset_size(data)
        if self.max_object_bytes and size > self.max_object_bytes:
            raise ObjectTooLarge(f"object of {size} bytes, over the limit of {self.max_object_bytes}")

    def receive(self, dataset, ds, *, transfer_syntax_uid: str, identity: Identity, source_ae: str | None = None,
                external: bool | None = None) -> Outcome:
        """As :meth:`Ingestor.receive`: claimed by the parent, written here, indexed by the parent."""
        self.check_size(dataset)
        self.store.check_space()
        checksum = dataset.sha256() if isinstance(dataset, FileRange) else hashlib.sha256(dataset).hexdigest()
        claimed: Outcome = self._channel.call("claim", identity, checksum)
        if claimed.duplicate:
            return claimed
        try:
            path, size = write_entry(self.store, dataset, identity=identity, transfer_syntax_uid=transfer_syntax_uid,
                                     source_ae=source_ae, external=external, seq=claimed.seq)
        except BaseException:
            with suppress(Exception):
                self._channel.send("abandon", 0, identity, checksum, claimed.seq)
            raise
        rows = {level: extract(ds, level) for level in INDEX_LEVELS}
        # Once sent, the parent indexes it; if this fails the object is not acknowledged (the next
        # start replays the journal entry all the same).
        self._channel.send("queued", 0, Job(claimed.seq, path, identity, None, checksum, size, transfer_syntax_uid,
                                            source_ae, external, held=True, rows=rows))
        return claimed

    def wait_indexed(self, seq: int | None = None, timeout: float = 60.0) -> bool:
        """As :meth:`Ingestor.wait_indexed`; without *seq*, everything any worker acknowledged so far."""
        if seq is not None and seq <= self._channel.indexed_upto:
            return True
        return self._channel.call("wait", seq, timeout, timeout=timeout + 10)

    def is_pending(self, sop_instance_uid: str) -> bool:
        return self._channel.call("pending", sop_instance_uid)

    def start(self, *, replay: bool = True) -> None:
        pass  # the parent replayed every journal before it started this worker

    def stop(self, timeout: float = 30.0) -> None:
        pass


class WorkerAdmission(limits.AssociationLimits):
    """The association limits, decided by the parent over the associations of every worker."""

    def __init__(self, channel: Channel, *, total: int, per_address: int) -> None:
        super().__init__(total=total, per_address=per_address)
        self._channel = channel

    def refusal(self, address: str, open_from: list[str]) -> str | None:
        return self._channel.call("admit", address, open_from, timeout=30)

    def on_closed(self, event) -> None:
        with self._lock:
            self._admitted.discard(event.assoc)
            open_from = [a.requestor.address for a in self._live() if a is not event.assoc]
        with suppress(Exception):
            self._channel.send("open", 0, open_from)


def worker_main(channel_fd: int, listen_fd: int, tls_fd: int) -> None:
    """A worker process: its settings and number come first on the channel; serves until SIGTERM."""
    from archive_core.archive import Archive
    from archive_core.config import private_files
    from archive_core.net.server import Inherited, start_server

    conn = Connection(channel_fd)
    settings, number = conn.recv()
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s worker-{number} %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    private_files()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops the workers
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Without the parent nothing can be acknowledged: leave at once (the next start replays the journal).
    channel = Channel(conn, on_lost=lambda: os._exit(3))
    archive = Archive.open(settings)
    # The same store (a folder, or S3 with its journal under STORAGE_JOURNAL_PATH), this worker's journal folder.
    archive.store = open_stores(settings, journal=journal_name(number))[0]
    archive.ingestor = RemoteIngestor(channel, archive.store, settings.DICOM_MAX_OBJECT_BYTES)
    admission = WorkerAdmission(channel, total=settings.DICOM_MAX_ASSOCIATIONS,
                                per_address=settings.DICOM_MAX_ASSOCIATIONS_PER_ADDRESS)
    inherited = Inherited(socket.socket(fileno=listen_fd), socket.socket(fileno=tls_fd) if tls_fd >= 0 else None,
                          admission)
    running = start_server(archive, inherited=inherited)
    channel.send("ready", 0, os.getpid())
    stop.wait()
    running.stop()
    archive.close()


if __name__ == "__main__":
    worker_main(*(int(a) for a in sys.argv[1:4]))
