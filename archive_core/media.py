"""CD/USB media (IHE PDI, DICOM PS3.11 General Purpose CD-R profile STD-GEN-CD): a DICOMDIR file set,
README.TXT and an HTML index.

What goes on the medium is the stored object. STD-GEN-CD allows one transfer syntax, Explicit VR Little
Endian: an object stored in it is copied byte for byte; any other object (implicit VR, the retired
big-endian syntax, compressed) is re-encoded in it with its content and every UID unchanged (after
decompression the Photometric Interpretation is the decoder's; a lossy one keeps, or gains, Lossy Image
Compression "01"). An object no codec here can decode is copied as stored and named with its own
transfer syntax in the DICOMDIR. The DICOMDIR (records and file) is :mod:`archive_core.dicomdir`:
only the keys of each record type, the objects never touched to please it.
"""

from __future__ import annotations

import html
import io
import shutil
import unicodedata
import warnings
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    UID,
)

from archive_core.dicomdir import Node, Records, dicomdir_bytes, record_type_of
from archive_core.errors import NotFound
from archive_core.values import NOT_CONFIGURED, da_to_iso, person_name

PREVIEW_SIZE = 256
MEDIA_TRANSFER_SYNTAX = ExplicitVRLittleEndian  # the one syntax of STD-GEN-CD (PS3.11 D.3.3)
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
    records = Records(report.filled_keys, now)
    patients: dict[str, Node] = {}
    previews: list[tuple[str, str, str]] = []  # (file name, study label, series label)
    for detail in details:
        study_uid = detail.study.study_uid
        report.study_uids.append(study_uid)
        study_node: Node | None = None
        series_nodes: dict[str, Node] = {}
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
                    patients[patient_key] = Node("PATIENT", records.patient(header, detail.study.patient_id))
                patient_node = patients[patient_key]
                study_node = Node("STUDY", records.study(header, detail.study.accession_number))
                patient_node.children.append(study_node)
                study_dir = [f"PT{list(patients).index(patient_key):06d}", f"ST{len(patient_node.children) - 1:06d}"]
            series_uid = str(header.SeriesInstanceUID)
            if series_uid not in series_nodes:
                series_nodes[series_uid] = Node("SERIES", records.series(header, len(series_nodes) + 1))
                series_nodes[series_uid].file_dir = [*study_dir, f"SE{len(series_nodes) - 1:06d}"]
                study_node.children.append(series_nodes[series_uid])
            series_node = series_nodes[series_uid]
            file_id = [*series_node.file_dir, f"IM{len(series_node.children):06d}"]
            record_type = record_type_of(str(header.SOPClassUID))
            series_node.children.append(Node(
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
    "MediaReport", "MediaSource", "build_media", "build_media_zip", "zip_folder", "readme_text",
]
