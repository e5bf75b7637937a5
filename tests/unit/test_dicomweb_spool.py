"""STOW-RS bodies read as they arrive: parts spooled to files, whatever the sizes of the reads."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archive_core.stow import spool_multipart
from archive_core.errors import InvalidQuery

BOUNDARY = "b0undary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


class Trickle(io.RawIOBase):
    """A request body that arrives a few bytes at a time (as a slow client's would)."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self._data, self._sizes, self._pos, self._n = data, sizes or [1], 0, 0

    def read(self, size: int = -1) -> bytes:
        step = self._sizes[self._n % len(self._sizes)]
        self._n += 1
        chunk = self._data[self._pos : self._pos + step]
        self._pos += len(chunk)
        return chunk


def _body(parts: list[bytes], *, headers: bool = True) -> bytes:
    head = b"Content-Type: application/dicom\r\n" if headers else b""
    return (b"preamble\r\n" + b"".join(b"--" + BOUNDARY.encode() + b"\r\n" + head + b"\r\n" + p + b"\r\n"
                                       for p in parts) + b"--" + BOUNDARY.encode() + b"--\r\nepilogue")


# Contents that look like the delimiter without being it: the parser must not cut there.
tricky = st.lists(st.sampled_from([b"\r\n", b"--", b"-", b"b0und", b"\r\n--b0undar", b"DICM", b"\x00", b"x"]),
                  max_size=40).map(b"".join)


@settings(deadline=None, max_examples=150)
@given(parts=st.lists(tricky | st.binary(max_size=300), min_size=1, max_size=4),
       sizes=st.lists(st.integers(1, 40), min_size=1, max_size=5), headers=st.booleans())
def test_spooled_parts_equal_the_parts_sent_whatever_the_reads(parts, sizes, headers, tmp_path_factory):
    directory = tmp_path_factory.mktemp("spool")
    files = spool_multipart(Trickle(_body(parts, headers=headers), sizes), CONTENT_TYPE, directory)
    assert [f.read_bytes() for f in files] == parts


@pytest.mark.parametrize("body, why", [
    (b"--b0undary\r\nContent-Type: application/dicom\r\n\r\nDICM", "no closing delimiter (a body cut short)"),
    (b"no delimiter at all", "no opening delimiter"),
    (b"--b0undary\r\nContent-Type: application/json\r\n\r\n{}\r\n--b0undary--", "a part of another type"),
    (b"--b0undary--\r\n", "no part"),
    (b"--b0undary\r\nContent-Type: application/dicom", "headers without their blank line"),
])
def test_malformed_bodies_are_refused(body, why, tmp_path):
    with pytest.raises(InvalidQuery):
        spool_multipart(io.BytesIO(body), CONTENT_TYPE, tmp_path)


@pytest.mark.parametrize("content_type", ["application/dicom", "multipart/related; boundary=",
                                          'multipart/related; type="application/json"; boundary=x'])
def test_wrong_content_types_are_refused_before_reading(content_type, tmp_path):
    body = io.BytesIO(b"never read")
    with pytest.raises(InvalidQuery):
        spool_multipart(body, content_type, tmp_path)
    assert body.tell() == 0
