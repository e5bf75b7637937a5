"""CD/USB media (IHE PDI) hold the stored objects: same UIDs, same content, only the transfer syntax STD-GEN-CD needs.

Bad input tried: a study mixing a big-endian object (made media crash), an SR with a whole report tree
(copied into its directory record), JPEG lossy/lossless and RLE objects (decompression gave new UIDs), and
an object without Study Date (19000101 was written into the image file).
"""

from __future__ import annotations

import io
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pydicom.fileset
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGLosslessSV1, generate_uid

from tests.helpers import STORAGE_BACKENDS, make_ct, require_tool, tool_env
from tests.radiology_support import store

# CD/USB media written from a local folder and from an S3-compatible server.
pytestmark = STORAGE_BACKENDS

PATIENT = "PAT-MEDIA"
SR_RECORD_KEYS = {
    "SpecificCharacterSet", "InstanceNumber", "CompletionFlag", "VerificationFlag", "ContentDate", "ContentTime",
    "VerificationDateTime", "ConceptNameCodeSequence", "ContentSequence",
}
# What decompression may change besides the pixel data (PS3.5 8.2: the decoded form of the same image).
DECODED_FORM = {"PixelData", "PhotometricInterpretation", "PlanarConfiguration", "LossyImageCompression"}


def _adopt(ds, study_uid, *, number, study_date="20240301"):
    """A sample file moved into our study and patient, with a fresh series and instance UID."""
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID, ds.PatientName = PATIENT, "Media^Test"
    ds.StudyDate, ds.StudyTime, ds.StudyID = study_date, "101500", "S1"
    ds.SeriesNumber, ds.InstanceNumber = number, 1
    return ds


def _jpeg_lossless(tmp_path) -> pydicom.Dataset:
    """MR_small compressed by DCMTK into JPEG Lossless SV1 (no such sample ships with pydicom)."""
    dcmcjpeg = require_tool("dcmcjpeg")
    out = tmp_path / "jpegll.dcm"
    subprocess.run([dcmcjpeg, "+e1", get_testdata_file("MR_small.dcm"), str(out)], check=True, env=tool_env(),
                   capture_output=True, timeout=60)
    ds = pydicom.dcmread(out)
    assert ds.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    return ds


