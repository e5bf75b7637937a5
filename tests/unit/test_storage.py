"""The blob store interface, the same on a local folder and on an S3-compatible server (moto, a real
HTTP endpoint started by the tests): put/open/stat/delete/list by key, streamed reads, confirmed writes."""

from __future__ import annotations

import io
import os
import re
import tracemalloc
from pathlib import Path

import pytest

from archive_core.errors import StorageRefused
from archive_core.storage import BlobStore, FilesystemStore, blob_checksum, open_store
from tests.helpers import ROOT, make_ct


@pytest.fixture(params=["filesystem", "s3"])
def store(request, tmp_path) -> BlobStore:
    if request.param == "filesystem":
        return open_store(f"file://{tmp_path / 'storage'}")
    overrides = request.getfixturevalue("s3_storage")
    return open_store(overrides["STORAGE_URL"], journal_root=tmp_path / "journal",
                      endpoint_url=overrides["S3_ENDPOINT_URL"], addressing_style="path")


def test_put_open_stat_list_delete_by_key(store):
    """What is put under a key reads back the same, is listed and sized; deleting twice is fine."""
    store.put_bytes("ab/1.2.3/1.2.3.4/1.2.3.4.5.dcm", b"first")
    store.put("ab/1.2.3/1.2.3.4/1.2.3.4.6.dcm", io.BytesIO(b"second object"))
    assert sorted(store.keys()) == ["ab/1.2.3/1.2.3.4/1.2.3.4.5.dcm", "ab/1.2.3/1.2.3.4/1.2.3.4.6.dcm"]
    assert store.stat("ab/1.2.3/1.2.3.4/1.2.3.4.6.dcm").size == 13
    assert store.stat("ab/1.2.3/1.2.3.4/nothing.dcm") is None and not store.exists("ab/nothing.dcm")
    with store.open("ab/1.2.3/1.2.3.4/1.2.3.4.5.dcm") as f:
        assert f.read() == b"first"
    store.put_bytes("ab/1.2.3/1.2.3.4/1.2.3.4.5.dcm", b"replaced")
    assert store.read_bytes("ab/1.2.3/1.2.3.4/1.2.3.4.5.dcm") == b"replaced"
    store.delete("ab/1.2.3/1.2.3.4/1.2.3.4.5.dcm")
    store.delete("ab/1.2.3/1.2.3.4/1.2.3.4.5.dcm")
    assert list(store.keys()) == ["ab/1.2.3/1.2.3.4/1.2.3.4.6.dcm"]
    with pytest.raises(FileNotFoundError):
        store.open("ab/1.2.3/1.2.3.4/1.2.3.4.5.dcm")


@pytest.mark.parametrize("key", ["../escape.dcm", "/abs.dcm", "a/../../b.dcm", "a b.dcm", ""])
def test_a_key_that_is_not_one_of_ours_is_refused(store, key):
    """Bad input: keys that would leave the store's folder or prefix; refused before any I/O."""
    with pytest.raises(ValueError):
        store.put_bytes(key, b"x")


def test_a_large_object_goes_in_parts_and_reads_back_by_ranges(store, monkeypatch):
    """An object over the part size (multipart upload on S3) reads back identical, from any position,
    while the reader never holds more than a chunk: the sender's memory bound."""
    from archive_core.storage import s3

    monkeypatch.setattr(s3, "PART_BYTES", 5 * 1024**2)  # S3's smallest part: three parts here
    data = os.urandom(11 * 1024**2 + 7)
    store.put("cd/big.dcm", io.BytesIO(data))
    assert store.stat("cd/big.dcm").size == len(data)
    with store.open("cd/big.dcm") as f:
        assert f.seek(0, os.SEEK_END) == len(data)
        f.seek(6 * 1024**2 + 3)
        assert f.read(1000) == data[6 * 1024**2 + 3:6 * 1024**2 + 1003]
        f.seek(0)
        tracemalloc.start()
        try:
            buffer = bytearray(256 * 1024)
            got = bytearray()
            while n := f.readinto(buffer):
                got += buffer[:n]
                if len(got) > 2 * 1024**2:
                    break
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert got == data[:len(got)]
        assert peak < len(got) + 3 * 1024**2, peak  # what we kept, plus a chunk or two: never the object


