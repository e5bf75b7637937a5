"""Blob stores: where the archive keeps the bytes of what it was sent.

``file:///path`` (the default: a folder of the instance) or ``s3://bucket/prefix`` (any
S3-compatible object store, :mod:`archive_core.storage.s3`). Readers know keys only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from archive_core.storage.base import BlobStat, BlobStore, FileRange, blob_checksum
from archive_core.storage.filesystem import FilesystemStore

if TYPE_CHECKING:
    from archive_core.config import Settings

__all__ = ["BlobStat", "BlobStore", "FileRange", "FilesystemStore", "blob_checksum", "open_store", "open_stores"]


def open_store(
    url: str,
    *,
    min_free_bytes: int = 0,
    journal_root: str | Path | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    addressing_style: str = "auto",
    storage_class: str = "",
    journal: str = "",
) -> BlobStore:
    """The store for *url*: ``file:///path`` or ``s3://bucket/prefix``.

    An S3 store keeps its journal in the local folder *journal_root* (None: it takes no objects
    from a journal: the archive tier); *min_free_bytes* is then that folder's free-space floor.
    *journal*: the journal folder an SCP worker process writes to (``incoming/worker-N``).
    """
    parsed = urlparse(url)
    if parsed.scheme in ("file", ""):
        return FilesystemStore(parsed.path or url, min_free_bytes=min_free_bytes, journal=journal)
    if parsed.scheme == "s3":
        from archive_core.storage.s3 import S3Store

        return S3Store(parsed.netloc, parsed.path, journal_root=journal_root, endpoint_url=endpoint_url,
                       region=region, addressing_style=addressing_style, storage_class=storage_class,
                       min_free_bytes=min_free_bytes, journal=journal)
    raise ValueError(f"unsupported storage URL scheme: {parsed.scheme!r} (file:// or s3://)")


def open_stores(settings: "Settings", *, journal: str = "") -> tuple[BlobStore, BlobStore]:
    """(active store, archive-tier store) as *settings* say; *journal*: an SCP worker's journal folder."""
    s3 = {"endpoint_url": settings.S3_ENDPOINT_URL or None, "region": settings.S3_REGION or None,
          "addressing_style": settings.S3_ADDRESSING_STYLE}
    active = open_store(settings.storage_url, min_free_bytes=settings.STORAGE_MIN_FREE_BYTES,
                        journal_root=settings.storage_journal_path, journal=journal, **s3)
    archive = open_store(settings.archive_tier_storage_url, storage_class=settings.ARCHIVE_TIER_S3_STORAGE_CLASS, **s3)
    return active, archive
