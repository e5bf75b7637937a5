"""The archive's own commands (serve, fsck, import, peers, backup, audit): what each does and prints.

Both command lines wrap them: ``python -m archive_core`` and the back-office's ``flask --app wsgi``
(through :mod:`archive_core.api`). Each command writes its lines through *echo* (``echo(line)``,
``echo(line, err=True)`` for the error stream) and returns its exit status; a command that cannot do
its job raises :class:`CommandFailed`, which each command line presents in its own way.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
from pathlib import Path
from typing import Callable, Iterable, Protocol

from archive_core.archive import Archive
from archive_core.config import Settings
from archive_core.db import read_session, write_session
from archive_core.errors import ArchiveError, JournalBusy, NotFound


class Echo(Protocol):
    def __call__(self, message: str, err: bool = False) -> object: ...


class CommandFailed(ArchiveError):
    """A command that could not do its job: the reason, and the exit status (2: not supported here)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# -- the DICOM server -------------------------------------------------------------------------------


def serve(archive: Archive) -> None:
    """Replay the journal, serve DICOM until SIGTERM or SIGINT, then stop cleanly."""
    from archive_core.net.server import start_server

    # pynetdicom logs every message at INFO: far too much at hundreds of images a second.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    if archive.settings.DICOM_WORKERS > 1:
        from archive_core.net.supervisor import serve_with_workers

        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        serve_with_workers(archive, stop)
        return
    from archive_core.net.tls import TLSConfigError

    try:
        running = start_server(archive)
    except (JournalBusy, TLSConfigError) as exc:
        archive.close()
        raise SystemExit(f"cannot start: {exc}") from exc
    # pynetdicom's server runs a full gc.collect() every 60 turns of its accept loop (about every 30 s,
    # more often under many associations): over what startup loaded that holds the GIL for 50-100 ms,
    # stalling every transfer in progress. What is alive now lives as long as the process: frozen,
    # those collections only look at what came after.
    gc.freeze()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    tls_note = f", DICOM TLS on port {running.tls_port}" if running.tls_port else ""
    print(f"DICOM archive {archive.settings.DICOM_AE_TITLE} listening on port {running.port}{tls_note}", flush=True)
    stop.wait()
    running.stop()
    archive.close()


# -- index and storage ------------------------------------------------------------------------------


def fsck(archive: Archive, echo: Echo, *, repair: bool = False, verify_checksums: bool = True) -> int:
    """Compare index and storage, print what is wrong; 1 while problems remain."""
    from archive_core.maintenance import fsck as check

    try:
        report = check(archive, repair=repair, verify_checksums=verify_checksums)
    except JournalBusy as exc:
        raise CommandFailed(str(exc)) from exc
    for line in report.repaired:
        echo(f"repaired: {line}")
    for key in report.missing_files:
        echo(f"missing file: {key}")
    for key in report.orphan_files:
        echo(f"file without index row: {key}")
    for key in report.checksum_mismatches:
        echo(f"checksum mismatch: {key}")
    if report.journal_pending:
        echo(f"journal entries not yet indexed: {report.journal_pending}")
    for location in report.pending_changes:
        echo(f"pending (interrupted correction or tier move; --repair finishes it): {location}")
    echo(f"checked {report.checked} instances, {report.problems} problems")
    return 1 if report.problems else 0


def import_folder(archive: Archive, path: Path, echo: Echo, *, external: bool = False,
                  progress: Callable[[Iterable[Path]], Iterable[Path]] = lambda it: it) -> int:
    """Bulk-load a folder of DICOM files; unreadable ones are skipped and listed."""
    from archive_core.maintenance import import_path

    report = import_path(archive, path, external=external, progress=progress)
    for name, reason in report.unreadable:
        echo(f"skipped: {name}: {reason}")
    echo(f"stored {report.stored}, duplicates {report.duplicates}, skipped {len(report.unreadable)}")
    return 0


# -- peers ------------------------------------------------------------------------------------------


def _peer_flags(peer) -> list[str]:
    return [f for f in (f"from {peer.allowed_from}" if peer.allowed_from else "",
                        "external" if peer.external else "", "tls" if peer.tls else "") if f]


