"""CD/USB media (IHE PDI, DICOM PS3.11 General Purpose CD-R profile STD-GEN-CD): a DICOMDIR file set,
README.TXT and an HTML index.

What goes on the medium is the stored object. STD-GEN-CD allows one transfer syntax, Explicit VR Little
Endian: an object stored in it is copied byte for byte; any other object (implicit VR, the retired
big-endian syntax, compressed) is re-encoded in it with its content and every UID unchanged (after
decompression the Photometric Interpretation is the decoder's; a lossy one keeps, or gains, Lossy Image
Compression "01"). An object no codec here can decode is copied as stored and named with its own
transfer syntax in the DICOMDIR. The DICOMDIR is written here (PS3.10 section 7, PS3.3 annex F) with
only the keys of each record type: the objects are never touched to please it.
"""

from __future__ import annotations

import html
import io
import shutil
import struct
import unicodedata
import warnings
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydicom import dcmread, dcmwrite
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    UID,
)

from archive_core.errors import NotFound
from archive_core.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from archive_core.values import NOT_CONFIGURED, da_to_iso, person_name

PREVIEW_SIZE = 256
MEDIA_TRANSFER_SYNTAX = ExplicitVRLittleEndian  # the one syntax of STD-GEN-CD (PS3.11 D.3.3)
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
LOSSY_SYNTAXES = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit})  # decoding them gives lossy pixels


class MediaSource(Protocol):
    """What the media writer needs from the archive (the facade provides it)."""

    def study_detail(self, study_uid: str) -> Any: ...

    def study_instances(self, study_uid: str) -> list[Any]: ...

    def read_instance(self, sop_instance_uid: str) -> bytes: ...

    def render_instance(self, sop_instance_uid: str, params: Any) -> bytes: ...


@dataclass
class MediaReport:
    """What went on the medium."""

    root: Path
    instances: int = 0
    converted: int = 0  # re-encoded in Explicit VR Little Endian (implicit VR, big endian or compressed on arrival)
    kept_compressed: int = 0  # compressed objects no codec here decodes: written as stored
    study_uids: list[str] = field(default_factory=list)
    # Directory record keys the objects left empty, filled in the DICOMDIR only: (SOP Instance UID, keyword).
    filled_keys: list[tuple[str, str]] = field(default_factory=list)


def _ascii(text: str) -> str:
    """README.TXT is plain ASCII (readable on any computer): accents dropped, not mangled."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def _fr_date(iso: str | None) -> str:
    if not iso:
        return "-"
    return f"{iso[8:10]}/{iso[5:7]}/{iso[0:4]}"


# -- the objects ------------------------------------------------------------------------------------

_SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _swap_to_little(ds: Dataset) -> None:
    """Byte-swap the other-word values of a dataset read from big endian (pydicom decodes numbers, not OW/OF/...)."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _swap_to_little(item)
        elif elem.VR in _SWAP_WIDTH and elem.value:
            width = _SWAP_WIDTH[elem.VR]
            raw = bytes(elem.value)
            usable = len(raw) - len(raw) % width
            elem.value = np.frombuffer(raw[:usable], f">u{width}").astype(f"<u{width}").tobytes() + raw[usable:]


