"""SCP worker processes (``DICOM_WORKERS`` > 1): several processes serve one port, one process indexes.

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

import dataclasses
import hashlib
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import suppress
from multiprocessing.connection import Connection
from pathlib import Path

from archive_core.errors import ArchiveError, ObjectTooLarge
from archive_core.index.entries import Job, write_entry
from archive_core.index.identity import Identity
from archive_core.index.ingest import Ingestor, Outcome
from archive_core.index.received import dataset_size
from archive_core.index.upsert import INDEX_LEVELS
from archive_core.index.keywords import extract
from archive_core.net import limits
from archive_core.storage.base import FileRange
from archive_core.storage import BlobStore, open_stores
from archive_core.storage.journal import WORKER_JOURNAL_PREFIX

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 120  # a worker opens the database and starts its server within this
STOP_TIMEOUT_S = 30
RESTART_PAUSE_S = 1.0  # between the death of a worker and its restart, when it died young
YOUNG_S = 10.0
LOST = "the archive's main process is gone"


def journal_name(number: int) -> str:
    return f"{WORKER_JOURNAL_PREFIX}{number}"


class WorkerFailed(RuntimeError):
    """A worker process could not start."""


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


# -- the parent's side ---------------------------------------------------------------------------


class SharedAdmission:
    """The parent's count of the associations open on each worker (calling addresses)."""

    def __init__(self, *, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        self._lock = threading.Lock()
        self._open: dict[int, list[str]] = {}

    def admit(self, worker: int, address: str, open_here: list[str]) -> str | None:
        with self._lock:
            self._open[worker] = list(open_here)
            everywhere = [a for addresses in self._open.values() for a in addresses]
            reason = limits.over_limits(self.total, self.per_address, address, everywhere)
            if reason is None:
                self._open[worker].append(address)
            return reason

    def update(self, worker: int, open_here: list[str]) -> None:
        with self._lock:
            self._open[worker] = list(open_here)

    def forget(self, worker: int) -> None:
        with self._lock:
            self._open.pop(worker, None)


@dataclasses.dataclass
class _Worker:
    number: int
    proc: subprocess.Popen
    conn: Connection
    started_at: float
    ready: threading.Event = dataclasses.field(default_factory=threading.Event)
    send_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    # Claims answered and not yet queued or abandoned: seq -> (identity, checksum).
    claims: dict[int, tuple[Identity, str]] = dataclasses.field(default_factory=dict)
    max_seq: int = 0
    link: threading.Thread | None = None


def _child_settings(settings):
    # What a worker needs; the back-office's own keys (callables, objects) stay in the parent.
    plain = (str, int, float, bool, type(None))
    return dataclasses.replace(settings, extra={k: v for k, v in settings.extra.items() if isinstance(v, plain)})


class Supervisor:
    """Starts the worker processes, serves their calls, replays and restarts a worker that dies."""

    def __init__(self, archive, count: int, listening: socket.socket, tls_listening: socket.socket | None,
                 on_failure) -> None:
        self.archive = archive
        self.ingestor: Ingestor = archive.ingestor
        self.count = count
        self.listening = listening
        self.tls_listening = tls_listening
        self.admission = SharedAdmission(total=archive.settings.DICOM_MAX_ASSOCIATIONS,
                                         per_address=archive.settings.DICOM_MAX_ASSOCIATIONS_PER_ADDRESS)
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self.workers: dict[int, _Worker] = {}
        self.stopping = False
        self.failure = ""
        self.restarts = 0

    def journal(self, number: int) -> Path:
        return self.ingestor.store.journal_root / journal_name(number)

    def start(self) -> None:
        for number in range(1, self.count + 1):
            self.journal(number).mkdir(exist_ok=True)
            self._spawn(number)
        for worker in list(self.workers.values()):
            self._await_ready(worker)

    def _await_ready(self, worker: _Worker) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not worker.ready.wait(0.2):
            if worker.proc.poll() is not None or time.monotonic() > deadline:
                raise WorkerFailed(f"worker {worker.number} did not start (exit status {worker.proc.poll()})")

    def _spawn(self, number: int) -> _Worker:
        parent_end, child_end = socket.socketpair()
        fds = [child_end.fileno(), self.listening.fileno()]
        if self.tls_listening is not None:
            fds.append(self.tls_listening.fileno())
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "archive_core.net.workers", str(fds[0]), str(fds[1]),
             str(fds[2]) if len(fds) > 2 else "-1"],
            pass_fds=fds, env=env,
        )
        child_end.close()
        conn = Connection(parent_end.detach())
        conn.send((_child_settings(self.archive.settings), number))
        worker = _Worker(number, proc, conn, time.monotonic())
        self.workers[number] = worker
        worker.link = threading.Thread(target=self._serve, args=(worker,), name=f"worker-{number}-link", daemon=True)
        worker.link.start()
        log.info("SCP worker %d started (pid %d)", number, proc.pid)
        return worker

    def _reply(self, worker: _Worker, rid: int, ok: bool, value) -> None:
        with worker.send_lock:
            with suppress(OSError):
                worker.conn.send((rid, ok, value, self.ingestor.indexed_upto))

    def _wait(self, worker: _Worker, rid: int, seq: int | None, timeout: float) -> None:
        self._reply(worker, rid, True, self.ingestor.wait_indexed(seq, timeout=timeout))

    def _serve(self, worker: _Worker) -> None:
        ingestor = self.ingestor
        try:
            while True:
                op, rid, *args = worker.conn.recv()
                if op == "claim":
                    identity, checksum = args
                    try:
                        outcome = ingestor.claim(identity, checksum)
                    except ArchiveError as exc:
                        self._reply(worker, rid, False, exc)
                        continue
                    except Exception as exc:  # the database, mostly: that object fails, the worker goes on
                        log.exception("claim of %s failed", identity.sop_instance_uid)
                        self._reply(worker, rid, False, RuntimeError(f"claim failed: {exc.__class__.__name__}"))
                        continue
                    if not outcome.duplicate:
                        worker.claims[outcome.seq] = (identity, checksum)
                        worker.max_seq = max(worker.max_seq, outcome.seq)
                    self._reply(worker, rid, True, outcome)
                elif op == "queued":
                    (job,) = args
                    worker.claims.pop(job.seq, None)
                    ingestor.enqueue(job)
                elif op == "abandon":
                    identity, checksum, seq = args
                    worker.claims.pop(seq, None)
                    ingestor.abandon(identity, checksum, seq)
                elif op == "wait":
                    seq, timeout = args
                    threading.Thread(target=self._wait, args=(worker, rid, seq, timeout), daemon=True).start()
                elif op == "pending":
                    self._reply(worker, rid, True, ingestor.is_pending(args[0]))
                elif op == "admit":
                    self._reply(worker, rid, True, self.admission.admit(worker.number, *args))
                elif op == "open":
                    self.admission.update(worker.number, args[0])
                elif op == "ready":
                    worker.ready.set()
        except (EOFError, OSError):
            pass
        self._ended(worker)

    def _ended(self, worker: _Worker) -> None:
        """The worker's end of the link closed: it exited. Settle what it left, then start it again."""
        status = worker.proc.wait()
        worker.conn.close()
        self.admission.forget(worker.number)
        claims = [(identity, checksum, seq) for seq, (identity, checksum) in worker.claims.items()]
        if not self.stopping:
            log.error("SCP worker %d (pid %d) ended with status %s; replaying its journal", worker.number,
                      worker.proc.pid, status)
        try:
            replayed = self.ingestor.settle_lost(claims, self.journal(worker.number), upto=worker.max_seq)
        except Exception:
            log.exception("cannot replay the journal of worker %d", worker.number)
            self._fail(f"the journal of worker {worker.number} could not be replayed")
            return
        if replayed:
            log.info("replayed %d entries of worker %d's journal", replayed, worker.number)
        if self.stopping:
            return
        if not worker.ready.is_set():
            self._fail(f"worker {worker.number} ended before it served (status {status})")
            return
        if time.monotonic() - worker.started_at < YOUNG_S:
            time.sleep(RESTART_PAUSE_S)
        try:
            with self._lock:  # stop() sees this worker, or this restart sees stop()
                if self.stopping:
                    return
                self.restarts += 1
                restarted = self._spawn(worker.number)
            self._await_ready(restarted)
        except Exception as exc:
            self._fail(f"worker {worker.number} could not be restarted: {exc}")
            return
        log.info("SCP worker %d restarted", worker.number)

    def _fail(self, message: str) -> None:
        log.error("stopping: %s", message)
        self.failure = message
        self._on_failure()

    def stop(self) -> None:
        with self._lock:
            self.stopping = True
            workers = list(self.workers.values())
        for worker in workers:
            with suppress(ProcessLookupError):
                worker.proc.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.error("SCP worker %d did not stop within %d s: killed", worker.number, STOP_TIMEOUT_S)
                worker.proc.kill()
        for worker in workers:
            if worker.link is not None and worker.link is not threading.current_thread():
                worker.link.join(STOP_TIMEOUT_S)


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.create_server((host, port), backlog=128)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted connections
    return sock


