"""``python -m archive_core serve``: the DICOM archive alone, without Flask or the back-office."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import threading
from pathlib import Path

from archive_core.archive import Archive
from archive_core.config import Settings


def serve_forever(archive: Archive) -> None:
    """Replay the journal, serve DICOM until SIGTERM or SIGINT, then stop cleanly."""
    from archive_core.net.server import start_server

    # pynetdicom logs every message at INFO: far too much at hundreds of images a second.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    if archive.settings.DICOM_WORKERS > 1:
        from archive_core.net.workers import serve_with_workers

        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        serve_with_workers(archive, stop)
        return
    from archive_core.errors import JournalBusy
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m archive_core")
    parser.add_argument("command", choices=["serve", "backup", "verify-backup", "restore"])
    parser.add_argument("path", nargs="?", type=Path, help="backup: DEST; verify-backup, restore: SRC")
    parser.add_argument("--with-signing-key", action="store_true", help="backup: also copy the audit signing key")
    parser.add_argument("--force", action="store_true", help="restore: over an instance that holds data (moved aside)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from archive_core.config import private_files

    private_files()
    if args.command == "serve":
        from archive_core.errors import StorageRefused

        try:
            archive = Archive.open(Settings.load())
        except StorageRefused as exc:
            raise SystemExit(f"archivage: storage refused: {exc}") from exc
        serve_forever(archive)
        return
    if args.path is None:
        parser.error(f"{args.command} needs a folder")
    raise SystemExit(backup_command(args.command, args.path, with_signing_key=args.with_signing_key,
                                    force=args.force))


def backup_command(command: str, path: Path, *, with_signing_key: bool = False, force: bool = False) -> int:
    """``python -m archive_core backup|verify-backup|restore``: the exit status (2: engine not supported)."""
    from archive_core import backup as b

    try:
        if command == "backup":
            report = b.backup(Settings.load(), path, with_signing_key=with_signing_key)
            print(f"backed up {report.objects} objects: {report.copied} copied, {report.removed} removed; "
                  f"journal entries not yet indexed: {report.journal_pending}")
        elif command == "verify-backup":
            checked, problems = b.verify_backup(path)
            print("\n".join([*problems, f"checked {checked} objects, {len(problems)} problems"]))
            return 1 if problems else 0
        else:
            print("\n".join(b.restore(path, Settings.load().instance_path, force=force)))
    except b.NotSupported as exc:
        print(f"error: {exc}")
        return 2
    except b.BackupError as exc:
        print(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    main()