def _media_file(stored: bytes, ts: UID, report: MediaReport) -> tuple[bytes, UID]:
    """The bytes to write on the medium for one stored object (in syntax *ts*), and their transfer syntax."""
    if ts == MEDIA_TRANSFER_SYNTAX and stored[128:132] == b"DICM":
        return stored, ts
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(io.BytesIO(stored), force=True)
        if ts.is_compressed:
            try:
                # The UID is kept: it is the same object, decoded (PS3.4 transfer syntax conversion).
                ds.decompress(generate_instance_uid=False)
            except Exception:  # noqa: BLE001 - no codec here for it: the object goes as stored
                report.kept_compressed += 1
                return stored, ts
            if ts in LOSSY_SYNTAXES and ds.get("LossyImageCompression") != "01":
                ds.LossyImageCompression = "01"  # PS3.3 C.7.6.1.1.5: once lossy, always marked lossy
        elif ts == ExplicitVRBigEndian:
            _swap_to_little(ds)
    ds.file_meta.TransferSyntaxUID = MEDIA_TRANSFER_SYNTAX
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcmwrite(buf, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
    report.converted += 1
    return buf.getvalue(), MEDIA_TRANSFER_SYNTAX


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


def _record_type(sop_class_uid: str) -> str:
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


class _Records:
    """Builds one record from an object's header, copying its keys and filling empty type 1 keys.

    A type 1 key the object leaves empty gets a value in the record only (PS3.3 F.5 requires one;
    the object is never changed): Study Date and Time as DCMTK's ``dcmgpdir`` and Orthanc choose
    them (the object's series, acquisition or content date and time, else the time the medium is
    written); Study ID the accession number or ``1``; Patient ID the archive's; Modality ``OT``;
    Series and Instance Number their rank on the medium.
    """

    def __init__(self, report: MediaReport, now: datetime) -> None:
        self.report = report
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
        self.report.filled_keys.append((str(ds.get("SOPInstanceUID", "")), keyword))

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
class _Node:
    record_type: str
    record: Dataset
    children: list["_Node"] = field(default_factory=list)
    file_id: list[str] | None = None
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    transfer_syntax_uid: str = ""
    file_dir: list[str] = field(default_factory=list)  # a series' folder on the medium
    next_offset: int = 0
    lower_offset: int = 0


def _full_record(node: _Node, next_offset: int, lower_offset: int) -> Dataset:
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


def dicomdir_bytes(roots: list[_Node], file_set_id: str) -> bytes:
    """The DICOMDIR file of the record tree *roots* (PS3.10 section 8, PS3.3 F.3), Explicit VR Little Endian.

    Records are items of the Directory Record Sequence in depth-first order; each offset is the
    position of a record's item tag from the first byte of the file. Encoded lengths do not depend
    on the offsets (UL values), so one pass measures and a second writes.
    """
    order: list[_Node] = []

    def walk(nodes: list[_Node]) -> None:
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

    def links(nodes: list[_Node]) -> None:
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


# -- the medium ---------------------------------------------------------------------------------------


def build_media(
    source: MediaSource, study_uids: list[str], dest: Path, *, practice: dict[str, str], now: datetime | None = None
) -> MediaReport:
    """Write *study_uids* (the first is the main study; the others chosen priors) into the empty folder *dest*.

    *now* (UTC, default the clock) is the date written on README.TXT and in records that need a date
    their object lacks.
    """
    now = now or datetime.now(timezone.utc)
    from archive_core.render import RenderError, RenderParams

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    report = MediaReport(root=dest)
    details = [source.study_detail(uid) for uid in study_uids]
    if not details:
        raise NotFound("no study to write")
    records = _Records(report, now)
    patients: dict[str, _Node] = {}
    previews: list[tuple[str, str, str]] = []  # (file name, study label, series label)
    for detail in details:
        study_uid = detail.study.study_uid
        report.study_uids.append(study_uid)
        study_node: _Node | None = None
        series_nodes: dict[str, _Node] = {}
        for n, ref in enumerate(source.study_instances(study_uid), start=1):
            stored = source.read_instance(ref.sop_instance_uid)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                header = dcmread(io.BytesIO(stored), stop_before_pixels=True, force=True)
            meta = getattr(header, "file_meta", None)
            data, ts = _media_file(stored, UID(str(meta.get("TransferSyntaxUID", "")) if meta else ""), report)
            if study_node is None:
                patient_key = str(header.get("PatientID", "") or detail.study.patient_id or "")
                if patient_key not in patients:
                    patients[patient_key] = _Node("PATIENT", records.patient(header, detail.study.patient_id))
                patient_node = patients[patient_key]
                study_node = _Node("STUDY", records.study(header, detail.study.accession_number))
                patient_node.children.append(study_node)
                study_dir = [f"PT{list(patients).index(patient_key):06d}", f"ST{len(patient_node.children) - 1:06d}"]
            series_uid = str(header.SeriesInstanceUID)
            if series_uid not in series_nodes:
                series_nodes[series_uid] = _Node("SERIES", records.series(header, len(series_nodes) + 1))
                series_nodes[series_uid].file_dir = [*study_dir, f"SE{len(series_nodes) - 1:06d}"]
                study_node.children.append(series_nodes[series_uid])
            series_node = series_nodes[series_uid]
            file_id = [*series_node.file_dir, f"IM{len(series_node.children):06d}"]
            record_type = _record_type(str(header.SOPClassUID))
            series_node.children.append(_Node(
                record_type, records.leaf(header, record_type, n), file_id=file_id,
                sop_class_uid=str(header.SOPClassUID), sop_instance_uid=str(header.SOPInstanceUID),
                transfer_syntax_uid=str(ts),
            ))
            target = dest.joinpath(*file_id)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            report.instances += 1
        for series in detail.series:
            if not (series.first_is_image and series.first_sop_uid):
                continue
            name = f"IMG{len(previews) + 1:05d}.JPG"
            try:
                data = source.render_instance(series.first_sop_uid, RenderParams(size=PREVIEW_SIZE, fmt="jpeg"))
            except RenderError:
                continue
            (dest / "IHE_PDI").mkdir(exist_ok=True)
            (dest / "IHE_PDI" / name).write_bytes(data)
            previews.append(
                (
                    name,
                    f"{_fr_date(detail.study.iso_date)} {detail.study.description or ''}",
                    f"{series.modality or ''} {series.description or ''} ({series.num_instances} images)",
                )
            )
    (dest / "DICOMDIR").write_bytes(dicomdir_bytes(list(patients.values()), "ARCHIVAGE"))
    (dest / "README.TXT").write_bytes(readme_text(details, practice, now=now).encode("ascii"))
    (dest / "INDEX.HTM").write_text(index_html(details, practice, previews), encoding="utf-8")
    return report


def readme_text(details, practice: dict[str, str], *, now: datetime | None = None) -> str:
    patient = details[0].study
    lines = [
        "ARCHIVAGE - SUPPORT D'IMAGES MEDICALES (IHE PDI)",
        "",
        f"Cabinet : {practice.get('PRACTICE_NAME') or NOT_CONFIGURED}",
        f"Adresse : {practice.get('PRACTICE_ADDRESS') or NOT_CONFIGURED}",
        f"Telephone : {practice.get('PRACTICE_PHONE') or NOT_CONFIGURED}",
        "",
        f"Patient : {(person_name(patient.patient_name, as_stored=True) or '-')}",
        f"Identifiant : {patient.patient_id}",
        f"Date de naissance : {_fr_date(da_to_iso(patient.patient_birth_date))}",
        "",
        "Examens :",
    ]
    for d in details:
        s = d.study
        lines.append(
            f"  - {_fr_date(s.iso_date)}  {'/'.join(s.modalities) or '-'}  {s.description or '-'}"
            f"  ({s.num_series} series, {s.num_instances} objets)  UID {s.study_uid}"
        )
    lines += [
        "",
        "Ce support contient uniquement des fichiers DICOM (repertoire DICOMDIR, profil",
        "general STD-GEN-CD). Il ne contient pas de logiciel de visualisation : ouvrez le",
        "fichier DICOMDIR avec une visionneuse DICOM. INDEX.HTM donne un apercu des series.",
        "This medium contains DICOM files only (DICOMDIR, general purpose CD profile); no viewer.",
        "",
        f"Grave le {now or datetime.now(timezone.utc):%d/%m/%Y} (UTC).",
    ]
    return _ascii("\r\n".join(lines) + "\r\n")


def index_html(details, practice: dict[str, str], previews: list[tuple[str, str, str]]) -> str:
    esc = html.escape
    patient = details[0].study
    items = "\n".join(
        f'<figure><img src="IHE_PDI/{esc(name)}" alt="aperçu">'
        f"<figcaption>{esc(study)}<br>{esc(series)}</figcaption></figure>"
        for name, study, series in previews
    )
    return f"""<!doctype html>
<html lang="fr"><head><meta charset="utf-8"><title>Images médicales</title>
<style>body{{font-family:sans-serif}} figure{{display:inline-block;margin:.5em;text-align:center}}</style></head>
<body><h1>{esc(practice.get('PRACTICE_NAME') or NOT_CONFIGURED)}</h1>
<p>Patient : {esc((person_name(patient.patient_name, as_stored=True) or '-'))} — {esc(patient.patient_id)}</p>
<p>Ce support contient des fichiers DICOM (DICOMDIR). Aperçus (non diagnostiques) :</p>
{items}
</body></html>
"""


def zip_folder(root: Path) -> bytes:
    """The folder as a zip (what the browser downloads to copy on a USB key or burn)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for path in sorted(Path(root).rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(root).as_posix())
    return buf.getvalue()


def build_media_zip(
    source: MediaSource, study_uids: list[str], workdir: Path, *, practice: dict[str, str]
) -> bytes:
    """Build the file set in *workdir* (removed afterwards) and return it zipped."""
    try:
        build_media(source, study_uids, workdir / "media", practice=practice)
        return zip_folder(workdir / "media")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


__all__ = [
    "MediaReport", "MediaSource", "dicomdir_bytes", "build_media", "build_media_zip", "zip_folder", "readme_text",
]
