"""``python -m archive_core serve``: the DICOM archive alone, without Flask or the back-office."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from archive_core.archive import Archive
from archive_core.config import Settings


def serve_forever(archive: Archive) -> None:
    """Replay the journal, serve DICOM until SIGTERM or SIGINT, then stop cleanly."""
    from archive_core.net.server import start_server

    # pynetdicom logs every message at INFO: far too much at hundreds of images a second.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    from archive_core.errors import JournalBusy
    from archive_core.net.tls import TLSConfigError

    try:
        running = start_server(archive)
    except (JournalBusy, TLSConfigError) as exc:
        archive.close()
        raise SystemExit(f"cannot start: {exc}") from exc
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
    parser.add_argument("command", choices=["serve"])
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from archive_core.config import private_files

    private_files()
    serve_forever(Archive.open(Settings.load()))


if __name__ == "__main__":
    main()