def test_blob_checksum_is_the_index_checksum(store, tmp_path):
    """The dataset's SHA-256 (after the meta group), computed by reading the object in chunks."""
    import hashlib

    from archive_core.part10 import dataset_offset

    path = tmp_path / "ct.dcm"
    make_ct().save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    store.put_file("ef/ct.dcm", path)
    assert blob_checksum(store, "ef/ct.dcm") == hashlib.sha256(data[dataset_offset(data):]).hexdigest()


def test_s3_keeps_its_journal_local_and_uploads_on_stage(s3_storage, s3_server, tmp_path):
    """An S3 store's journal is a local folder; a staged entry is in the bucket, confirmed, and the
    commit only then drops the journal file."""
    store = open_store(s3_storage["STORAGE_URL"], journal_root=tmp_path / "journal",
                       endpoint_url=s3_storage["S3_ENDPOINT_URL"], addressing_style="path")
    entry = store.write_incoming("0001-x.dcm", [b"header", b"dataset"])
    assert entry.parent == tmp_path / "journal" / "incoming" and store.incoming() == [entry]
    store.stage(entry, "12/key.dcm")
    bucket, prefix = s3_storage["STORAGE_URL"][5:].split("/", 1)
    assert s3_server.objects(bucket, prefix + "/") == {"12/key.dcm": b"headerdataset"}
    assert entry.exists()  # not before the index names it
    store.commit(entry, "12/key.dcm")
    assert store.incoming() == []


def test_archive_tier_objects_get_the_configured_storage_class(s3_storage, s3_server, tmp_path):
    """ARCHIVE_TIER_S3_STORAGE_CLASS: the archive tier's objects are written in that class."""
    from archive_core.config import Settings
    from archive_core.storage import open_stores

    _active, archived = open_stores(Settings(instance_path=tmp_path, **s3_storage))
    archived.put_bytes("aa/x.dcm", b"x")
    bucket, prefix = s3_storage["ARCHIVE_TIER_STORAGE_URL"][5:].split("/", 1)
    head = s3_server.client().head_object(Bucket=bucket, Key=f"{prefix}/aa/x.dcm")
    assert head.get("StorageClass") == "STANDARD_IA"


def test_wrong_credentials_are_a_clear_error(tmp_path, monkeypatch):
    """Bad input: credentials the S3 server does not know (moto checking them); refused with a message
    that names the store and what to check, never the secret."""
    from tests.servers import S3Server

    server = S3Server(tmp_path / "moto-auth", auth=True)
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        store = open_store("s3://archive-bucket/objects", journal_root=None, endpoint_url=server.url,
                           addressing_style="path")
        with pytest.raises(StorageRefused) as refused:
            store.check_access()
    finally:
        server.stop()
    message = str(refused.value)
    assert "refused our credentials" in message and "s3://archive-bucket/objects/" in message
    assert "not-the-secret" not in message


def test_a_missing_bucket_is_a_clear_error(s3_storage):
    """Bad input: a bucket that does not exist on the server."""
    store = open_store("s3://no-such-bucket-here/x", journal_root=None, endpoint_url=s3_storage["S3_ENDPOINT_URL"],
                       addressing_style="path")
    with pytest.raises(StorageRefused, match="no bucket 'no-such-bucket-here'"):
        store.check_access()


def test_an_unknown_storage_scheme_is_refused(tmp_path):
    """Bad input: STORAGE_URL with a scheme no backend serves."""
    with pytest.raises(ValueError, match="unsupported storage URL scheme"):
        open_store("ftp://somewhere/x")


def test_no_archive_code_reads_a_path_out_of_a_store():
    """Readers go through open/stat/delete by key; only the filesystem store knows its paths."""
    offenders = []
    for path in sorted((ROOT / "archive_core").rglob("*.py")) + sorted((ROOT / "backoffice").rglob("*.py")):
        if path.parent.name == "storage":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bpath_of\(|\bFilesystemStore\b|\.objects\s*/", line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


def test_the_filesystem_layout_is_unchanged(tmp_path):
    """Existing instances keep working: objects under objects/<key>, the journal in incoming/."""
    store = FilesystemStore(tmp_path)
    store.put_bytes("ab/1.2/1.2.3/1.2.3.4.dcm", b"x")
    assert (tmp_path / "objects" / "ab" / "1.2" / "1.2.3" / "1.2.3.4.dcm").read_bytes() == b"x"
    entry = store.write_incoming("e.dcm", [b"y"])
    assert entry == tmp_path / "incoming" / "e.dcm"
    store.commit(entry, "cd/k.dcm")
    assert Path(tmp_path / "objects" / "cd" / "k.dcm").read_bytes() == b"y"
