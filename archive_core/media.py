"""CD/USB media (IHE PDI, general-purpose CD profile): a DICOMDIR file set, README.TXT and an HTML index."""

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
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.fileset import FileSet
from pydicom.uid import ExplicitVRLittleEndian

from archive_core.errors import NotFound

if TYPE_CHECKING:  # the facade imports this module lazily
    from archive_core.api import ArchiveFacade

UNSET = "à configurer"
PREVIEW_SIZE = 256


@dataclass
class MediaReport:
    """What went on the medium."""

    root: Path
    instances: int = 0
    converted: int = 0  # re-encoded to Explicit VR Little Endian (implicit VR or compressed on arrival)
    kept_compressed: int = 0  # compressed objects we could not decode: written as received
    study_uids: list[str] = field(default_factory=list)


def _ascii(text: str) -> str:
    """README.TXT is plain ASCII (readable on any computer): accents dropped, not mangled."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def _person(name: str | None) -> str:
    parts = (name or "").split("^")
    return " ".join(p for p in [parts[0].upper() if parts else "", *parts[1:3]] if p).strip() or "-"


def _fr_date(iso: str | None) -> str:
    if not iso:
        return "-"
    return f"{iso[8:10]}/{iso[5:7]}/{iso[0:4]}"


def _fill_for_dicomdir(ds: Dataset, *, study_fallback_id: str, instance_fallback: int) -> None:
    """Give the DICOMDIR records the type 1 values they need when the object leaves them empty."""
    if not ds.get("PatientID"):
        ds.PatientID = "INCONNU"
    if "PatientName" not in ds:
        ds.PatientName = ""
    if not ds.get("StudyID"):
        ds.StudyID = study_fallback_id
    if not ds.get("StudyDate"):
        ds.StudyDate = "19000101"
    if not ds.get("StudyTime"):
        ds.StudyTime = "000000"
    if not ds.get("Modality"):
        ds.Modality = "OT"
    if ds.get("SeriesNumber") in (None, ""):
        ds.SeriesNumber = 1
    if ds.get("InstanceNumber") in (None, ""):
        ds.InstanceNumber = instance_fallback
    if "AccessionNumber" not in ds:
        ds.AccessionNumber = ""
    if "StudyDescription" not in ds:
        ds.StudyDescription = ""


def _to_explicit_little(ds: Dataset, report: MediaReport) -> None:
    """STD-GEN-CD allows Explicit VR Little Endian only."""
    ts = ds.file_meta.TransferSyntaxUID
    if ts == ExplicitVRLittleEndian:
        return
    if ts.is_compressed:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds.decompress()  # sets Explicit VR Little Endian
            report.converted += 1
        except Exception:  # noqa: BLE001 - an undecodable codec: keep the object as it came
            report.kept_compressed += 1
        return
    # Implicit VR or big endian: the dataset is already decoded, only the encoding changes.
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report.converted += 1


def build_media(
    facade: "ArchiveFacade", study_uids: list[str], dest: Path, *, practice: dict[str, str]
) -> MediaReport:
    """Write *study_uids* (the first is the main study; the others chosen priors) into the empty folder *dest*."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    report = MediaReport(root=dest)
    details = [facade.study_detail(uid) for uid in study_uids]
    if not details:
        raise NotFound("no study to write")
    fs = FileSet()
    fs.ID = "ARCHIVAGE"
    try:
        return _fill_file_set(facade, fs, details, dest, report, practice)
    finally:
        # FileSet stages added objects in a TemporaryDirectory it never removes itself.
        fs._stage["t"].cleanup()


def _fill_file_set(
    facade, fs: FileSet, details, dest: Path, report: MediaReport, practice: dict[str, str]
) -> MediaReport:
    from archive_core.render import RenderError, RenderParams

    previews: list[tuple[str, str, str]] = []  # (file name, study label, series label)
    for detail in details:
        report.study_uids.append(detail.study.study_uid)
        fallback_id = (detail.study.accession_number or "1")[:16]
        for n, ref in enumerate(facade.study_instances(detail.study.study_uid), start=1):
            ds = facade.read_dataset(ref.sop_instance_uid)
            _fill_for_dicomdir(ds, study_fallback_id=fallback_id, instance_fallback=n)
            _to_explicit_little(ds, report)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fs.add(ds)
            report.instances += 1
        for series in detail.series:
            if not (series.first_is_image and series.first_sop_uid):
                continue
            name = f"IMG{len(previews) + 1:05d}.JPG"
            try:
                data = facade.render_instance(series.first_sop_uid, RenderParams(size=PREVIEW_SIZE, fmt="jpeg"))
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fs.write(dest)
    (dest / "README.TXT").write_bytes(readme_text(details, practice).encode("ascii"))
    (dest / "INDEX.HTM").write_text(index_html(details, practice, previews), encoding="utf-8")
    return report


def readme_text(details, practice: dict[str, str]) -> str:
    patient = details[0].study
    lines = [
        "ARCHIVAGE - SUPPORT D'IMAGES MEDICALES (IHE PDI)",
        "",
        f"Cabinet : {practice.get('PRACTICE_NAME') or UNSET}",
        f"Adresse : {practice.get('PRACTICE_ADDRESS') or UNSET}",
        f"Telephone : {practice.get('PRACTICE_PHONE') or UNSET}",
        "",
        f"Patient : {_person(patient.patient_name)}",
        f"Identifiant : {patient.patient_id}",
        f"Date de naissance : {_fr_date(_iso8(patient.patient_birth_date))}",
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
        f"Grave le {datetime.now(timezone.utc):%d/%m/%Y} (UTC).",
    ]
    return _ascii("\r\n".join(lines) + "\r\n")


def _iso8(dicom_date: str | None) -> str | None:
    if dicom_date and len(dicom_date) == 8 and dicom_date.isdigit():
        return f"{dicom_date[:4]}-{dicom_date[4:6]}-{dicom_date[6:]}"
    return None


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
<body><h1>{esc(practice.get('PRACTICE_NAME') or UNSET)}</h1>
<p>Patient : {esc(_person(patient.patient_name))} — {esc(patient.patient_id)}</p>
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
    facade: "ArchiveFacade", study_uids: list[str], workdir: Path, *, practice: dict[str, str]
) -> bytes:
    """Build the file set in *workdir* (removed afterwards) and return it zipped."""
    try:
        build_media(facade, study_uids, workdir / "media", practice=practice)
        return zip_folder(workdir / "media")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


__all__ = ["MediaReport", "build_media", "build_media_zip", "zip_folder", "readme_text"]
