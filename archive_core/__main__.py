"""``python -m archive_core serve``: the DICOM archive alone, without Flask or the back-office."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from archive_core import commands
from archive_core.archive import Archive
from archive_core.config import Settings


def _echo(message: str, err: bool = False) -> None:
    print(message, file=sys.stderr if err else sys.stdout, flush=True)


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
        commands.serve(archive)
        return
    if args.path is None:
        parser.error(f"{args.command} needs a folder")
    raise SystemExit(backup_command(args.command, args.path, with_signing_key=args.with_signing_key,
                                    force=args.force))


def backup_command(command: str, path: Path, *, with_signing_key: bool = False, force: bool = False) -> int:
    """``python -m archive_core backup|verify-backup|restore``: the exit status (2: engine not supported)."""
    try:
        if command == "backup":
            return commands.backup(Settings.load(), path, _echo, with_signing_key=with_signing_key)
        if command == "verify-backup":
            return commands.verify_backup(path, _echo)
        return commands.restore(path, Settings.load().instance_path, _echo, force=force)
    except commands.CommandFailed as exc:
        print(f"error: {exc}")
        return exc.status


if __name__ == "__main__":
    main()
