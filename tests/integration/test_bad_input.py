"""Bad input over the network is answered with a failure status, and the server keeps serving."""

from __future__ import annotations

import io

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import select

from archive_core.index.models import Instance
from tests.helpers import associate_ct_modality, make_ct

PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"


def _encoded(ds) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


def _part10(path, ds, dataset_bytes: bytes):
    """A file whose dataset bytes are exactly *dataset_bytes*: pynetdicom sends them as they are."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    buf = io.BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    path.write_bytes(buf.getvalue() + dataset_bytes)
    return path


def _still_serving(port: int) -> None:
    """Another association stores an object and is answered."""
    assoc = associate_ct_modality(port, "OTHER")
    try:
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(make_ct()).Status == 0x0000
    finally:
        assoc.release()


def _uids(archive) -> set[str]:
    with archive.sessions() as s:
        return set(s.scalars(select(Instance.sop_instance_uid)))


@pytest.mark.parametrize(
    "where, expected",
    [
        ("inside the Pixel Data element header", 0xC000),  # cannot be parsed: refused
        ("inside the SOP Instance UID", 0xA900),  # what remains does not identify the object
    ],
)
def test_truncated_dataset_is_refused(scp, archive, chunked_send, tmp_path, where, expected):
    ds = make_ct()
    raw = _encoded(ds)
    if where == "inside the Pixel Data element header":
        cut = raw.index(PIXEL_DATA_TAG) + 6
    else:
        cut = raw.index(ds.SOPInstanceUID.encode()) + 10
    path = _part10(tmp_path / "cut.dcm", ds, raw[:cut])
    assoc = associate_ct_modality(scp.port)
    status = assoc.send_c_store(path)
    assert assoc.send_c_echo().Status == 0x0000  # the same association goes on
    assoc.release()
    assert status.Status == expected
    assert _uids(archive) == set()
    assert archive.store.incoming() == [] and list(archive.store.keys()) == []
    _still_serving(scp.port)


def test_dataset_cut_inside_its_last_value_is_stored_as_received(scp, archive, chunked_send, tmp_path):
    """Like pydicom's MR_truncated.dcm: a short last value still identifies the object; it is kept as sent."""
    ds = make_ct()
    raw = _encoded(ds)
    cut = raw.index(PIXEL_DATA_TAG) + 12 + 100
    assoc = associate_ct_modality(scp.port)
    status = assoc.send_c_store(_part10(tmp_path / "short.dcm", ds, raw[:cut]))
    assoc.release()
    assert status.Status == 0x0000
    with archive.sessions() as s:
        key = s.scalar(select(Instance.storage_key).where(Instance.sop_instance_uid == ds.SOPInstanceUID))
    assert archive.store.read_bytes(key).endswith(raw[:cut])


def test_request_and_dataset_naming_different_instances_is_refused(scp, archive, chunked_send, tmp_path):
    ds = make_ct()
    other = make_ct()
    path = _part10(tmp_path / "mismatch.dcm", other, _encoded(ds))  # request: other's UID; dataset: ds's
    assoc = associate_ct_modality(scp.port)
    status = assoc.send_c_store(path)
    assoc.release()
    assert status.Status == 0xA900
    assert "differs" in status.ErrorComment
    assert _uids(archive) == set()
    _still_serving(scp.port)


# The test writes deliberately invalid UIDs, which pydicom warns about.
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize(
    "sop_uid",
    ["1.2.3/../../../etc/passwd", "..", "1.2.3.4/", "1.2.3.4\x00/x"],
    ids=["slashes", "dot-dot", "trailing slash", "nul"],
)
def test_sop_instance_uid_with_path_characters_is_refused(scp, archive, tmp_path, sop_uid):
    ds = make_ct(sop_uid=sop_uid)
    assoc = associate_ct_modality(scp.port)
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0xA900
    assert _uids(archive) == set()
    assert [p for d in ("objects", "incoming") for p in (archive.store.root / d).rglob("*") if p.is_file()] == []
    assert not (tmp_path / "etc").exists()
    _still_serving(scp.port)


@pytest.mark.parametrize(
    "keyword, comment",
    [
        # The request names the SOP class and instance; a dataset without them is refused (it broke
        # the study's CD/USB export when it was filed under the request's UID).
        ("SOPClassUID", "dataset has no SOP Class UID"),
        ("SOPInstanceUID", "dataset has no SOP Instance UID"),
        ("StudyInstanceUID", "Study Instance UID is missing"),
        ("SeriesInstanceUID", "Series Instance UID is missing"),
    ],
)
def test_missing_identifying_uid_is_refused(scp, archive, chunked_send, tmp_path, keyword, comment):
    ds = make_ct()
    raw_ds = make_ct(sop_uid=ds.SOPInstanceUID, study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID)
    delattr(raw_ds, keyword)
    path = _part10(tmp_path / "missing.dcm", ds, _encoded(raw_ds))  # the request still names both UIDs
    assoc = associate_ct_modality(scp.port)
    status = assoc.send_c_store(path)
    assoc.release()
    assert (status.Status, status.ErrorComment) == (0xA900, comment)
    assert _uids(archive) == set()
    assert archive.store.incoming() == [] and list(archive.store.keys()) == []
    _still_serving(scp.port)


def test_unknown_calling_ae_may_echo_and_store_but_not_query(scp, archive):
    from archive_core.net.handlers import may_query
    from archive_core.peers import add_peer

    with archive.sessions() as s:
        add_peer(s, "STATION1", "127.0.0.1", 104)
        s.commit()
    verdicts = {}
    for title in ("STRANGER", "STATION1"):
        assoc = associate_ct_modality(scp.port, title)
        try:
            assert assoc.send_c_echo().Status == 0x0000
            assert assoc.send_c_store(make_ct()).Status == 0x0000
            (served,) = [a for a in scp.ae.active_associations if a.requestor.ae_title == title]
            verdicts[title] = may_query(scp.context, served)
        finally:
            assoc.release()
    assert verdicts == {"STRANGER": False, "STATION1": True}
