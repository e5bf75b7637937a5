"""The parent's side of SCP worker processes (``DICOM_WORKERS`` > 1): start, serve, replay, restart.

The parent replays every journal folder, binds the listening sockets and runs the one indexer;
:class:`Supervisor` starts the worker processes (:mod:`archive_core.net.workers`, which describes
the design and the link's protocol), answers their calls (claims, queued entries, waits for the
index, association limits) and, when one dies, replays its journal folder, drops the claims it
never wrote and starts it again.
"""

from __future__ import annotations

import dataclasses
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

from archive_core.errors import ArchiveError
from archive_core.index.identity import Identity
from archive_core.index.ingest import Ingestor
from archive_core.net import limits
from archive_core.net.workers import journal_name

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 120  # a worker opens the database and starts its server within this
STOP_TIMEOUT_S = 30
RESTART_PAUSE_S = 1.0  # between the death of a worker and its restart, when it died young
YOUNG_S = 10.0


class WorkerFailed(RuntimeError):
    """A worker process could not start."""


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
