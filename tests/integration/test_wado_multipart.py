"""WADO-RS study answers as one file (backoffice/dicomweb/multipart.py) through a real ``flask web``
process: Content-Length, byte ranges, a file removed under a running answer, memory and open files.

The archive is filled by C-STORE (pynetdicom) as a modality would; the client is ``requests``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import requests
from pydicom.uid import generate_uid

from tests.helpers import archive_server, associate_ct_modality, free_port, make_ct, peak_rss, pid_started_with_port
from tests.servers import archive_env, web_process

ACCEPT = 'multipart/related; type="application/dicom"'
IMPLICIT = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2'
EXPLICIT = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
LARGE_ROWS = 1024  # 1024 x 1024 x 16 bits: 2 MiB of pixel data per object


def _store(port: int, datasets) -> None:
    assoc = associate_ct_modality(port)
    try:
        for ds in datasets:
            assert assoc.send_c_store(ds).Status == 0
    finally:
        assoc.release()


def _study(count: int, rows: int, series: int = 1) -> list:
    study, series_uids = generate_uid(), [generate_uid() for _ in range(series)]
    return [make_ct(study_uid=study, series_uid=series_uids[n % series], rows=rows, SeriesNumber=n % series + 1,
                    InstanceNumber=n // series + 1) for n in range(count)]


def _token(instance: Path) -> str:
    from archive_core.config import Settings
    from archive_core.db import make_engine, session_factory
    from backoffice.auth.services import create_token, create_user

    engine = make_engine(Settings(instance_path=instance).database_url)
    with session_factory(engine)() as s:
        create_user(s, "dr", role="radiologist", password="correct horse battery")
        token = create_token(s, "dr")
        s.commit()
    engine.dispose()
    return token






def _open_stored_files(pid: int, instance: Path) -> list[str]:
    """The stored DICOM files *pid* holds open (its /proc fd links into the instance folder)."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(instance)) and target.endswith(".dcm"):
            found.append(target)
    return found


