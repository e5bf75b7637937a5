"""STOW-RS of large objects through a real ``flask web`` process: the body is never held whole."""

from __future__ import annotations

import os
from pathlib import Path

import requests
from pydicom.uid import generate_uid

from tests.helpers import free_port, make_ct, peak_rss, pid_started_with_port
from tests.servers import archive_env, web_process

ROWS = 4096  # 4096 x 4096 x 16 bits: 32 MiB of pixel data per object
BOUNDARY = "stow-memory-b0undary"






def _body(files: list[Path], path: Path) -> Path:
    """A multipart/related body of *files*, written to *path* part by part."""
    with open(path, "wb") as out:
        for file in files:
            out.write(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            with open(file, "rb") as f:
                while block := f.read(1 << 20):
                    out.write(block)
            out.write(b"\r\n")
        out.write(f"--{BOUNDARY}--\r\n".encode())
    return path


def test_a_96_mib_stow_costs_the_web_process_less_than_24_mib(tmp_path):
    """Three 32 MiB CT objects in one STOW-RS request (96 MiB) to ``flask web``: its peak resident
    memory may not grow by more than 24 MiB (the body was read whole and each part parsed from a
    copy: several hundred MiB), every object is stored and comes back byte for byte (WADO-URI).
    Bad case tried: the previous reading of the body with ``request.get_data``."""
    from archive_core.config import Settings
    from archive_core.db import make_engine, session_factory
    from backoffice.auth.services import create_token, create_user
    from tests.helpers import migrate

    instance = tmp_path / "instance"
    instance.mkdir()
    database_url = Settings(instance_path=instance).database_url
    migrate(database_url)
    engine = make_engine(database_url)
    with session_factory(engine)() as s:
        create_user(s, "dr", role="radiologist", password="correct horse battery")
        token = create_token(s, "dr")
        s.commit()
    engine.dispose()
    study, series = generate_uid(), generate_uid()
    small = tmp_path / "small.dcm"
    make_ct(study_uid=generate_uid()).save_as(small, enforce_file_format=True)
    large = []
    for n in range(3):
        path = tmp_path / f"large{n}.dcm"
        make_ct(study_uid=study, series_uid=series, rows=ROWS, InstanceNumber=n + 1).save_as(
            path, enforce_file_format=True)
        large.append(path)
    body = _body(large, tmp_path / "body")
    port = free_port()
    env = {**os.environ, **archive_env(instance), "ARCHIVAGE_DICOMWEB_MAX_STOW_BYTES": str(200 * 1024 * 1024)}
    headers = {"Authorization": f"Bearer {token}",
               "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'}
    with web_process(env, tmp_path / "web.log", port=port) as base:
        pid = pid_started_with_port(port)
        with open(_body([small], tmp_path / "warm-up"), "rb") as f:  # imports, the indexer, the pools
            assert requests.post(f"{base}/dicom-web/studies", data=f, headers=headers).status_code == 200
        before = peak_rss(pid)
        with open(body, "rb") as f:
            stored = requests.post(f"{base}/dicom-web/studies", data=f, headers=headers, timeout=600)
        after = peak_rss(pid)
        assert stored.status_code == 200, stored.text
        assert len(stored.json()["00081199"]["Value"]) == 3
        assert after - before < 24 * 1024 * 1024, f"peak grew by {(after - before) / 2**20:.0f} MiB"
        from pydicom import dcmread

        from archive_core.part10 import dataset_offset

        for path in large:  # the archive writes its own file meta; the dataset is kept byte for byte
            sent = path.read_bytes()
            sop = dcmread(path, stop_before_pixels=True).SOPInstanceUID
            got = requests.get(f"{base}/wado", params={"requestType": "WADO", "studyUID": study, "seriesUID": series,
                                                       "objectUID": sop, "contentType": "application/dicom"},
                               headers={"Authorization": f"Bearer {token}"})
            assert got.status_code == 200
            assert got.content[dataset_offset(got.content):] == sent[dataset_offset(sent):]
