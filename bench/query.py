"""Query benchmark: C-FIND latency of the archive (findscu --repeat on one association), optionally vs Orthanc.

Usage: python bench/query.py [--vs-orthanc] [--studies 1000] [--per-study 7] [--repeat 50]

A synthetic set (default 1,000 studies of 7 small images, two studies per patient, names over
the alphabet, dates over 2020-2025) is stored into each target with storescu; then each query
runs with ``findscu --repeat N`` and with ``--repeat 1``: the per-query latency is the
difference divided by N-1 (process start and association set-up cancel out).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from _common import LOCALHOST, store
from _qr import ORTHANC, OURS, run_tool, scu_args, target_server

SURNAMES = [
    "Andre", "Arnaud", "Aubert", "Bernard", "Blanc", "Bonnet", "Brun", "Chevalier", "Clement", "David",
    "Dubois", "Dupont", "Durand", "Fabre", "Faure", "Fontaine", "Fournier", "Garnier", "Gauthier", "Girard",
    "Guerin", "Henry", "Lambert", "Laurent", "Lefebvre", "Leroy", "Martin", "Masson", "Mercier", "Michel",
    "Morel", "Moreau", "Muller", "Nicolas", "Perrin", "Petit", "Richard", "Robert", "Roussel", "Roux",
    "Simon", "Thomas", "Vincent", "Dupré", "Lefèvre", "Hélie", "Noël", "Zoé", "Weber", "Ybert",
]
GIVEN = ["Jean", "Marie", "Luc", "Anne", "Paul", "Zoé", "Hélène", "Louis", "Claire", "Marc"]
MODALITIES = ["CT", "MR", "CR", "US", "MG"]

def queries(studies: int) -> dict[str, list[str]]:
    patient = min(123, max(studies // 2 - 1, 0))
    return {
        "exact PatientID": ["-k", f"PatientID=BQ{patient:06d}"],
        "PatientName=A*": ["-k", "PatientName=A*"],
        "StudyDate range": ["-k", "StudyDate=20230101-20230331"],
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vs-orthanc", action="store_true", help="also measure Debian's Orthanc")
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--per-study", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=50, help="queries per measurement (default 50)")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--workdir", type=Path)
    return parser.parse_args(argv)


def generate(studies: int, per_study: int, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 4096, size=(16, 16), dtype=np.uint16).tobytes()
    files = []
    for n in range(studies):
        patient = n // 2
        study_uid, series_uid = generate_uid(), generate_uid()
        day = int(rng.integers(0, 6 * 365))
        date = np.datetime64("2020-01-01") + np.timedelta64(day, "D")
        for i in range(per_study):
            ds = Dataset()
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = generate_uid()
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.PatientID = f"BQ{patient:06d}"
            ds.PatientName = f"{SURNAMES[patient % len(SURNAMES)]}^{GIVEN[patient % len(GIVEN)]}"
            ds.PatientBirthDate = "19700101"
            ds.PatientSex = "F" if patient % 2 else "M"
            ds.StudyDate = str(date).replace("-", "")
            ds.StudyTime = f"{8 + n % 10:02d}{n % 60:02d}00"
            ds.AccessionNumber = f"A{n:07d}"
            ds.StudyID = str(n)
            ds.StudyDescription = "Bench query"
            ds.Modality = MODALITIES[n % len(MODALITIES)]
            ds.SeriesNumber, ds.InstanceNumber = 1, i + 1
            ds.Rows = ds.Columns = 16
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.PixelData = pixels
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            path = directory / f"{n:06d}-{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
    return files


def findscu(server, keys: list[str], repeat: int, *, timeout_s: float, outdir: Path | None = None):
    args = [*scu_args(server), "-S", "--repeat", str(repeat), "-k", "QueryRetrieveLevel=STUDY",
            "-k", "StudyInstanceUID", "-k", "PatientName", "-k", "PatientID", "-k", "StudyDate",
            "-k", "ModalitiesInStudy", "-k", "NumberOfStudyRelatedInstances", *keys]
    if outdir is not None:
        outdir.mkdir(parents=True, exist_ok=True)
        args += ["-X", "-od", str(outdir)]
    return run_tool("findscu", [*args, LOCALHOST, str(server.port)], timeout_s=timeout_s)


def measure(target: str, files: list[Path], args: argparse.Namespace, root: Path) -> dict[str, tuple[float, int]]:
    with tempfile.TemporaryDirectory(prefix=f"{target}-", dir=root) as tmp:
        workdir = Path(tmp)
        with target_server(target, workdir, {}) as server:
            load_s = store(server, files, associations=2, workdir=workdir, timeout_s=args.timeout)
            print(f"{target}: loaded {len(files)} instances in {load_s:.1f} s", flush=True)
            results = {}
            for label, keys in queries(args.studies).items():
                answers = workdir / label.replace(" ", "_")
                findscu(server, keys, 1, timeout_s=args.timeout, outdir=answers)
                matches = len(list(answers.glob("rsp*.dcm")))
                one = min(findscu(server, keys, 1, timeout_s=args.timeout).elapsed_s for _ in range(3))
                many = findscu(server, keys, args.repeat, timeout_s=args.timeout).elapsed_s
                per_query_ms = max(many - one, 0.0) / (args.repeat - 1) * 1000
                results[label] = (per_query_ms, matches)
                print(f"  {label:<18} {per_query_ms:7.1f} ms/query  ({matches} matches)", flush=True)
            return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="archivage-bench-q-", dir=args.workdir) as tmp:
        root = Path(tmp)
        files = generate(args.studies, args.per_study, root / "data")
        print(f"{args.studies} studies, {len(files)} instances; {args.repeat} queries per measurement")
        targets = [OURS, *([ORTHANC] if args.vs_orthanc else [])]
        results = {target: measure(target, files, args, root) for target in targets}
    print("\nSummary (ms per query, one association; lower is better)")
    for label in queries(args.studies):
        cells = [f"{t} {results[t][label][0]:.1f} ms ({results[t][label][1]})" for t in targets]
        line = f"{label:<18} " + " | ".join(cells)
        if ORTHANC in results:
            ratio = results[OURS][label][0] / max(results[ORTHANC][label][0], 1e-6)
            line += f" | ours/Orthanc {ratio:.2f} (target <= 1)"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
