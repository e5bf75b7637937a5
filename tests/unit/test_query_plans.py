"""C-FIND matching reads the index, not whole tables, on SQLite and PostgreSQL (EXPLAIN of the real statement).

A PatientName wildcard (``AUB*``) is matched in the three name groups. Before migration 0920 it
read every study on SQLite (no index on the phonetic group) and every patient on a PostgreSQL
database whose collation is not "C" (no ``varchar_pattern_ops`` index). The statement checked
is the one the C-FIND handler runs (captured from the engine), on an index of 5,000 patients
with statistics gathered.
"""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import event, insert, text

from archive_core.db import make_engine, session_factory
from archive_core.index.matching import fold_person_name
from archive_core.index.models import Patient, Study
from archive_core.index.query import STUDY_ROOT, parse_identifier, stream
from tests.helpers import migrate

SURNAMES = ["Aubert", "Bernard", "Dupont", "Martin", "Petit", "Roux", "Simon", "Zola"]


@pytest.fixture
def engine(database_url):
    migrate(database_url)
    engine = make_engine(database_url)
    names = [f"{SURNAMES[n % len(SURNAMES)]}{n // len(SURNAMES)}^Jean" for n in range(5_000)]
    with engine.begin() as conn:
        conn.execute(insert(Patient), [
            {"id": n + 1, "patient_id": f"P{n:05d}", "issuer_of_patient_id": "", "patient_name": name,
             "patient_name_search": fold_person_name(name)} for n, name in enumerate(names)])
        conn.execute(insert(Study), [
            {"id": n + 1, "study_uid": f"1.2.3.{n}", "patient_pk": n + 1, "study_date": f"2024{1 + n % 12:02d}15",
             "modalities_in_study": "CT", "num_series": 1, "num_instances": 1, "external": False}
            for n in range(5_000)])
        conn.execute(text("ANALYZE"))
    yield engine
    engine.dispose()


def _plan(engine, **keys) -> tuple[str, int]:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    query = parse_identifier(ds, STUDY_ROOT)
    statements = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        with session_factory(engine)() as s:
            matches = sum(1 for _ in stream(s, query, limit=10_001))
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    statement, parameters = next((st, p) for st, p in statements if st.lstrip().upper().startswith("SELECT"))
    with engine.connect() as conn:
        cursor = conn.connection.driver_connection.cursor()
        if engine.dialect.name == "sqlite":
            cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            plan = "\n".join(str(row[-1]) for row in cursor.fetchall())
        else:
            cursor.execute("EXPLAIN " + statement, parameters)
            plan = "\n".join(row[0] for row in cursor.fetchall())
    return plan, matches


def _reads_a_whole_table(plan: str, tables=("patient", "study")) -> bool:
    return any(f"{scan} {table}" in plan for scan in ("Seq Scan on", "SCAN") for table in tables)


def test_a_selective_patient_name_wildcard_reads_the_name_index(engine):
    plan, matches = _plan(engine, PatientName="AUBERT12*")
    assert matches == 11  # Aubert12, Aubert120..Aubert129
    assert not _reads_a_whole_table(plan), plan


def test_an_exact_patient_id_and_a_date_range_read_their_indexes(engine):
    plan, matches = _plan(engine, PatientID="P00123")
    assert matches == 1 and not _reads_a_whole_table(plan), plan
    plan, matches = _plan(engine, StudyDate="20240301-20240331")
    assert matches == 417  # n % 12 == 2 among 5,000
    # The studies through the date index (PostgreSQL may then hash the patients: a fair choice for 417 rows).
    assert not _reads_a_whole_table(plan, ("study",)), plan


def test_a_name_prefix_reads_the_name_indexes_without_statistics_and_answers_in_index_order(engine):
    """The archive gathers no statistics: without them SQLite walked the whole study table in key
    order (to spare a sort) for ``PatientName=AUBERT*`` (one patient in eight) instead of reading the
    three name indexes. Statistics removed here (bad input: a database never analysed); the answers
    must still come in index order, every one of them."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("DELETE FROM sqlite_stat1"))
    engine.dispose()  # SQLite reads its statistics when a connection opens
    plan, matches = _plan(engine, PatientName="AUBERT*")
    assert matches == 625
    # PostgreSQL (its own statistics) may hash the studies for 625 rows in 5,000: the patients come from the index.
    tables = ("patient", "study") if engine.dialect.name == "sqlite" else ("patient",)
    assert not _reads_a_whole_table(plan, tables), plan
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.PatientName = "AUBERT*"
    with session_factory(engine)() as s:
        uids = [row["StudyInstanceUID"] for row in stream(s, parse_identifier(ds, STUDY_ROOT), limit=10_001)]
    assert uids == [f"1.2.3.{n}" for n in range(0, 5_000, len(SURNAMES))]
