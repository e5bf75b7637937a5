"""Blob stores: where the archive keeps the bytes of what it was sent."""

from __future__ import annotations

from urllib.parse import urlparse

from archive_core.storage.base import BlobStore, FileRange
from archive_core.storage.filesystem import FilesystemStore

__all__ = ["BlobStore", "FileRange", "FilesystemStore", "open_store"]


def open_store(url: str, *, min_free_bytes: int = 0) -> BlobStore:
    """The store for *url*: ``file:///path`` today; an S3-compatible scheme has room to come."""
    parsed = urlparse(url)
    if parsed.scheme in ("file", ""):
        return FilesystemStore(parsed.path or url, min_free_bytes=min_free_bytes)
    raise ValueError(f"unsupported storage URL scheme: {parsed.scheme!r}")
