"""How C-FIND matching grows with the index: the query layer alone (no network), 1,000 to 100,000 studies.

Usage: python bench/query_scale.py [--sizes 1000,10000,100000] [--repeat 20]

Rows are inserted directly (two studies per patient, one series each) into a migrated SQLite
database; each query of bench/query.py is then run through the path of the C-FIND handler
(parse, rows streamed from the cursor, each answer encoded from its row) and timed, median of
--repeat runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pydicom.dataset import Dataset  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from archive_core.db import make_engine, session_factory  # noqa: E402
from archive_core.index.matching import fold_person_name  # noqa: E402
from archive_core.values import normalize_tm  # noqa: E402
from archive_core.index.models import Patient, Series, Study  # noqa: E402
from archive_core.index.answers import answer_elements  # noqa: E402
from archive_core.index.query import STUDY_ROOT, parse_identifier, stream  # noqa: E402
from archive_core.net.encoding import encode_elements  # noqa: E402

SURNAMES = ["Andre", "Bernard", "Dubois", "Dupont", "Martin", "Moreau", "Petit", "Roux", "Simon", "Aubert",
            "Arnaud", "Blanc", "Faure", "Girard", "Lambert", "Leroy", "Mercier", "Morel", "Perrin", "Robert"]


def fill(url: str, studies: int) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        patients = [
            {"id": p + 1, "patient_id": f"BQ{p:06d}", "issuer_of_patient_id": "",
             "patient_name": f"{SURNAMES[p % len(SURNAMES)]}^X{p}",
             "patient_name_search": fold_person_name(f"{SURNAMES[p % len(SURNAMES)]}^X{p}"),
             "patient_birth_date": "19700101", "patient_sex": "F"}
            for p in range(studies // 2)
        ]
        conn.execute(insert(Patient), patients)
        rows = []
        for n in range(studies):
            day = n * 7 % 2190
            rows.append({"id": n + 1, "study_uid": f"1.2.3.{n}", "patient_pk": n // 2 + 1,
                         "study_date": f"{2020 + day // 365}{1 + day % 365 // 31:02d}{1 + day % 28:02d}",
                         "study_time": "101500", "study_time_norm": normalize_tm("101500"),
                         "accession_number": f"A{n}", "modalities_in_study": "CT", "num_series": 1, "num_instances": 7,
                         "external": False})
        conn.execute(insert(Study), rows)
        conn.execute(insert(Series), [{"id": n + 1, "series_uid": f"1.2.3.{n}.1", "study_pk": n + 1, "modality": "CT",
                                       "num_instances": 7} for n in range(studies)])
    engine.dispose()


def identifier(**keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in ("StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "ModalitiesInStudy",
                    "NumberOfStudyRelatedInstances"):
        setattr(ds, keyword, "")
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    from backoffice.migrate import upgrade

    queries = {"exact PatientID": {"PatientID": "BQ000123"}, "PatientName=A*": {"PatientName": "A*"},
               "StudyDate range": {"StudyDate": "20230101-20230331"}}
    print(f"{'studies':>8} " + " ".join(f"{label:>24}" for label in queries))
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/scale.sqlite3"
            upgrade(url)
            fill(url, size)
            sessions = session_factory(make_engine(url))
            cells = []
            for keys in queries.values():
                ident = identifier(**keys)
                times, matches = [], 0
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    query = parse_identifier(ident, STUDY_ROOT)
                    with sessions() as s:
                        answers = [encode_elements(answer_elements(query, row, ae_title="ARCHIVAGE"), False, True)
                                   for row in stream(s, query, limit=10001)]
                    times.append(time.perf_counter() - started)
                    matches = len(answers)
                cells.append(f"{statistics.median(times) * 1000:8.1f} ms ({matches:5d})")
            print(f"{size:>8} " + " ".join(f"{c:>24}" for c in cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
