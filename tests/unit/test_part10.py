"""Our file meta header, encoded by hand on the acknowledgement's path, is pydicom's byte for byte."""

from __future__ import annotations

import io

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info

from archive_core.part10 import PREAMBLE, dataset_offset, file_header
from archive_core.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME


def _pydicom_header(sop_class_uid, sop_instance_uid, transfer_syntax_uid, source_ae) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax_uid
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if source_ae:
        meta.SourceApplicationEntityTitle = source_ae
    buf = io.BytesIO()
    buf.write(PREAMBLE)
    write_file_meta_info(buf, meta, enforce_standard=True)
    return buf.getvalue()


@pytest.mark.parametrize(
    "sop_class_uid, sop_instance_uid, transfer_syntax_uid, source_ae",
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1", "CT_SALLE1"),  # even and odd lengths
        ("1.2.840.10008.5.1.4.1.1.7", "1.2.3.45", "1.2.840.10008.1.2", "STORESCU"),
        ("1.2.840.10008.5.1.4.1.1.4", "2.25.1" + "1" * 58, "1.2.840.10008.1.2.4.50", None),  # 64-character UID
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.840.10008.1.2.2", "A"),
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.840.10008.1.2.1.99", ""),
    ],
)
def test_file_header_is_what_pydicom_writes(sop_class_uid, sop_instance_uid, transfer_syntax_uid, source_ae):
    ours = file_header(sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid,
                       transfer_syntax_uid=transfer_syntax_uid, source_ae=source_ae)
    assert ours == _pydicom_header(sop_class_uid, sop_instance_uid, transfer_syntax_uid, source_ae)
    assert dataset_offset(ours + b"\x08\x00") == len(ours)