@pytest.fixture
def mixed(facade, tmp_path):
    """One study of every troublesome kind, and a second one whose object has no Study Date."""
    study = generate_uid()
    objects = [
        _adopt(make_ct(rows=8), study, number=1),  # explicit VR little endian: copied byte for byte
        _adopt(pydicom.dcmread(get_testdata_file("MR_small_bigendian.dcm")), study, number=2),
        _adopt(pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm")), study, number=3),
        _adopt(pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")), study, number=4),
        _adopt(_jpeg_lossless(tmp_path), study, number=5),
        _adopt(pydicom.dcmread(get_testdata_file("test-SR.dcm")), study, number=6),
    ]
    assert objects[1].file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    assert objects[3].file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    undated_study = generate_uid()
    undated = _adopt(make_ct(rows=8), undated_study, number=1)
    del undated.StudyDate
    undated.SeriesDate = "20240302"
    store(facade.archive, [*objects, undated])
    return study, undated_study, [o.SOPInstanceUID for o in objects], undated.SOPInstanceUID


def _write_media(facade, study_uids, dest, **kwargs):
    """The file set written as a page or a command does: in the caller's session."""
    with facade.new_session() as s:
        return facade.write_media(s, study_uids, dest, **kwargs)


def check_medium(root: Path, facade, expected_uids: set[str]) -> dict[str, pydicom.Dataset]:
    """Every object on the medium is a stored one (same UIDs, same content); the DICOMDIR reads back."""
    dicomdir = pydicom.dcmread(root / "DICOMDIR")
    leaves = {r.ReferencedSOPInstanceUIDInFile: r for r in dicomdir.DirectoryRecordSequence if "ReferencedFileID" in r}
    assert set(leaves) == expected_uids
    for uid, record in leaves.items():
        path = root.joinpath(*record.ReferencedFileID)
        stored_bytes = facade.read_instance(uid)
        stored = pydicom.dcmread(io.BytesIO(stored_bytes))
        copy = pydicom.dcmread(path)
        assert copy.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian == record.ReferencedTransferSyntaxUIDInFile
        assert copy.SOPInstanceUID == copy.file_meta.MediaStorageSOPInstanceUID == uid
        assert copy.StudyInstanceUID == stored.StudyInstanceUID and copy.SeriesInstanceUID == stored.SeriesInstanceUID
        ts = stored.file_meta.TransferSyntaxUID
        if ts == ExplicitVRLittleEndian:
            assert path.read_bytes() == stored_bytes
            continue
        ignored = DECODED_FORM if ts.is_compressed else {"PixelData"}
        assert {e.keyword for e in copy} - ignored == {e.keyword for e in stored} - ignored
        for elem in stored:
            if elem.keyword not in ignored:
                assert copy[elem.tag].value == elem.value, (uid, elem.keyword)
        if "PixelData" in stored:
            assert np.array_equal(copy.pixel_array, stored.pixel_array), uid
        if ts == JPEGBaseline8Bit:
            assert copy.LossyImageCompression == "01"
            for kw in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
                assert copy.get(kw) == stored.get(kw)
    # pydicom's FileSet reads the DICOMDIR back and finds every file.
    fs = pydicom.fileset.FileSet(root / "DICOMDIR")
    try:
        assert {i.SOPInstanceUID for i in fs} == expected_uids
        assert all(Path(i.path).exists() for i in fs)
    finally:
        fs._stage["t"].cleanup()  # test only: FileSet keeps a staging folder it never removes itself
    # DCMTK parses it without complaint.
    dcmdump = require_tool("dcmdump")
    out = subprocess.run([dcmdump, str(root / "DICOMDIR")], capture_output=True, text=True, errors="replace",
                         env=tool_env(), timeout=60)
    assert out.returncode == 0 and "W:" not in out.stderr and "E:" not in out.stderr, out.stderr
    return {r.DirectoryRecordType + ":" + str(r.get("ReferencedSOPInstanceUIDInFile", r.get("StudyInstanceUID", ""))): r
            for r in dicomdir.DirectoryRecordSequence}


def test_media_holds_the_stored_objects_with_their_uids(facade, mixed, tmp_path):
    study, undated_study, uids, undated_uid = mixed
    report = _write_media(facade, [study], tmp_path / "cd", practice={})
    assert (report.instances, report.converted, report.kept_compressed) == (6, 4, 0)  # big endian, RLE, JPEG lossy, JPEG lossless
    records = check_medium(tmp_path / "cd", facade, set(uids))
    sr = records[f"SR DOCUMENT:{uids[5]}"]
    assert {e.keyword for e in sr if e.tag.group != 0x0004} <= SR_RECORD_KEYS  # its keys, not the report tree
    assert all(i.RelationshipType == "HAS CONCEPT MOD" for i in sr.get("ContentSequence", []))
    assert sr.CompletionFlag and sr.VerificationFlag and sr.ConceptNameCodeSequence


def test_media_fills_missing_record_keys_in_the_dicomdir_only(facade, mixed, tmp_path):
    """The object has no Study Date: the STUDY record takes its Series Date; the file stays as stored."""
    _study, undated_study, _uids, undated_uid = mixed
    report = _write_media(facade, [undated_study], tmp_path / "cd", practice={})
    records = check_medium(tmp_path / "cd", facade, {undated_uid})
    assert records[f"STUDY:{undated_study}"].StudyDate == "20240302"
    assert (undated_uid, "StudyDate") in report.filled_keys
    image = records[f"IMAGE:{undated_uid}"]
    copy = pydicom.dcmread(tmp_path / "cd" / Path(*image.ReferencedFileID))
    assert "StudyDate" not in copy and b"19000101" not in (tmp_path / "cd" / Path(*image.ReferencedFileID)).read_bytes()


def test_media_files_pass_dcmtk_general_purpose_profile(facade, mixed, tmp_path):
    """DCMTK's dcmmkdir (STD-GEN-CD checks: transfer syntax, file IDs, record keys) accepts every file."""
    study, _undated, uids, _u = mixed
    _write_media(facade, [study], tmp_path / "cd", practice={})
    dcmmkdir = require_tool("dcmmkdir")
    files = [str(p.relative_to(tmp_path / "cd")) for p in sorted((tmp_path / "cd").glob("PT*/ST*/SE*/IM*"))]
    out = subprocess.run([dcmmkdir, "-Pgp", "--output-file", str(tmp_path / "DCMTKDIR"), "+id", str(tmp_path / "cd"),
                          *files], capture_output=True, text=True, errors="replace", env=tool_env(), timeout=120)
    assert out.returncode == 0 and "E:" not in out.stderr, out.stdout + out.stderr
    assert len(files) == len(uids)
    made = pydicom.dcmread(tmp_path / "DCMTKDIR")
    assert {r.ReferencedSOPInstanceUIDInFile for r in made.DirectoryRecordSequence if "ReferencedFileID" in r} == set(uids)


def test_media_zip_from_the_api(client, app, facade, mixed, tmp_path):
    from backoffice.auth.services import create_token, create_user

    study, _undated, uids, _u = mixed
    with facade.new_session(write=True) as s:
        create_user(s, "desk", role="front_desk", password="correct horse battery")
        token = create_token(s, "desk")
        s.commit()
    response = client.get(f"/api/v1/studies/{study}/media.zip", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.data[:300]
    with zipfile.ZipFile(io.BytesIO(response.data)) as zf:
        zf.extractall(tmp_path / "cd")
    check_medium(tmp_path / "cd", facade, set(uids))


def test_media_command_from_the_cli(runner, facade, mixed, tmp_path):
    study, _undated, uids, _u = mixed
    result = runner.invoke(args=["radiology", "media", str(tmp_path / "usb"), study])
    assert result.exit_code == 0, result.output
    assert "6 objects written" in result.output and "4 re-encoded" in result.output
    check_medium(tmp_path / "usb", facade, set(uids))


def test_a_record_date_no_object_gives_is_the_date_the_medium_is_written(facade, tmp_path):
    """Bad input: an object with no Study, Series, Acquisition or Content Date (the clock is set here)."""
    from datetime import datetime, timezone

    from archive_core.media import build_media

    ds = make_ct(rows=8)
    for kw in ("StudyDate", "StudyTime", "SeriesDate", "ContentDate", "AcquisitionDate"):
        if kw in ds:
            delattr(ds, kw)
    store(facade.archive, [ds])
    written = datetime(2031, 2, 28, 9, 30, tzinfo=timezone.utc)
    with facade.new_session() as s:
        report = build_media(facade.media_source(s), [ds.StudyInstanceUID], tmp_path / "cd", practice={}, now=written)
    study = next(r for r in pydicom.dcmread(tmp_path / "cd" / "DICOMDIR").DirectoryRecordSequence
                 if r.DirectoryRecordType == "STUDY")
    assert (study.StudyDate, study.StudyTime) == ("20310228", "093000")
    assert {kw for _uid, kw in report.filled_keys} >= {"StudyDate", "StudyTime"}
    assert "28/02/2031" in (tmp_path / "cd" / "README.TXT").read_text("ascii")
    check_medium(tmp_path / "cd", facade, {ds.SOPInstanceUID})
