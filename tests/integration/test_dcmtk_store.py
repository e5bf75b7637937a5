"""DCMTK's echoscu and storescu against the real ``flask --app wsgi archive serve`` process."""

from __future__ import annotations

import sqlite3
import subprocess

import pytest
from pydicom.uid import generate_uid

from tests.helpers import STORAGE_BACKENDS, make_ct, require_tool, tool_env

pytestmark = pytest.mark.dcmtk


def _dcmtk(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool(tool), *args], env=tool_env(), capture_output=True, text=True, timeout=120)


def _indexed(instance_path, sop_uids) -> dict[str, tuple[str, str]]:
    with sqlite3.connect(instance_path / "archivage.sqlite3") as db:
        rows = db.execute(
            "SELECT i.sop_instance_uid, s.series_uid, st.study_uid FROM instance i"
            " JOIN series s ON i.series_pk = s.id JOIN study st ON s.study_pk = st.id"
        ).fetchall()
    return {sop: (series, study) for sop, series, study in rows if sop in sop_uids}


def test_echoscu_gets_success(archive_process):
    done = _dcmtk("echoscu", "-aec", "ARCHIVAGE", "127.0.0.1", str(archive_process.port))
    assert done.returncode == 0, done.stderr


@STORAGE_BACKENDS
def test_storescu_files_are_indexed_and_fsck_is_clean(archive_process, tmp_path):
    study = generate_uid()
    series = generate_uid()
    files = []
    for n in range(5):
        ds = make_ct(study_uid=study, series_uid=series, InstanceNumber=n + 1)
        path = tmp_path / f"ct{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append((path, ds.SOPInstanceUID))
    done = _dcmtk("storescu", "-aec", "ARCHIVAGE", "127.0.0.1", str(archive_process.port), *(str(p) for p, _ in files))
    assert done.returncode == 0, done.stdout + done.stderr
    # storescu has released its association: everything it stored is indexed.
    indexed = _indexed(archive_process.instance_path, {uid for _, uid in files})
    assert indexed == {uid: (series, study) for _, uid in files}
    fsck = archive_process.cli("archive", "fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert "checked 5 instances, 0 problems" in fsck.stdout


# The test writes a deliberately invalid UID, which pydicom warns about.
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_storescu_of_a_bad_uid_gets_a_failure_status(archive_process, tmp_path):
    bad = make_ct(StudyInstanceUID="1.2.abc/../x")
    bad_path = tmp_path / "bad.dcm"
    bad.save_as(bad_path, enforce_file_format=True)
    good = make_ct()
    good_path = tmp_path / "good.dcm"
    good.save_as(good_path, enforce_file_format=True)
    port = str(archive_process.port)
    # DCMTK names 0xA900 "DataSetDoesNotMatchSOPClass"; it prints statuses in verbose mode only.
    refused = "Received Store Response (Error: DataSetDoesNotMatchSOPClass)"
    halted = _dcmtk("storescu", "-v", "-aec", "ARCHIVAGE", "127.0.0.1", port, str(bad_path))
    assert refused in halted.stdout + halted.stderr, halted.stdout + halted.stderr
    assert halted.returncode != 0  # storescu halts on an unsuccessful store by default
    # With --no-halt the same association goes on, and the server keeps serving it.
    went_on = _dcmtk("storescu", "-v", "--no-halt", "-aec", "ARCHIVAGE", "127.0.0.1", port, str(bad_path), str(good_path))
    output = went_on.stdout + went_on.stderr
    assert output.count(refused) == 1 and "Received Store Response (Success)" in output, output
    assert set(_indexed(archive_process.instance_path, {bad.SOPInstanceUID, good.SOPInstanceUID})) == {
        good.SOPInstanceUID
    }


@pytest.mark.parametrize("pdu", ["4096", "131072"])
def test_a_dataset_in_many_pdus_is_stored_byte_for_byte_with_its_checksum(archive_process, tmp_path, pdu):
    """storescu cutting a 512 KiB image into P-DATA-TF PDUs of 4 KiB (one fragment each: 128 PDUs)
    or 128 KiB: what the archive stores is the sent dataset byte for byte, and the checksum it
    indexes is that dataset's SHA-256 (both computed as the fragments arrive, read in as few system
    calls as the socket allows). Bad cases tried: a fragment written twice or dropped, a checksum of
    the header, of a partial dataset, or of the first fragment only."""
    import hashlib

    from archive_core.part10 import dataset_offset

    ds = make_ct(rows=512)
    ds.Columns = 512
    ds.PixelData = bytes(range(256)) * 2048  # 512 KiB, every byte position distinct modulo 256
    path = tmp_path / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    sent = path.read_bytes()
    sent = sent[dataset_offset(sent):]
    done = _dcmtk("storescu", "--max-send-pdu", pdu, "-aec", "ARCHIVAGE", "127.0.0.1", str(archive_process.port),
                  str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    with sqlite3.connect(archive_process.instance_path / "archivage.sqlite3") as db:
        key, checksum = db.execute("SELECT storage_key, checksum_sha256 FROM instance WHERE sop_instance_uid = ?",
                                   (ds.SOPInstanceUID,)).fetchone()
    stored = (archive_process.instance_path / "storage" / "objects" / key).read_bytes()
    assert stored[dataset_offset(stored):] == sent
    assert checksum == hashlib.sha256(sent).hexdigest()