def add_peer(archive: Archive, echo: Echo, ae_title: str, host: str, port: int, *, allowed_from: str | None = None,
             external: bool = False, tls: bool = False) -> int:
    """Register (or re-register) a DICOM peer."""
    from archive_core import peers

    with write_session(archive.sessions) as s:
        try:
            peer = peers.add_peer(s, ae_title, host, port, external=external, allowed_from=allowed_from, tls=tls)
        except ValueError as exc:
            raise CommandFailed(str(exc)) from exc
    flags = ", ".join(_peer_flags(peer))
    echo(f"peer {peer.ae_title} at {peer.host}:{peer.port}" + (f" ({flags})" if flags else ""))
    return 0


def list_peers(archive: Archive, echo: Echo) -> int:
    from archive_core import peers

    with read_session(archive.sessions) as s:
        for p in peers.list_peers(s):
            echo("\t".join([p.ae_title, p.host, str(p.port), *_peer_flags(p)]))
    return 0


def remove_peer(archive: Archive, echo: Echo, ae_title: str) -> int:
    from archive_core import peers

    with write_session(archive.sessions) as s:
        try:
            peers.remove_peer(s, ae_title)
        except NotFound as exc:
            raise CommandFailed(str(exc)) from exc
    echo(f"peer {ae_title} removed")
    return 0


# -- backups ----------------------------------------------------------------------------------------


def backup(settings: Settings, dest: Path, echo: Echo, *, with_signing_key: bool = False,
           journal_wait_seconds: float = 10.0) -> int:
    """Write a consistent backup into *dest* (objects copied only when new or changed)."""
    from archive_core import backup as b
    from archive_core.backup_engines import NotSupported

    try:
        report = b.backup(settings, dest, with_signing_key=with_signing_key, journal_wait_seconds=journal_wait_seconds)
    except NotSupported as exc:
        raise CommandFailed(str(exc), status=2) from exc
    except b.BackupError as exc:
        raise CommandFailed(str(exc)) from exc
    if report.journal_pending:
        echo(f"journal entries not yet indexed (not in this backup): {report.journal_pending}")
    if report.stripped:
        echo(f"settings left out (secrets): {', '.join(report.stripped)}")
    if not report.signing_key:
        echo("the audit signing key is not in the backup: keep a copy of it elsewhere")
    echo(f"backed up {report.objects} objects: {report.copied} copied ({report.copied_bytes} bytes), "
         f"{report.removed} removed")
    return 0


def verify_backup(src: Path, echo: Echo) -> int:
    """Re-hash every object of the backup *src* and check its database; 1 naming problems."""
    from archive_core import backup as b

    checked, problems = b.verify_backup(src)
    for line in problems:
        echo(line)
    echo(f"checked {checked} objects, {len(problems)} problems")
    return 1 if problems else 0


def restore(src: Path, instance_path: Path, echo: Echo, *, force: bool = False) -> int:
    """Rebuild the instance at *instance_path* from the backup *src* (then the schema is upgraded)."""
    from archive_core import backup as b

    try:
        notes = b.restore(src, instance_path, force=force)
    except b.BackupError as exc:
        raise CommandFailed(str(exc)) from exc
    for line in notes:
        echo(line)
    return 0


# -- the audit trail --------------------------------------------------------------------------------


def audit_verify(archive: Archive, echo: Echo) -> int:
    """Check the hash chain against the signed checkpoints; 1 on any problem."""
    from archive_core import audit

    report = audit.verify_instance(archive.sessions, archive.settings)
    if report.ok:
        echo(f"audit chain intact: {report.checked} events, {report.checkpoints} signed checkpoints "
             f"(anchored up to event {report.anchored_up_to})")
        for note in report.notes:
            echo(f"note: {note}")
        return 0
    if report.first_bad_id is not None:
        echo(f"audit chain broken at event {report.first_bad_id} (after {report.checked} good events)")
    else:
        echo(f"audit checkpoints broken ({report.checked} events in the chain)")
    for problem in report.problems:
        echo(f"- {problem}")
    return 1


def audit_checkpoint(archive: Archive, echo: Echo) -> int:
    """Sign the chain's head now (the scheduler does it periodically)."""
    from archive_core import audit

    number = audit.checkpoint_instance(archive.sessions, archive.settings, reason="manual")
    echo(f"audit checkpoint {number} written" if number else "audit checkpoint: nothing new since the last one")
    return 0
