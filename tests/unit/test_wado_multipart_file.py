"""The WADO-RS answer as one file (backoffice/dicomweb/multipart.py): reads, seeks and failures.

The web process's tests (tests/integration/test_wado_multipart.py) send it through waitress; here
its reading is checked against the bytes it stands for, read the way waitress and werkzeug read it.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backoffice.dicomweb import multipart
from backoffice.dicomweb.multipart import AnswerAborted, MultipartFile, StoredPart, answer_identity, multipart_segments


@dataclass(frozen=True)
class Stored:
    sop_instance_uid: str
    storage_key: str
    transfer_syntax_uid: str = "1.2.840.10008.1.2.1"
    checksum_sha256: str = "c0ffee"


def _files(tmp_path: Path, contents: list[bytes]) -> tuple[list[Stored], list[int]]:
    found = []
    for n, content in enumerate(contents):
        (tmp_path / f"{n}.dcm").write_bytes(content)
        found.append(Stored(f"1.2.3.{n}", f"{n}.dcm"))
    return found, [len(c) for c in contents]


def _expected(found, contents, boundary: str) -> bytes:
    return b"".join(f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax={s.transfer_syntax_uid}"
                    f"\r\n\r\n".encode() + c + b"\r\n" for s, c in zip(found, contents)) + f"--{boundary}--\r\n".encode()


class Opener:
    """Opens the test's files by key, counting how many are open at once."""

    def __init__(self, root: Path):
        self.root, self.open_now, self.most_open = root, 0, 0

    def __call__(self, stored):
        opener, f = self, open(self.root / stored.storage_key, "rb")
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)

        class Counted:
            def fileno(self):
                return f.fileno()

            def close(self):
                if not f.closed:
                    opener.open_now -= 1
                f.close()

        return Counted()


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(contents=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=6),
       ops=st.lists(st.tuples(st.sampled_from(["read", "seek", "seek_cur", "waitress"]),
                              st.integers(min_value=0, max_value=20000)), max_size=30))
def test_reads_and_seeks_give_the_bytes_of_the_whole_answer(tmp_path, monkeypatch, contents, ops):
    """Any sequence of reads and seeks (absolute, relative, past the end, waitress's read-then-seek-
    back-then-skip) reads what a BytesIO of the whole answer reads, with at most one file open; a
    read is never longer than MAX_READ (here 1,000 bytes) and is empty only
    at the end. Bad case tried: offsets counted from the wrong segment at a part boundary."""
    monkeypatch.setattr(multipart, "MAX_READ", 1000)

    def read_once(n):
        got = body.read(n)
        assert len(got) <= 1000 and (got or n == 0 or body.tell() >= body.length)
        return got

    def read(n):
        got = b""
        while len(got) < n and (piece := read_once(n - len(got))):
            got += piece
        return got

    for old in tmp_path.glob("*.dcm"):
        old.unlink()
    found, sizes = _files(tmp_path, contents)
    opener = Opener(tmp_path)
    body = MultipartFile(multipart_segments(found, sizes, "b0undary"), opener)
    reference = io.BytesIO(_expected(found, contents, "b0undary"))
    assert body.length == len(reference.getvalue())
    for op, n in ops:
        if op == "read":
            assert read(n) == reference.read(n)
        elif op == "seek":
            assert body.seek(n) == reference.seek(n)
        elif op == "seek_cur":
            assert body.seek(n // 7, io.SEEK_CUR) == reference.seek(n // 7, io.SEEK_CUR)
        else:  # ReadOnlyFileBasedBuffer.get(n) then skip(sent): read, seek back, seek forward what was sent
            at = body.tell()
            got = read_once(n)
            assert got == reference.read(len(got))
            body.seek(at)
            body.seek(len(got) // 2, io.SEEK_CUR)
            reference.seek(at + len(got) // 2)
        assert body.tell() == reference.tell()
    body.seek(0)
    assert body.read() == reference.getvalue()
    assert body.seek(0, io.SEEK_END) == body.length
    assert opener.most_open <= 1
    body.close()
    assert opener.open_now == 0 and body.closed


def test_the_boundary_is_the_same_for_the_same_files_and_changes_with_them():
    """Same instances, keys, checksums and sizes: the same identity (a resumed download reads the
    same bytes); another checksum (an object replaced under its key) or another secret: another."""
    found = [Stored("1.2.3.1", "a.dcm"), Stored("1.2.3.2", "b.dcm")]
    one = answer_identity(b"secret", found, [10, 20])
    assert one == answer_identity(b"secret", found, [10, 20]) and len(one) == 64
    assert one != answer_identity(b"secret", [found[0], Stored("1.2.3.2", "b.dcm", checksum_sha256="beef")], [10, 20])
    assert one != answer_identity(b"secret", found, [10, 21])
    assert one != answer_identity(b"other secret", found, [10, 20])


def test_a_missing_or_changed_file_fails_the_read_after_what_came_before(tmp_path):
    """Bad input: the second file removed, then one rewritten with another length, after the answer
    was sized. Reads give what precedes the missing file's content (its part headers included),
    then the next read raises AnswerAborted (an OSError: the server closes the
    connection) naming the SOP Instance UID; it never returns fewer bytes as if the answer ended."""
    contents = [b"A" * 100, b"B" * 100]
    found, sizes = _files(tmp_path, contents)
    whole = _expected(found, contents, "b0undary")
    body = MultipartFile(multipart_segments(found, sizes, "b0undary"), Opener(tmp_path))
    first = body.read(10)
    assert first == whole[:10]
    os.unlink(tmp_path / "1.dcm")
    with pytest.raises(AnswerAborted, match=r"1\.2\.3\.1 could not be opened"):
        while piece := body.read(10_000):
            first += piece
    assert whole.startswith(first) and first.endswith(b"transfer-syntax=1.2.840.10008.1.2.1\r\n\r\n")
    assert first.count(b"A") == 100 and b"B" not in first
    with pytest.raises(AnswerAborted):  # again: it never reads as if the answer had ended
        body.read(10_000)
    assert isinstance(AnswerAborted("x"), OSError)
    (tmp_path / "1.dcm").write_bytes(b"B" * 99)
    with pytest.raises(AnswerAborted, match=r"1\.2\.3\.1 is 99 bytes, not the 100"):
        body.read(10_000)
    body.close()
