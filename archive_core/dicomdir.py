"""The DICOMDIR of a medium (DICOM PS3.10 section 8, PS3.3 annex F): directory records and the file.

Each record holds only the keys of its record type (PS3.3 F.5), copied from the object's header; a
type 1 key the object leaves empty is filled in the record only, never in the object. The file is
written in Explicit VR Little Endian with every offset computed in two passes. The medium itself
(the objects, README.TXT, INDEX.HTM, the zip) is :mod:`archive_core.media`.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from archive_core.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


# -- directory records (PS3.3 F.5: the keys of each record type, nothing else) ---------------------

SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
ENCAPSULATED_PREFIX = "1.2.840.10008.5.1.4.1.1.104."
PRESENTATION_PREFIX = "1.2.840.10008.5.1.4.1.1.11."
WAVEFORM_PREFIX = "1.2.840.10008.5.1.4.1.1.9."

# record type -> its keys; "1" keys must have a value (filled in the record when the object has none)
_LEAF_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "IMAGE": (("InstanceNumber", "1"),),
    "SR DOCUMENT": (
        ("InstanceNumber", "1"), ("CompletionFlag", "1"), ("VerificationFlag", "1"), ("ContentDate", "1"),
        ("ContentTime", "1"), ("VerificationDateTime", "1C"), ("ConceptNameCodeSequence", "1"),
    ),
    "KEY OBJECT DOC": (
        ("InstanceNumber", "1"), ("ContentDate", "1"), ("ContentTime", "1"), ("ConceptNameCodeSequence", "1"),
    ),
    "ENCAP DOC": (
        ("ContentDate", "2"), ("ContentTime", "2"), ("InstanceNumber", "1"), ("DocumentTitle", "2"),
        ("HL7InstanceIdentifier", "1C"), ("ConceptNameCodeSequence", "2"), ("MIMETypeOfEncapsulatedDocument", "1"),
    ),
    "PRESENTATION": (
        ("PresentationCreationDate", "1"), ("PresentationCreationTime", "1"), ("InstanceNumber", "1"),
        ("ContentLabel", "1"), ("ContentDescription", "2"), ("ContentCreatorName", "2"),
        ("ReferencedSeriesSequence", "1C"),
    ),
    "WAVEFORM": (("InstanceNumber", "1"), ("ContentDate", "1"), ("ContentTime", "1")),
}


def record_type_of(sop_class_uid: str) -> str:
    if sop_class_uid == KEY_OBJECT_SELECTION:
        return "KEY OBJECT DOC"
    if sop_class_uid.startswith(SR_PREFIX):
        return "SR DOCUMENT"
    if sop_class_uid.startswith(ENCAPSULATED_PREFIX):
        return "ENCAP DOC"
    if sop_class_uid.startswith(PRESENTATION_PREFIX):
        return "PRESENTATION"
    if sop_class_uid.startswith(WAVEFORM_PREFIX):
        return "WAVEFORM"
    return "IMAGE"


def _has_value(ds: Dataset, keyword: str) -> bool:
    return keyword in ds and ds[keyword].VM > 0 and ds[keyword].value not in ("", None)


def _first_value(ds: Dataset, keywords: tuple[str, ...]) -> str | None:
    for kw in keywords:
        if _has_value(ds, kw):
            return str(ds[kw].value)
    return None


class Records:
    """Builds one record from an object's header, copying its keys and filling empty type 1 keys.

    A type 1 key the object leaves empty gets a value in the record only (PS3.3 F.5 requires one;
    the object is never changed): Study Date and Time as DCMTK's ``dcmgpdir`` and Orthanc choose
    them (the object's series, acquisition or content date and time, else the time the medium is
    written); Study ID the accession number or ``1``; Patient ID the archive's; Modality ``OT``;
    Series and Instance Number their rank on the medium.
    """

    def __init__(self, filled_keys: list[tuple[str, str]], now: datetime) -> None:
        self.filled_keys = filled_keys  # (SOP Instance UID, keyword) of each key filled in a record
        self.now = now

    def _copy(self, record: Dataset, ds: Dataset, keyword: str, type_: str) -> bool:
        """Copy a key into the record; False when a type 1 key has no value in the object (to be filled)."""
        if _has_value(ds, keyword):
            elem = ds[keyword]
            record.add(DataElement(elem.tag, elem.VR, elem.value))
            return True
        if type_ == "2":  # present, empty
            record.add_new(keyword, _vr(keyword), None)
        return type_ != "1"

    def _fill(self, record: Dataset, ds: Dataset, keyword: str, value: Any) -> None:
        setattr(record, keyword, value)
        self.filled_keys.append((str(ds.get("SOPInstanceUID", "")), keyword))

    @staticmethod
    def _charset(record: Dataset, ds: Dataset) -> None:
        if _has_value(ds, "SpecificCharacterSet"):
            record.SpecificCharacterSet = ds.SpecificCharacterSet

    def patient(self, ds: Dataset, archive_patient_id: str | None) -> Dataset:
        record = Dataset()
        self._charset(record, ds)
        self._copy(record, ds, "PatientName", "2")
        if not self._copy(record, ds, "PatientID", "1"):
            self._fill(record, ds, "PatientID", archive_patient_id or "INCONNU")
        return record

    def study(self, ds: Dataset, accession: str | None) -> Dataset:
        record = Dataset()
        self._charset(record, ds)
        if not self._copy(record, ds, "StudyDate", "1"):
            self._fill(record, ds, "StudyDate", _first_value(
                ds, ("SeriesDate", "AcquisitionDate", "ContentDate")) or f"{self.now:%Y%m%d}")
        if not self._copy(record, ds, "StudyTime", "1"):
            self._fill(record, ds, "StudyTime", _first_value(
                ds, ("SeriesTime", "AcquisitionTime", "ContentTime")) or f"{self.now:%H%M%S}")
        self._copy(record, ds, "StudyDescription", "2")
        record.StudyInstanceUID = ds.StudyInstanceUID
        if not self._copy(record, ds, "StudyID", "1"):
            self._fill(record, ds, "StudyID", (accession or "1")[:16])
        self._copy(record, ds, "AccessionNumber", "2")
        return record

    def series(self, ds: Dataset, rank: int) -> Dataset:
        record = Dataset()
        self._charset(record, ds)
        if not self._copy(record, ds, "Modality", "1"):
            self._fill(record, ds, "Modality", "OT")
        record.SeriesInstanceUID = ds.SeriesInstanceUID
        if not self._copy(record, ds, "SeriesNumber", "1"):
            self._fill(record, ds, "SeriesNumber", rank)
        return record

    def leaf(self, ds: Dataset, record_type: str, rank: int) -> Dataset:
        record = Dataset()
        self._charset(record, ds)
        for keyword, type_ in _LEAF_KEYS[record_type]:
            if self._copy(record, ds, keyword, type_):
                continue
            if keyword == "InstanceNumber":
                self._fill(record, ds, keyword, rank)
            elif keyword.endswith("Date"):
                self._fill(record, ds, keyword, _first_value(ds, ("ContentDate", "StudyDate")) or f"{self.now:%Y%m%d}")
            elif keyword.endswith("Time"):
                self._fill(record, ds, keyword, _first_value(ds, ("ContentTime", "StudyTime")) or f"{self.now:%H%M%S}")
            elif keyword in ("CompletionFlag", "VerificationFlag"):
                self._fill(record, ds, keyword, "PARTIAL" if keyword == "CompletionFlag" else "UNVERIFIED")
            elif keyword == "ConceptNameCodeSequence":
                self._fill(record, ds, keyword, Sequence())
            else:
                self._fill(record, ds, keyword, "")
        if record_type == "SR DOCUMENT" and "ContentSequence" in ds:
            # Type 3 in the record: only the items that modify the document title (HAS CONCEPT MOD),
            # never the report's content tree.
            modifiers = [item for item in ds.ContentSequence if item.get("RelationshipType") == "HAS CONCEPT MOD"]
            if modifiers:
                record.ContentSequence = Sequence(modifiers)
        return record


def _vr(keyword: str) -> str:
    from pydicom.datadict import dictionary_VR

    return dictionary_VR(keyword)


@dataclass
class Node:
    record_type: str
    record: Dataset
    children: list["Node"] = field(default_factory=list)
    file_id: list[str] | None = None
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    transfer_syntax_uid: str = ""
    file_dir: list[str] = field(default_factory=list)  # a series' folder on the medium
    next_offset: int = 0
    lower_offset: int = 0


def _full_record(node: Node, next_offset: int, lower_offset: int) -> Dataset:
    rec = Dataset()
    rec.OffsetOfTheNextDirectoryRecord = next_offset
    rec.RecordInUseFlag = 0xFFFF
    rec.OffsetOfReferencedLowerLevelDirectoryEntity = lower_offset
    rec.DirectoryRecordType = node.record_type
    if node.file_id is not None:
        rec.ReferencedFileID = node.file_id
        rec.ReferencedSOPClassUIDInFile = node.sop_class_uid
        rec.ReferencedSOPInstanceUIDInFile = node.sop_instance_uid
        rec.ReferencedTransferSyntaxUIDInFile = node.transfer_syntax_uid
    for elem in node.record:
        rec.add(elem)
    return rec


def _encode(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_dataset(fp, ds)
    return fp.getvalue()


def dicomdir_bytes(roots: list[Node], file_set_id: str) -> bytes:
    """The DICOMDIR file of the record tree *roots* (PS3.10 section 8, PS3.3 F.3), Explicit VR Little Endian.

    Records are items of the Directory Record Sequence in depth-first order; each offset is the
    position of a record's item tag from the first byte of the file. Encoded lengths do not depend
    on the offsets (UL values), so one pass measures and a second writes.
    """
    order: list[Node] = []

    def walk(nodes: list[Node]) -> None:
        for node in nodes:
            order.append(node)
            walk(node.children)

    walk(roots)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MEDIA_STORAGE_DIRECTORY
    meta.MediaStorageSOPInstanceUID = _new_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    head = DicomBytesIO()
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)

    def top(first: int, last: int) -> bytes:
        ds = Dataset()
        ds.FileSetID = file_set_id
        ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = first
        ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = last
        ds.FileSetConsistencyFlag = 0
        return _encode(ds)

    seq_header = struct.pack("<HH2sHI", 0x0004, 0x1220, b"SQ", 0, 0xFFFFFFFF)
    position = len(head.getvalue()) + len(top(0, 0)) + len(seq_header)
    offsets: dict[int, int] = {}
    sizes: dict[int, int] = {}
    for node in order:
        offsets[id(node)] = position
        sizes[id(node)] = len(_encode(_full_record(node, 0, 0)))
        position += 8 + sizes[id(node)]

    def links(nodes: list[Node]) -> None:
        for i, node in enumerate(nodes):
            node.next_offset = offsets[id(nodes[i + 1])] if i + 1 < len(nodes) else 0
            node.lower_offset = offsets[id(node.children[0])] if node.children else 0
            links(node.children)

    links(roots)
    out = io.BytesIO()
    out.write(head.getvalue())
    out.write(top(offsets[id(roots[0])] if roots else 0, offsets[id(roots[-1])] if roots else 0))
    out.write(seq_header)
    for node in order:
        body = _encode(_full_record(node, node.next_offset, node.lower_offset))
        if len(body) != sizes[id(node)]:  # offsets would point into the wrong record
            raise RuntimeError("a directory record changed length between the two passes")
        out.write(struct.pack("<HHI", 0xFFFE, 0xE000, len(body)))
        out.write(body)
    out.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    return out.getvalue()


def _new_uid() -> str:
    from pydicom.uid import generate_uid

    return generate_uid()


__all__ = ["Node", "Records", "dicomdir_bytes", "record_type_of"]
