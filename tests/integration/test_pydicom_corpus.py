"""Every file of pydicom's test corpus goes in over DICOM and comes back from storage byte for byte.

An archive stores what it is sent: odd VRs, non-standard dates, ISO 2022 character sets, big
endian, deflate and every compression. Only objects whose identifying UIDs are missing or
invalid are refused (0xA900), or cannot even be put in a C-STORE request.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pydicom.data
import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dsutils import split_dataset
from sqlalchemy import select

from archive_core.index.models import Instance

# The corpus is deliberately odd: pydicom warns about what it reads, and that is the point.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

CORPUS = sorted((Path(f) for f in pydicom.data.get_testdata_files() if Path(f).is_file()), key=str)
CORPUS_ROOT = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent
IDENTIFYING = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
# The test's own idea of a usable UID, independent of archive_core.uids: digits and dots, <= 64.
UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def _uid(value) -> str | None:
    text = str(value if value is not None else "").strip().rstrip("\x00").strip()
    return text if 0 < len(text) <= 64 and UID.fullmatch(text) else None


def _read(path: Path):
    try:
        return dcmread(path, force=True)
    except Exception:
        return None


def _get(ds, keyword):
    try:
        return ds.get(keyword) if ds is not None else None
    except Exception:
        return None


def _storage_classes() -> set[str]:
    from pynetdicom.sop_class import _STORAGE_CLASSES

    return set(_STORAGE_CLASSES.values())


class Plan:
    """How one corpus file is sent and what the archive must answer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        data = path.read_bytes()
        ds = self.ds = _read(path)
        try:
            meta, offset = split_dataset(path) if data[128:132] == b"DICM" else (FileMetaDataset(), 0)
        except Exception:
            meta, offset = FileMetaDataset(), 0
        self.dataset_bytes = data[offset:]
        uids = {kw: _uid(_get(ds, kw)) for kw in IDENTIFYING}
        self.sop_class = uids["SOPClassUID"] or _uid(meta.get("MediaStorageSOPClassUID"))
        self.sop_instance = uids["SOPInstanceUID"] or _uid(meta.get("MediaStorageSOPInstanceUID"))
        self.transfer_syntax = str(meta.get("TransferSyntaxUID", "")).strip("\x00 ") or self._guess(ds)
        consistent_meta = (
            offset > 0
            and meta.get("TransferSyntaxUID")
            and _uid(meta.get("MediaStorageSOPClassUID")) == self.sop_class
            and _uid(meta.get("MediaStorageSOPInstanceUID")) == self.sop_instance
        )
        # A file whose meta is missing or disagrees with its dataset is sent the way a modality
        # would send it: the dataset's own UIDs in the request, the dataset bytes unchanged.
        self.send_as_is = bool(consistent_meta)
        if all(uids.values()):
            self.expect = "stored"
        elif self.sop_class in _storage_classes() and self.sop_instance:
            self.expect = "refused"
        else:
            self.expect = "unsendable"

    @staticmethod
    def _guess(ds) -> str:
        if ds is None or ds.is_implicit_VR in (True, None):
            return ImplicitVRLittleEndian
        return ExplicitVRLittleEndian if ds.is_little_endian in (True, None) else ExplicitVRBigEndian

    def file_to_send(self, tmp_dir: Path) -> Path:
        if self.send_as_is:
            return self.path
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = self.sop_class
        meta.MediaStorageSOPInstanceUID = self.sop_instance
        meta.TransferSyntaxUID = self.transfer_syntax
        meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
        buf = io.BytesIO()
        buf.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(buf, meta, enforce_standard=True)
        out = tmp_dir / (self.path.name + ".rewrapped.dcm")
        out.write_bytes(buf.getvalue() + self.dataset_bytes)
        return out


@pytest.fixture(scope="module")
def corpus_scp(tmp_path_factory):
    """One server for the module; 'overwrite' because the corpus reuses UIDs across variants of a file."""
    from archive_core.archive import Archive
    from archive_core.config import Settings
    from archive_core.net.server import start_server
    from tests.helpers import migrate

    settings = Settings(
        instance_path=tmp_path_factory.mktemp("corpus"), STORAGE_MIN_FREE_BYTES=0, DICOM_DUPLICATE_POLICY="overwrite",
        DICOM_STORE_FROM_UNKNOWN_AES=True,  # the corpus is sent by an unregistered AE
    )
    migrate(settings.database_url)
    archive = Archive.open(settings)
    running = start_server(archive, host="127.0.0.1", port=0)
    yield archive, running
    running.stop()
    archive.close()


def _dataset_after_meta(stored: bytes) -> bytes:
    assert stored[128:132] == b"DICM"
    pos = 132
    # Group 0002 is explicit VR little endian; its group length tells where the dataset starts.
    assert stored[pos:pos + 4] == b"\x02\x00\x00\x00"
    group_length = int.from_bytes(stored[pos + 8:pos + 12], "little")
    return stored[pos + 12 + group_length:]


@pytest.mark.parametrize("path", CORPUS, ids=[str(p.relative_to(CORPUS_ROOT)) for p in CORPUS])
def test_corpus_file_round_trips_or_is_refused(path, corpus_scp, chunked_send, tmp_path):
    archive, running = corpus_scp
    plan = Plan(path)
    ae = AE(ae_title="CORPUS")
    ae.add_requested_context("1.2.840.10008.1.1")  # Verification: the association stands even if storage is refused
    if plan.sop_class:
        ae.add_requested_context(plan.sop_class, plan.transfer_syntax)
    assoc = ae.associate("127.0.0.1", running.port, ae_title="ARCHIVAGE")
    assert assoc.is_established
    try:
        if plan.expect == "unsendable":
            # No SOP Class/Instance UID to put in the request (pynetdicom refuses: AttributeError),
            # or no storage context for its SOP class (a DICOMDIR; no accepted context: ValueError).
            with pytest.raises((AttributeError, ValueError)):
                assoc.send_c_store(plan.file_to_send(tmp_path) if plan.sop_class and plan.sop_instance else plan.ds)
            return
        status = assoc.send_c_store(plan.file_to_send(tmp_path))
    finally:
        assoc.release()
    assert archive.store.incoming() == []  # nothing half-written, nothing left unindexed
    if plan.expect == "refused":
        assert status.Status == 0xA900, status
        return
    assert status.Status == 0x0000, status
    with archive.sessions() as s:
        row = s.execute(
            select(Instance.storage_key, Instance.transfer_syntax_uid).where(
                Instance.sop_instance_uid == plan.sop_instance
            )
        ).one()
    assert row.transfer_syntax_uid == plan.transfer_syntax
    stored = archive.store.read_bytes(row.storage_key)
    assert _dataset_after_meta(stored) == plan.dataset_bytes
    meta = dcmread(io.BytesIO(stored), stop_before_pixels=True).file_meta
    assert meta.TransferSyntaxUID == plan.transfer_syntax
    assert meta.MediaStorageSOPInstanceUID == plan.sop_instance
