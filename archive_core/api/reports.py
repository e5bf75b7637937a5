"""Reports that arrived over DICOM: Encapsulated PDFs and structured reports, read from the stored objects."""

from __future__ import annotations

from typing import Callable, Iterable

from archive_core.api.types import ENCAPSULATED_PDF, SR_CLASSES, DicomDocument, InstanceRef
from archive_core.errors import NotFound
from archive_core.values import da_to_iso


def sr_text(ds) -> str:
    """The text of a structured report's content tree, headings first (enough to read it)."""
    lines: list[str] = []

    def walk(items, depth: int) -> None:
        for item in items:
            name = ""
            if "ConceptNameCodeSequence" in item and item.ConceptNameCodeSequence:
                name = str(item.ConceptNameCodeSequence[0].get("CodeMeaning", ""))
            value = item.get("TextValue")
            if value is None and "ConceptCodeSequence" in item and item.ConceptCodeSequence:
                value = item.ConceptCodeSequence[0].get("CodeMeaning")
            if value is None and "MeasuredValueSequence" in item and item.MeasuredValueSequence:
                mv = item.MeasuredValueSequence[0]
                units = mv.get("MeasurementUnitsCodeSequence") or []
                unit = units[0].get("CodeValue", "") if units else ""
                value = f"{mv.get('NumericValue', '')} {unit}".strip()
            if name or value:
                lines.append(("  " * depth) + (f"{name} : {value}" if name and value else str(name or value)))
            if "ContentSequence" in item:
                walk(item.ContentSequence, depth + 1)

    walk(ds.get("ContentSequence", []), 0)
    return "\n".join(lines)


def documents(refs: Iterable[InstanceRef], read_dataset: Callable[[str], object]) -> list[DicomDocument]:
    """The Encapsulated PDFs and structured reports among *refs* (in their order), each read with *read_dataset*."""
    docs = []
    for ref in refs:
        if ref.sop_class_uid != ENCAPSULATED_PDF and ref.sop_class_uid not in SR_CLASSES:
            continue
        ds = read_dataset(ref.sop_instance_uid)
        is_pdf = ref.sop_class_uid == ENCAPSULATED_PDF
        title = str(ds.get("DocumentTitle", "") or "")
        if not title and "ConceptNameCodeSequence" in ds and ds.ConceptNameCodeSequence:
            title = str(ds.ConceptNameCodeSequence[0].get("CodeMeaning", ""))
        docs.append(
            DicomDocument(
                sop_instance_uid=ref.sop_instance_uid,
                kind="pdf" if is_pdf else "sr",
                title=title or ("Document PDF" if is_pdf else SR_CLASSES[ref.sop_class_uid]),
                content_date=da_to_iso(str(ds.get("ContentDate", "") or "")),
                text="" if is_pdf else sr_text(ds),
                verified=str(ds.get("VerificationFlag", "")).upper() == "VERIFIED",
            )
        )
    return docs


def pdf(ds, sop_instance_uid: str) -> bytes:
    """The PDF of an Encapsulated PDF object (trailing padding removed); NotFound for another object."""
    if str(ds.get("SOPClassUID", "")) != ENCAPSULATED_PDF:
        raise NotFound(f"{sop_instance_uid} is not an encapsulated PDF")
    data = bytes(ds.EncapsulatedDocument)
    end = data.rfind(b"%%EOF")
    return data[: end + 5] if end >= 0 else data