def serve_with_workers(archive, stop: threading.Event) -> None:
    """``archive serve`` with DICOM_WORKERS > 1: replay, listen, run the workers until *stop* is set."""
    from pydicom import config as pydicom_config

    from archive_core.errors import JournalBusy
    from archive_core.net import tls

    settings = archive.settings
    # As start_server does before its replay: values are checked where it matters, not per element.
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    try:
        if settings.DICOM_TLS_PORT:
            tls.server_context(settings)  # settings that cannot work stop here, with a clear message
        archive.ingestor.start()  # the journal lock, the replay of every journal folder, the indexer
    except (JournalBusy, tls.TLSConfigError) as exc:
        archive.close()
        raise SystemExit(f"cannot start: {exc}") from exc
    try:
        listening = _listen(settings.DICOM_HOST, settings.DICOM_PORT)
        tls_listening = _listen(settings.DICOM_HOST, settings.DICOM_TLS_PORT) if settings.DICOM_TLS_PORT else None
    except OSError as exc:
        archive.close()
        raise SystemExit(f"cannot start: port {settings.DICOM_PORT}: {exc}") from exc
    supervisor = Supervisor(archive, settings.DICOM_WORKERS, listening, tls_listening, on_failure=stop.set)
    try:
        supervisor.start()
    except WorkerFailed as exc:
        supervisor.stop()
        archive.close()
        raise SystemExit(f"cannot start: {exc}") from exc
    tls_note = f", DICOM TLS on port {tls_listening.getsockname()[1]}" if tls_listening else ""
    print(f"DICOM archive {settings.DICOM_AE_TITLE} listening on port {listening.getsockname()[1]}{tls_note}"
          f" ({settings.DICOM_WORKERS} worker processes)", flush=True)
    stop.wait()
    supervisor.stop()
    listening.close()
    if tls_listening is not None:
        tls_listening.close()
    archive.close()
    if supervisor.failure:
        raise SystemExit(f"stopped: {supervisor.failure}")


if __name__ == "__main__":
    worker_main(*(int(a) for a in sys.argv[1:4]))