def _no_stored_file_left_open(pid: int, instance: Path) -> list[str]:
    """Waits (5 s at most) for the web process to close the stored files of an answer it finished
    sending (its sending loop closes them after the last byte); the files still open."""
    deadline = time.monotonic() + 5
    while (held := _open_stored_files(pid, instance)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return held


def _raw_get(url: str, headers: dict[str, str], after_first_mib) -> tuple[bytes, dict[str, str], bytes]:
    """GET over a plain socket, read to the connection's end: (status line, headers, every body byte
    received, even when fewer than the Content-Length; an HTTP library drops its last partial read).
    *after_first_mib* is called once the first MiB of the body has arrived."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(url)
    request = f"GET {where.path} HTTP/1.1\r\nHost: {where.netloc}\r\nConnection: close\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection((where.hostname, where.port), timeout=60) as sock:
        sock.sendall(request.encode())
        received = bytearray()
        called = False
        while block := sock.recv(1 << 16):
            received += block
            head_end = received.find(b"\r\n\r\n")
            if not called and head_end >= 0 and len(received) - head_end - 4 >= 1 << 20:
                called = True
                after_first_mib()
    head, body = bytes(received).split(b"\r\n\r\n", 1)
    status, *lines = head.decode("latin-1").split("\r\n")
    return status.encode(), {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}, body


def _parts(body: bytes, content_type: str) -> list[tuple[bytes, bytes]]:
    """(headers, content) of each part of a multipart/related body, strictly delimited."""
    boundary = content_type.split("boundary=")[1].encode()
    assert body.endswith(b"--" + boundary + b"--\r\n")
    pieces = body[: -len(b"--" + boundary + b"--\r\n")].split(b"--" + boundary + b"\r\n")
    assert pieces[0] == b""
    parts = []
    for piece in pieces[1:]:
        head, content = piece.split(b"\r\n\r\n", 1)
        assert content.endswith(b"\r\n")
        parts.append((head, content[:-2]))
    return parts


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """An archive holding a small study (two series), a large one (40 objects of 2 MiB) and another
    large one whose files a test removes (16 of 2 MiB), stored by C-STORE; ``flask web`` on it."""
    from archive_core.tiers import read_instance

    tmp = tmp_path_factory.mktemp("wado-multipart")
    instance = tmp / "instance"
    instance.mkdir()
    studies = {"small": _study(7, 64, series=2), "large": _study(40, LARGE_ROWS),
               "doomed": _study(16, LARGE_ROWS)}
    stored: dict[str, bytes] = {}
    with archive_server(instance) as (archive, running):
        for datasets in studies.values():
            _store(running.port, datasets)
        assert archive.ingestor.wait_indexed()
        for ds in studies["small"]:
            stored[ds.SOPInstanceUID] = read_instance(archive, ds.SOPInstanceUID)
    token = _token(instance)
    port = free_port()
    env = {**os.environ, **archive_env(instance), "TCP_NODELAY": "1"}
    log = tmp / "web.log"
    with web_process(env, log, port=port) as base:
        yield {"url": f"{base}/dicom-web", "auth": {"Authorization": f"Bearer {token}"}, "studies": studies,
               "stored": stored, "pid": pid_started_with_port(port), "instance": instance, "log": log}


def _get(web, study: str, *, accept: str = ACCEPT, **headers) -> requests.Response:
    return requests.get(f"{web['url']}/studies/{study}", headers={**web["auth"], "Accept": accept, **headers},
                        timeout=120)


def test_a_study_answer_has_its_exact_length_and_the_stored_bytes(web):
    """The whole study in one answer with a Content-Length equal to its body (no chunked encoding),
    each part the stored file byte for byte in series/instance order with its transfer syntax; the
    same answer twice is the same bytes (a download can resume); HEAD announces the same length.
    Bad case tried: the generator answer (chunked, no length, a new boundary each time)."""
    small = web["studies"]["small"]
    whole = _get(web, small[0].StudyInstanceUID)
    assert whole.status_code == 200
    assert "Transfer-Encoding" not in whole.headers
    assert int(whole.headers["Content-Length"]) == len(whole.content)
    assert whole.headers["Accept-Ranges"] == "bytes" and whole.headers["ETag"]
    parts = _parts(whole.content, whole.headers["Content-Type"])
    ordered = sorted(small, key=lambda ds: (ds.SeriesNumber, ds.InstanceNumber))
    assert [content for _, content in parts] == [web["stored"][ds.SOPInstanceUID] for ds in ordered]
    assert all(head == b"Content-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1" for head, _ in parts)
    again = _get(web, small[0].StudyInstanceUID)
    assert again.content == whole.content and again.headers["ETag"] == whole.headers["ETag"]
    head = requests.head(f"{web['url']}/studies/{small[0].StudyInstanceUID}",
                         headers={**web["auth"], "Accept": ACCEPT}, timeout=30)
    assert head.status_code == 200 and head.headers["Content-Length"] == whole.headers["Content-Length"]
    assert head.content == b""
    series = requests.get(f"{web['url']}/studies/{small[0].StudyInstanceUID}/series/{small[1].SeriesInstanceUID}",
                          headers={**web["auth"], "Accept": ACCEPT}, timeout=30)
    assert [c for _, c in _parts(series.content, series.headers["Content-Type"])] == [
        web["stored"][ds.SOPInstanceUID] for ds in ordered if ds.SeriesInstanceUID == small[1].SeriesInstanceUID]
    assert int(series.headers["Content-Length"]) == len(series.content)


def test_a_range_of_a_study_answer_is_those_bytes_of_the_whole(web):
    """``Range: bytes=a-b`` across part boundaries gives 206 with exactly bytes a..b of the full
    answer and ``Content-Range``; a suffix range gives its end; ``If-Range`` with the answer's ETag
    resumes, with another ETag gives the whole answer; ``If-None-Match`` with it is 304. Bad input: a range past the end and a reversed
    range are 416 with ``Content-Range: bytes */<length>``; a Range in another unit is ignored."""
    study = web["studies"]["small"][0].StudyInstanceUID
    whole = _get(web, study).content
    length = len(whole)
    start, end = 100, length // 2 + 33  # from the first part's header into a middle part's data
    part = _get(web, study, Range=f"bytes={start}-{end}")
    assert part.status_code == 206, part.text
    assert part.content == whole[start:end + 1]
    assert part.headers["Content-Range"] == f"bytes {start}-{end}/{length}"
    assert int(part.headers["Content-Length"]) == end - start + 1
    tail = _get(web, study, Range="bytes=-5000")
    assert tail.status_code == 206 and tail.content == whole[-5000:]
    etag = _get(web, study).headers["ETag"]
    resumed = _get(web, study, Range=f"bytes={end + 1}-", **{"If-Range": etag})
    assert resumed.status_code == 206 and part.content + resumed.content == whole[start:]
    changed = _get(web, study, Range=f"bytes={end + 1}-", **{"If-Range": '"another-answer"'})
    assert changed.status_code == 200 and changed.content == whole
    cached = _get(web, study, **{"If-None-Match": etag})  # a client's cache holds this answer
    assert cached.status_code == 304 and cached.content == b""
    for bad in (f"bytes={length + 10}-", "bytes=500-100"):
        refused = _get(web, study, Range=bad)
        assert refused.status_code == 416, bad
        assert refused.headers["Content-Range"] == f"bytes */{length}"
    assert _get(web, study, Range="lines=1-2").content == whole
    # The stored syntax asked by name is the stored answer: ranges too.
    named = _get(web, study, accept=EXPLICIT, Range="bytes=0-99")
    assert named.status_code == 206 and named.content == whole[:100]


def test_a_range_with_a_conversion_gets_the_whole_converted_answer(web):
    """A conversion (implicit VR asked of explicit VR objects) is built as it is sent: its length is
    not known up front, so a Range is ignored and the whole answer comes, 200, chunked, each part
    converted (the UIDs kept), with no Accept-Ranges."""
    from io import BytesIO

    from pydicom import dcmread

    small = web["studies"]["small"]
    answer = _get(web, small[0].StudyInstanceUID, accept=IMPLICIT, Range="bytes=0-99")
    assert answer.status_code == 200 and "Accept-Ranges" not in answer.headers
    assert answer.headers.get("Transfer-Encoding") == "chunked"
    parts = _parts(answer.content, answer.headers["Content-Type"])
    assert len(parts) == len(small)
    converted = [dcmread(BytesIO(content)) for _, content in parts]
    assert all(ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2" for ds in converted)
    assert sorted(ds.SOPInstanceUID for ds in converted) == sorted(ds.SOPInstanceUID for ds in small)


def test_a_large_study_costs_no_memory_and_one_open_file(web):
    """40 objects of 2 MiB (80 MiB) retrieved as one answer: the web process's peak resident memory
    grows by less than 8 MiB, it holds at most one stored file open while it sends, none after, and
    every byte arrives. Bad case tried: an answer built in memory, or every file opened up front."""
    large = web["studies"]["large"]
    pid = web["pid"]
    _get(web, web["studies"]["small"][0].StudyInstanceUID)  # warm-up: imports, pools, buffers
    before = peak_rss(pid)
    with requests.get(f"{web['url']}/studies/{large[0].StudyInstanceUID}",
                      headers={**web["auth"], "Accept": ACCEPT}, stream=True, timeout=120) as answer:
        assert answer.status_code == 200
        length = int(answer.headers["Content-Length"])
        chunks = answer.iter_content(1 << 20)
        received = sum(len(next(chunks)) for _ in range(8))
        time.sleep(0.3)  # the server has filled the socket and waits for the client
        held = _open_stored_files(pid, web["instance"])
        assert len(held) <= 1, held
        received += sum(len(c) for c in chunks)
    after = peak_rss(pid)
    assert received == length and length > 40 * LARGE_ROWS * LARGE_ROWS * 2
    assert after - before < 8 * 1024 * 1024, f"peak grew by {(after - before) / 2**20:.1f} MiB"
    assert _no_stored_file_left_open(pid, web["instance"]) == []


def test_a_file_removed_under_a_running_answer_cuts_it_short(web):
    """The last object's file is removed behind the archive's back while its study is being sent:
    the answer stops where that part's content should begin and the connection is closed, so the
    client sees a failed transfer (fewer bytes than the Content-Length), never a shorter 200 body
    taken as whole; every part before it is complete. The web process logs the SOP Instance UID and
    answers the next request (that study is now 404: the missing file is found before answering)."""
    doomed = web["studies"]["doomed"]
    last = doomed[-1]
    study = last.StudyInstanceUID
    [path] = web["instance"].rglob(f"*{last.SOPInstanceUID}*.dcm")
    status, headers, body = _raw_get(f"{web['url']}/studies/{study}", {**web["auth"], "Accept": ACCEPT},
                                     after_first_mib=path.unlink)
    assert status == b"HTTP/1.1 200 OK" and "transfer-encoding" not in headers
    assert len(body) < int(headers["content-length"])
    boundary = headers["content-type"].split("boundary=")[1].encode()
    pieces = body.split(b"--" + boundary + b"\r\n")
    assert len(pieces) == len(doomed) + 1  # the cut is in the last part
    assert all(p.endswith(b"\r\n") and len(p) > LARGE_ROWS * LARGE_ROWS * 2 for p in pieces[1:-1])
    assert pieces[-1].endswith(b"\r\n\r\n") and pieces[-1].count(b"\r\n") == 2  # its headers only
    log = web["log"].read_text()
    assert f"the stored file of {last.SOPInstanceUID} could not be opened" in log
    again = _get(web, study)
    assert again.status_code == 404 and last.SOPInstanceUID in again.json()["error"]["message"]
    assert _no_stored_file_left_open(web["pid"], web["instance"]) == []


def test_an_object_store_answer_is_streamed_without_ranges(tmp_path, s3_storage):
    """With the objects in an S3 bucket (moto) the answer is streamed by a generator (chunked, no
    Content-Length): each part is still the stored object byte for byte, and a Range is ignored (the
    whole answer, 200), as the conformance statement says."""
    from archive_core.tiers import read_instance

    instance = tmp_path / "instance"
    instance.mkdir()
    datasets = _study(3, 64)
    with archive_server(instance, **s3_storage) as (archive, running):
        _store(running.port, datasets)
        assert archive.ingestor.wait_indexed()
        stored = [read_instance(archive, ds.SOPInstanceUID) for ds in datasets]
    token = _token(instance)
    env = {**os.environ, **archive_env(instance), **{f"ARCHIVAGE_{k}": str(v) for k, v in s3_storage.items()}}
    with web_process(env, tmp_path / "web.log") as base:
        answer = requests.get(f"{base}/dicom-web/studies/{datasets[0].StudyInstanceUID}",
                              headers={"Authorization": f"Bearer {token}", "Accept": ACCEPT, "Range": "bytes=0-99"},
                              timeout=60)
    assert answer.status_code == 200 and answer.headers.get("Transfer-Encoding") == "chunked"
    assert [c for _, c in _parts(answer.content, answer.headers["Content-Type"])] == stored
