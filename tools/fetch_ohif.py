"""Fetch OHIF v3's built viewer (the ``@ohif/app`` npm package's ``dist/``) into ``.cache/ohif/<version>/``.

Pinned version and npm ``sha512`` integrity, checked before anything is unpacked; standard library only
(no npm, no Node). Idempotent: a complete copy (its ``.fetched`` marker written last, after every file)
is left as it is. ``make ohif`` runs it; ``ARCHIVAGE_OHIF_DIR=.cache/ohif/3.13.2`` serves it under
``/ohif/`` (docs/radiology.md, "OHIF v3 on our DICOMweb"). Nothing of OHIF is committed.

    python3 tools/fetch_ohif.py [--dest DIR] [--tarball FILE]

``--tarball`` takes a copy downloaded elsewhere (an offline machine); it is verified the same way.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

VERSION = "3.13.2"
URL = f"https://registry.npmjs.org/@ohif/app/-/app-{VERSION}.tgz"
# `npm view @ohif/app@3.13.2 dist.integrity`
INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / ".cache" / "ohif" / VERSION
MARKER = ".fetched"  # written last: a folder without it is an interrupted unpack, redone
PREFIX = "package/dist/"
CHUNK = 1 << 20


class FetchError(Exception):
    """Why the viewer could not be fetched: a sentence for the person who ran the command."""


def is_complete(dest: Path = DEST) -> bool:
    """True when *dest* holds the pinned package's ``dist/`` unpacked in full (marker and file count)."""
    try:
        marker = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("integrity") != INTEGRITY or not (dest / "index.html").is_file():
        return False
    return sum(len(files) for _root, _dirs, files in os.walk(dest)) - 1 == marker.get("files")


def _integrity(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def download(url: str, to: Path, *, timeout_s: float = 60) -> None:
    """Stream *url* into *to*; any network failure is a :class:`FetchError` saying what to do."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer, open(to, "wb") as out:
            expected = int(answer.headers.get("Content-Length") or 0)
            while block := answer.read(CHUNK):
                out.write(block)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(f"cannot download {url}: {reason}. No network? Behind a proxy, set HTTPS_PROXY; "
                         f"offline, download the file elsewhere and pass --tarball FILE") from exc
    if expected and to.stat().st_size != expected:
        raise FetchError(f"download of {url} cut short: {to.stat().st_size} of {expected} bytes; run it again")


def verify(tarball: Path) -> None:
    """Refuse a tarball whose sha512 is not the pinned npm integrity (a corrupted or substituted file)."""
    try:
        got = _integrity(tarball)
    except OSError as exc:
        raise FetchError(f"cannot read {tarball}: {exc.strerror or exc}") from exc
    if got != INTEGRITY:
        raise FetchError(f"{tarball.name}: integrity {got} is not the pinned {INTEGRITY} of @ohif/app@{VERSION}; "
                         "nothing was unpacked (a corrupted download, a proxy's error page, or another file)")


def unpack(tarball: Path, dest: Path) -> int:
    """Unpack the package's ``dist/`` into *dest* (replaced as a whole, by a rename); returns its file count.

    Regular files and folders only, inside *dest* (tarfile's ``data`` filter refuses links out of it,
    absolute paths and device files)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        count = 0
        try:
            with tarfile.open(tarball, "r:gz") as archive:
                for member in archive:
                    if not member.name.startswith(PREFIX) or member.name == PREFIX:
                        continue
                    if not (member.isfile() or member.isdir()):
                        raise FetchError(f"{tarball.name}: {member.name} is neither a file nor a folder; refused")
                    member.name = member.name[len(PREFIX):]
                    archive.extract(member, work, filter="data")
                    count += member.isfile()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise FetchError(f"cannot unpack {tarball.name}: {exc}") from exc
        if not (work / "index.html").is_file():
            raise FetchError(f"{tarball.name} holds no {PREFIX}index.html: not a built OHIF viewer")
        (work / MARKER).write_text(json.dumps({"version": VERSION, "integrity": INTEGRITY, "files": count}))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return count


def fetch(dest: Path = DEST, tarball: Path | None = None) -> str:
    """Make *dest* a complete copy of the pinned viewer; returns what was done, in a sentence."""
    if is_complete(dest):
        return f"OHIF {VERSION} already in {dest}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    downloaded = None
    if tarball is None:
        downloaded = tarball = dest.parent / f"app-{VERSION}.tgz.part"
    try:
        if downloaded is not None:
            print(f"downloading {URL} (about 50 MB)", flush=True)
            download(URL, downloaded)
        verify(tarball)
        count = unpack(tarball, dest)
    finally:
        if downloaded is not None:
            downloaded.unlink(missing_ok=True)
    return f"OHIF {VERSION} unpacked into {dest} ({count} files, integrity verified)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=DEST, help=f"where dist/ goes (default {DEST})")
    parser.add_argument("--tarball", type=Path, help="a local copy of the package instead of downloading it")
    args = parser.parse_args(argv)
    try:
        print(fetch(args.dest.resolve(), args.tarball))
    except FetchError as exc:
        print(f"fetch_ohif: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
