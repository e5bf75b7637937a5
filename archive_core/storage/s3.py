"""The S3-compatible blob store (AWS S3, MinIO, Ceph RGW, ...) through boto3.

Objects live under ``s3://bucket/prefix/<key>``; the journal stays on the node's local disk
(:class:`~archive_core.storage.journal.LocalJournal`). An upload is confirmed by the store itself:
each PUT (or multipart part) carries its Content-MD5, which the server checks before it answers,
and the answer's ETag and a HEAD of the object's length are compared with what was sent; only then
does the journal entry go. Reads stream ranged GETs in bounded chunks.

Credentials come from boto3's own chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, an instance role), never from the archive's settings files.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
from pathlib import Path
from typing import BinaryIO, Iterator

from archive_core.errors import StorageRefused, StorageUnavailable
from archive_core.storage.base import BlobStat, BlobStore
from archive_core.storage.filesystem import check_key
from archive_core.storage.journal import LocalJournal

log = logging.getLogger(__name__)

# Objects up to this size go in one PUT; larger ones in parts of this size (10,000 parts: 160 GiB).
PART_BYTES = 16 * 1024**2
_READ_BYTES = 1024**2


def _md5(data) -> tuple[str, str]:
    digest = hashlib.md5(data, usedforsecurity=False)
    return digest.hexdigest(), base64.b64encode(digest.digest()).decode()


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _etag_is_md5(answer: dict) -> bool:
    # With KMS or customer-key encryption the ETag is not the MD5; the server's Content-MD5 check stands.
    return not (answer.get("SSEKMSKeyId") or answer.get("SSECustomerAlgorithm"))


def _is_missing(exc: Exception) -> bool:
    return _error_code(exc) in ("404", "NoSuchKey", "NotFound")


class S3Store(LocalJournal, BlobStore):
    """Blobs as objects of *bucket* under *prefix*; the journal in the local folder *journal_root*.

    *journal_root* None: a store that only holds objects (the archive tier), whose journal is unused.
    *journal*: an SCP worker process's folder under the journal (``incoming/worker-N``).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        journal_root: str | os.PathLike | None,
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str = "auto",
        storage_class: str = "",
        min_free_bytes: int = 0,
        journal: str = "",
        timeout: float = 30.0,
    ) -> None:
        import boto3
        from botocore.config import Config

        if not bucket:
            raise ValueError("an s3:// storage URL names a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url or None
        self.storage_class = storage_class
        if journal_root is not None:
            self._init_journal(journal_root, min_free_bytes=min_free_bytes, journal=journal)
        else:
            self.root = None  # type: ignore[assignment]
        config = Config(
            region_name=region or None,
            connect_timeout=min(timeout, 10),
            read_timeout=timeout,
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": addressing_style},
            # Content-MD5 is what every S3-compatible server verifies; the newer default CRC
            # trailers are not understood by all of them (older MinIO, Ceph RGW).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=50,
        )
        self.client = boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, config=config)

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _unavailable(self, what: str, exc: Exception) -> StorageUnavailable:
        code = _error_code(exc)
        reason = f"{code} {exc}" if code else f"{exc.__class__.__name__}: {exc}"
        return StorageUnavailable(f"{what} on {self.describe()} failed: {reason}")

    def check_access(self) -> None:
        """Refuse to start with credentials the store rejects or a bucket it does not have."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except NoCredentialsError as exc:
            raise StorageRefused(
                f"no S3 credentials for {self.describe()}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE) in the environment of the archive"
            ) from exc
        except ClientError as exc:
            code = _error_code(exc)
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise StorageRefused(
                    f"{self.describe()} refused our credentials ({code}): check AWS_ACCESS_KEY_ID, "
                    "AWS_SECRET_ACCESS_KEY and the bucket's policy"
                ) from exc
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise StorageRefused(f"no bucket {self.bucket!r} on {self.describe()}: create it first") from exc
            raise self._unavailable("checking the bucket", exc) from exc
        except BotoCoreError as exc:
            raise self._unavailable("checking the bucket", exc) from exc

    # -- objects -------------------------------------------------------------------------------

    def put(self, key: str, source: BinaryIO | bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        name = self._name(key)
        if isinstance(source, (bytes, bytearray, memoryview)):
            source = io.BytesIO(bytes(source))
        start = source.tell()
        size = source.seek(0, os.SEEK_END) - start
        source.seek(start)
        extra = {"StorageClass": self.storage_class} if self.storage_class else {}
        try:
            if size <= PART_BYTES:
                data = source.read(size)
                md5_hex, md5_b64 = _md5(data)
                answer = self.client.put_object(Bucket=self.bucket, Key=name, Body=data, ContentMD5=md5_b64,
                                                ContentLength=size, **extra)
                if _etag_is_md5(answer) and answer.get("ETag", "").strip('"') != md5_hex:
                    raise StorageUnavailable(f"{self.describe()} stored {key} with another ETag than its MD5")
            else:
                self._put_parts(name, source, size, extra)
            stat = self.stat(key)
        except (BotoCoreError, ClientError) as exc:
            raise self._unavailable(f"storing {key}", exc) from exc
        if stat is None or stat.size != size:
            raise StorageUnavailable(f"{self.describe()} does not hold {key} with its {size} bytes after the upload")

    def _put_parts(self, name: str, source: BinaryIO, size: int, extra: dict) -> None:
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=name, **extra)["UploadId"]
        try:
            parts = []
            number = 1
            while block := source.read(PART_BYTES):
                md5_hex, md5_b64 = _md5(block)
                answer = self.client.upload_part(Bucket=self.bucket, Key=name, UploadId=upload, PartNumber=number,
                                                 Body=block, ContentMD5=md5_b64, ContentLength=len(block))
                if _etag_is_md5(answer) and answer.get("ETag", "").strip('"') != md5_hex:
                    raise StorageUnavailable(f"part {number} of {name} stored with another ETag than its MD5")
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
                number += 1
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload,
                                                  MultipartUpload={"Parts": parts})
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload)
            except Exception:
                log.warning("cannot abort the multipart upload of %s", name)
            raise

    def open(self, key: str) -> BinaryIO:
        stat = self.stat(key)
        if stat is None:
            raise FileNotFoundError(f"no object {key} in {self.describe()}")
        return io.BufferedReader(_RangedReader(self, self._name(key), stat.size), buffer_size=_READ_BYTES)

    def stat(self, key: str) -> BlobStat | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._name(key))
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise self._unavailable(f"looking up {key}", exc) from exc
        except BotoCoreError as exc:
            raise self._unavailable(f"looking up {key}", exc) from exc
        return BlobStat(key, int(head["ContentLength"]))

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._name(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._unavailable(f"deleting {key}", exc) from exc

    def keys(self) -> Iterator[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                for obj in page.get("Contents", ()):
                    yield obj["Key"][len(self.prefix):]
        except (BotoCoreError, ClientError) as exc:
            raise self._unavailable("listing objects", exc) from exc

    # -- from the journal ----------------------------------------------------------------------

    stages_uploads = True

    def stage_many(self, entries: list[tuple[Path, str]]) -> None:
        """Upload a batch on parallel connections (a round trip each, overlapped)."""
        if len(entries) <= 1:
            return super().stage_many(entries)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(16, len(entries)), thread_name_prefix="s3-upload") as pool:
            for future in [pool.submit(self.stage, incoming, key) for incoming, key in entries]:
                future.result()

    def stage(self, incoming: Path, key: str) -> None:
        """Upload the journal entry under *key* and have the store confirm it (see :meth:`put`)."""
        self.put_file(key, incoming)

    def commit(self, incoming: Path, key: str) -> None:
        # Staged and confirmed before the index named it: the journal entry can go.
        incoming.unlink(missing_ok=True)

    def sync_committed(self, keys: list[str], journals: set[Path] | None = None) -> None:
        self.sync_journals(journals)


class _RangedReader(io.RawIOBase):
    """A seekable reader of one S3 object: one streaming GET from the current position, read in the
    caller's chunk sizes; a seek elsewhere starts another ranged GET. Memory holds one chunk."""

    def __init__(self, store: S3Store, name: str, size: int) -> None:
        self._store, self._name, self._size = store, name, size
        self.name = f"s3://{store.bucket}/{name}"  # what readers (pydicom) show of the file
        self._pos = 0
        self._body = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        target = max(0, base + offset)
        if target != self._pos:
            self._drop()
            self._pos = target
        return self._pos

    def readinto(self, buffer) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        want = min(len(buffer), self._size - self._pos)
        if want <= 0:
            return 0
        try:
            if self._body is None:
                answer = self._store.client.get_object(Bucket=self._store.bucket, Key=self._name,
                                                       Range=f"bytes={self._pos}-")
                self._body = answer["Body"]
            data = self._body.read(want)
        except (BotoCoreError, ClientError) as exc:
            self._drop()
            raise OSError(f"reading {self._name} from {self._store.describe()}: {exc}") from exc
        if not data:
            raise OSError(f"{self._name} ended at {self._pos} of {self._size} bytes")
        n = len(data)
        buffer[:n] = data
        self._pos += n
        return n

    def _drop(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def close(self) -> None:
        self._drop()
        super().close()
