"""Test data for the radiology area: a patient with a current study and priors, stored through the archive."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from tests.helpers import make_ct


def store(archive, datasets) -> None:
    """Store *datasets* as an import would (journal, index), and wait until they are indexed."""
    from archive_core.maintenance import import_path

    with tempfile.TemporaryDirectory() as tmp:
        for i, ds in enumerate(datasets):
            ds.save_as(Path(tmp) / f"{i:05d}.dcm", enforce_file_format=True)
        report = import_path(archive, Path(tmp))
    assert not report.unreadable, report.unreadable


def ct_slice(study_uid, series_uid, number, *, rows=32, **extra):
    ds = make_ct(study_uid=study_uid, series_uid=series_uid, rows=rows, InstanceNumber=number,
                 RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400, **extra)
    ramp = (np.arange(rows * rows, dtype=np.uint16).reshape(rows, rows) * 4 + number) % 4096
    ds.PixelData = ramp.astype(np.uint16).tobytes()
    return ds


@dataclass
class History:
    patient_id: str
    current: str          # CT thorax 2024-03-01, two series
    prior_ct_chest: str   # CT thorax 2023-01-10 (relevant: modality and body part)
    prior_mr_chest: str   # MR thorax 2022-05-05 (relevant: body part)
    prior_us_abdomen: str  # US abdomen 2023-06-20 (not relevant)
    other_patient: str


def make_history(archive, *, slices: int = 3, patient_id: str = "PAT-RAD-1") -> History:
    uid = generate_uid
    h = History(patient_id, uid(), uid(), uid(), uid(), uid())
    common = {"patient_id": patient_id, "patient_name": "Martin^Élise", "charset": "ISO_IR 192"}
    datasets = []
    s1, s2 = uid(), uid()
    for n in range(1, slices + 1):
        datasets.append(ct_slice(h.current, s1, n, study_date="20240301", BodyPartExamined="CHEST",
                                 StudyDescription="TDM THORAX", SeriesDescription="Axial", SeriesNumber=1,
                                 AccessionNumber="A2024", **common))
    datasets.append(ct_slice(h.current, s2, 1, study_date="20240301", BodyPartExamined="CHEST",
                             StudyDescription="TDM THORAX", SeriesDescription="Topogramme", SeriesNumber=2,
                             AccessionNumber="A2024", **common))
    datasets.append(ct_slice(h.prior_ct_chest, uid(), 1, study_date="20230110", BodyPartExamined="CHEST",
                             StudyDescription="TDM THORAX", AccessionNumber="A2023", **common))
    datasets.append(ct_slice(h.prior_mr_chest, uid(), 1, study_date="20220505", BodyPartExamined="CHEST",
                             StudyDescription="IRM THORAX", modality="MR", SOPClassUID="1.2.840.10008.5.1.4.1.1.4",
                             AccessionNumber="A2022", **common))
    us = ct_slice(h.prior_us_abdomen, uid(), 1, study_date="20230620", BodyPartExamined="ABDOMEN",
                  StudyDescription="ECHO ABDO", modality="US", SOPClassUID="1.2.840.10008.5.1.4.1.1.6.1",
                  AccessionNumber="A2023B", StudyID="", **common)
    us.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian  # an implicit-VR object, as old modalities send
    datasets.append(us)
    datasets.append(ct_slice(h.other_patient, uid(), 1, study_date="20240302", patient_id="OTHER",
                             patient_name="Autre^Patient", BodyPartExamined="CHEST"))
    store(archive, datasets)
    return h
