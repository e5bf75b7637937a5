"""Benchmark of the one patient search with 100,000 patients: the facade (core) and
``GET /api/v1/patients`` (Flask test client, token check and audit included). Not a test:
prints p50/p95 in milliseconds per kind of query.

    .venv/bin/python bench/patient_search.py [--patients 100000] [--rounds 50] [--database-url URL]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import report_ms  # noqa: E402

FAMILY = ["MARTIN", "BERNARD", "DUBOIS", "THOMAS", "ROBERT", "RICHARD", "PETIT", "DURAND", "LEROY", "MOREAU",
          "SIMON", "LAURENT", "LEFÈVRE", "MICHEL", "GARCIA", "DAVID", "BERTRAND", "ROUX", "VINCENT", "FOURNIER",
          "MOREL", "GIRARD", "ANDRÉ", "LEFEBVRE", "MERCIER", "DUPONT", "LAMBERT", "BONNET", "FRANÇOIS", "MARTINEZ",
          "DUPRÉ", "LEGRAND", "GARNIER", "FAURE", "ROUSSEAU", "BLANC", "GUÉRIN", "MULLER", "HENRY", "ROUSSEL"]
GIVEN = ["Jean", "Marie", "Lucas", "Léa", "Hugo", "Chloé", "Louis", "Emma", "Jean-François", "Anne-Sophie",
         "Zoé", "Théo", "Inès", "Noé", "Camille", "Hélène", "Gaël", "Maëlys", "Jérôme", "Françoise"]
QUERIES = {
    "exact ID": lambda r: f"P{r.randrange(100_000):07d}",
    "family name, no accents": lambda r: "dupre",
    "partial family name": lambda r: "lefe",
    "Prénom NOM": lambda r: "lucas martin",
    "hyphenated given name": lambda r: "jean-francois roux",
    "birth date dd/mm/yyyy": lambda r: f"{r.randint(1, 28):02d}/{r.randint(1, 12):02d}/{r.randint(1930, 2020)}",
}


def seed(url: str, patients: int) -> None:
    from sqlalchemy import insert

    from archive_core.db import make_engine, session_factory
    from archive_core.index.matching import fold_person_name
    from archive_core.index.models import Patient, PatientNameToken
    from archive_core.index.patient_search import name_tokens
    from backoffice.migrate import upgrade

    upgrade(url)
    engine = make_engine(url)
    factory = session_factory(engine)
    r = random.Random(11)
    for offset in range(0, patients, 10_000):
        rows = []
        for i in range(offset, min(patients, offset + 10_000)):
            name = f"{r.choice(FAMILY)}^{r.choice(GIVEN)}"
            rows.append({"patient_id": f"P{i:07d}", "issuer_of_patient_id": "", "patient_name": name,
                         "patient_name_search": fold_person_name(name),
                         "patient_birth_date": f"{r.randint(1930, 2020)}{r.randint(1, 12):02d}{r.randint(1, 28):02d}",
                         "patient_sex": r.choice("MF")})
        for n, row in enumerate(rows):
            row["id"] = offset + n + 1
        with factory() as s:  # bulk, as a migration's backfill would: the words are written here
            s.execute(insert(Patient), rows)
            s.execute(insert(PatientNameToken), [{"patient_pk": row["id"], "token": w}
                                                  for row in rows for w in name_tokens(row["patient_name_search"])])
            s.commit()
    engine.dispose()




def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="archivage-bench-") as tmp:
        instance = Path(tmp) / "instance"
        instance.mkdir()
        url = args.database_url or f"sqlite:///{instance / 'archivage.sqlite3'}"
        t0 = time.perf_counter()
        seed(url, args.patients)
        print(f"seeded {args.patients} patients in {time.perf_counter() - t0:.1f} s ({url.split(':')[0]})")
        from backoffice import create_app
        from backoffice.auth.services import create_token, create_user

        app = create_app({"INSTANCE_PATH": str(instance), "DATABASE_URL": url, "STORAGE_MIN_FREE_BYTES": 0})
        facade = app.extensions["archivage"]
        with facade.new_session(write=True) as s:
            create_user(s, "bench", role="front_desk", password="bench password 123")
            token = create_token(s, "bench")
            s.commit()
        client = app.test_client()
        headers = {"Authorization": f"Bearer {token}"}
        r = random.Random(7)
        everything = []
        for kind, make in QUERIES.items():
            core, api = [], []
            for _ in range(args.rounds):
                text = make(r)
                with facade.new_session() as s:
                    t = time.perf_counter()
                    facade.search_patients(s, text, limit=100)
                    core.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                response = client.get("/api/v1/patients", query_string={"q": text}, headers=headers)
                api.append((time.perf_counter() - t) * 1000)
                assert response.status_code == 200, response.get_data(as_text=True)
            report_ms(f"core search: {kind}", core)
            report_ms(f"GET /api/v1/patients: {kind}", api)
            everything += core
        report_ms("core search: all queries", everything)
        app.extensions["archivage"].archive.close()


if __name__ == "__main__":
    main()
