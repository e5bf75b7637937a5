"""Query benchmark: C-FIND end to end (one ``findscu`` process and association per run), optionally vs Orthanc.

Usage: python bench/query.py [--vs-orthanc] [--studies 1000] [--per-study 1] [--runs 10] [--fill index|store]

A synthetic set (two studies per patient, one patient in ten named A..., dates over 2020-2025) is
written once. Orthanc receives it with storescu (C-STORE, two associations); the archive's index is
filled through its own indexing layer (``index_jobs``, what the journal's indexer runs) unless
``--fill store`` sends it with storescu too (slow past a few thousand studies). Both servers then
run side by side and each query is run ``--runs`` times on each, alternating between them, one
``findscu`` process (association set-up and release included) per run; the median wall time is
reported. ``no match`` measures what a query costs besides its answers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from _common import LOCALHOST, REPO, store
from _qr import ORTHANC, OURS, run_tool, scu_args, target_server

A_SURNAMES = ["Andre", "Arnaud", "Aubert"]
SURNAMES = [
    "Bernard", "Blanc", "Bonnet", "Brun", "Chevalier", "Clement", "David",
    "Dubois", "Dupont", "Durand", "Fabre", "Faure", "Fontaine", "Fournier", "Garnier", "Gauthier", "Girard",
    "Guerin", "Henry", "Lambert", "Laurent", "Lefebvre", "Leroy", "Martin", "Masson", "Mercier", "Michel",
    "Morel", "Moreau", "Muller", "Nicolas", "Perrin", "Petit", "Richard", "Robert", "Roussel", "Roux",
    "Simon", "Thomas", "Vincent", "Dupré", "Lefèvre", "Hélie", "Noël", "Zoé", "Weber", "Ybert",
]
GIVEN = ["Jean", "Marie", "Luc", "Anne", "Paul", "Zoé", "Hélène", "Louis", "Claire", "Marc"]
MODALITIES = ["CT", "MR", "CR", "US", "MG"]


def surname(patient: int) -> str:
    # One patient in ten has a name in A: PatientName=A* matches a tenth of the studies.
    if patient % 10 == 0:
        return A_SURNAMES[patient // 10 % len(A_SURNAMES)]
    return SURNAMES[patient % len(SURNAMES)]


def queries(studies: int) -> dict[str, list[str]]:
    patient = min(123, max(studies // 2 - 1, 0))
    return {
        "no match": ["-k", "PatientID=NOBODY"],
        "exact PatientID": ["-k", f"PatientID=BQ{patient:06d}"],
        "PatientName=A*": ["-k", "PatientName=A*"],
        "StudyDate month": ["-k", "StudyDate=20230301-20230331"],
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vs-orthanc", action="store_true", help="also measure Debian's Orthanc")
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--per-study", type=int, default=1)
    parser.add_argument("--runs", type=int, default=10, help="findscu runs per query (median reported)")
    parser.add_argument("--fill", choices=("index", "store"), default="index",
                        help="how the archive is filled: its indexing layer (default) or C-STORE")
    parser.add_argument("--timeout", type=float, default=3600.0)
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
            ds.PatientName = f"{surname(patient)}^{GIVEN[patient % len(GIVEN)]}"
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
            path = directory / f"{n // 1000:03d}" / f"{n:06d}-{i}.dcm"
            path.parent.mkdir(exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
    return files


def index_directly(database_url: str, files: list[Path], batch: int = 100) -> None:
    """Fill the archive's index as its journal indexer would, without the network and the journal."""
    sys.path.insert(0, str(REPO))
    from archive_core.db import make_engine, session_factory
    from archive_core.index.entries import job_from_file
    from archive_core.index.upsert import index_jobs

    engine = make_engine(database_url)
    sessions = session_factory(engine)
    try:
        for start in range(0, len(files), batch):
            chunk = files[start:start + batch]
            index_jobs(sessions, [job_from_file(p, seq=start + k + 1) for k, p in enumerate(chunk)])
    finally:
        engine.dispose()


def findscu(server, keys: list[str], *, timeout_s: float, outdir: Path | None = None):
    args = [*scu_args(server), "-S", "-k", "QueryRetrieveLevel=STUDY",
            "-k", "StudyInstanceUID", "-k", "PatientName", "-k", "PatientID", "-k", "StudyDate",
            "-k", "ModalitiesInStudy", "-k", "NumberOfStudyRelatedInstances", *keys]
    if outdir is not None:
        outdir.mkdir(parents=True, exist_ok=True)
        args += ["-X", "-od", str(outdir)]
    return run_tool("findscu", [*args, LOCALHOST, str(server.port)], timeout_s=timeout_s)


def fill(target: str, server, files: list[Path], workdir: Path, args: argparse.Namespace) -> str:
    started = time.perf_counter()
    if target == OURS and args.fill == "index":
        index_directly(f"sqlite:///{workdir / 'instance' / 'archivage.sqlite3'}", files)
        how = "through its indexing layer"
    else:
        store(server, files, associations=2, workdir=workdir, timeout_s=args.timeout)
        how = "with storescu (2 associations)"
    return f"{len(files)} instances {how} in {time.perf_counter() - started:.1f} s"


def measure(targets: list[str], files: list[Path], args: argparse.Namespace, root: Path):
    """{target: {query: (median ms, matches)}}: every target up at once, runs alternating between them."""
    results: dict[str, dict[str, tuple[float, int]]] = {t: {} for t in targets}
    with ExitStack() as stack:
        servers = {}
        for target in targets:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"{target}-", dir=root)))
            servers[target] = stack.enter_context(target_server(target, workdir, {}))
            print(f"{target}: filled {fill(target, servers[target], files, workdir, args)}", flush=True)
        for label, keys in queries(args.studies).items():
            times: dict[str, list[float]] = {t: [] for t in targets}
            matches = {}
            for target, server in servers.items():
                answers = root / f"{target}-{label.replace(' ', '_').replace('*', '')}"
                findscu(server, keys, timeout_s=args.timeout, outdir=answers)  # also warms the caches
                matches[target] = len(list(answers.glob("rsp*.dcm")))
            for _ in range(args.runs):
                for target, server in servers.items():
                    times[target].append(findscu(server, keys, timeout_s=args.timeout).elapsed_s * 1000)
            for target in targets:
                results[target][label] = (statistics.median(times[target]), matches[target])
                print(f"  {target:<10} {label:<16} {results[target][label][0]:8.1f} ms per findscu run "
                      f"(min {min(times[target]):.1f}; {matches[target]} matches)", flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="archivage-bench-q-", dir=args.workdir) as tmp:
        root = Path(tmp)
        files = generate(args.studies, args.per_study, root / "data")
        print(f"{args.studies} studies, {len(files)} instances; median of {args.runs} findscu runs per query")
        targets = [OURS, *([ORTHANC] if args.vs_orthanc else [])]
        results = measure(targets, files, args, root)
    print("\nSummary (ms per findscu run: process, association, query, release; lower is better)")
    for label in queries(args.studies):
        cells = [f"{t} {results[t][label][0]:.1f} ms ({results[t][label][1]})" for t in targets]
        line = f"{label:<16} " + " | ".join(cells)
        if ORTHANC in results:
            ratio = results[OURS][label][0] / max(results[ORTHANC][label][0], 1e-6)
            line += f" | ours/Orthanc {ratio:.2f} (target <= 1)"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
