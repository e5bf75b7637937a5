"""The one patient search (archive_core/index/patient_search.py through the facade), on SQLite and PostgreSQL.

Patients are indexed the way the archive indexes received objects (index_jobs), so the search
reads the folded name column the real ingest fills. Each case is what a desk typed and did not
find before (issue 11: "Dupré", "dupre", "lefevre", "martin lucas", "jean-francois").
"""

from __future__ import annotations

from pathlib import Path

import pytest

from archive_core.api import ArchiveFacade
from archive_core.index.entries import Job
from archive_core.index.identity import Identity
from archive_core.index.upsert import index_jobs
from archive_core.index.patient_search import parse_birth_date
from archive_core.values import person_name as human_name
from tests.helpers import make_ct

PATIENTS = [
    # patient ID, DICOM name, birth date
    ("PAT001", "DUPRÉ^JEAN", "19610312"),
    ("PAT002", "DUPREZ^ANNE", "19800101"),
    ("PAT003", "LEFÈVRE^Marie-Hélène", "19751224"),
    ("PAT004", "MARTIN^LUCAS", "19900505"),
    ("PAT005", "LUCAS^MARTINE", "19900506"),
    ("PAT006", "MOREAU^JEAN-FRANÇOIS", "19550202"),
    ("PAT007", "ROUX^Jean François", "19660303"),
    ("DUPRE", "BERNARD^PAUL", "19700707"),  # an ID that is also a name typed at the desk
]


@pytest.fixture
def facade(database_url, tmp_path):
    from archive_core.archive import Archive
    from archive_core.config import Settings
    from tests.helpers import migrate

    instance = tmp_path / "instance"
    instance.mkdir()
    settings = Settings(instance_path=instance, DATABASE_URL=database_url, STORAGE_MIN_FREE_BYTES=0)
    migrate(settings.database_url)
    archive = Archive.open(settings)
    jobs = []
    for n, (pid, name, birth) in enumerate(PATIENTS):
        ds = make_ct(patient_id=pid, patient_name=name, charset="ISO_IR 192",
                     study_uid=f"1.2.826.0.1.3680043.8.498.71.{n}", series_uid=f"1.2.826.0.1.3680043.8.498.71.{n}.1",
                     sop_uid=f"1.2.826.0.1.3680043.8.498.71.{n}.1.1", PatientBirthDate=birth)
        jobs.append(Job(n, Path("unused"), Identity.of(ds), ds, "0" * 64, 100, "1.2.840.10008.1.2.1", None, None))
    index_jobs(archive.sessions, jobs)
    yield ArchiveFacade(archive)
    archive.close()


def _ids(facade, text, **kwargs):
    with facade.new_session() as s:
        return [m.patient_id for m in facade.search_patients(s, text, **kwargs).items]


@pytest.mark.parametrize("typed", ["Dupré", "dupre", "DUPRE", "DUPRÉ", "dupr", "Dupré Jean", "jean dupre"])
def test_accents_case_order_and_partial_names_find_dupre(facade, typed):
    """Before: the day list missed "Dupré"/"dupre", the study browser missed "dupre"."""
    assert "PAT001" in _ids(facade, typed)


@pytest.mark.parametrize("typed, expected", [
    ("lefevre", "PAT003"), ("LEFEVRE marie", "PAT003"), ("marie-helene", "PAT003"), ("marie helene lefevre", "PAT003"),
    ("martin lucas", "PAT004"), ("Lucas MARTIN", "PAT004"),
    ("jean-francois", "PAT006"), ("jean francois moreau", "PAT006"),
    ("jean-francois roux", "PAT007"), ("Jean François", "PAT007"),
    ("12/03/1961", "PAT001"), ("1961-03-12", "PAT001"), ("12.3.1961", "PAT001"), ("dupr 12/03/1961", "PAT001"),
    ("PAT005", "PAT005"), ("pat00", None),
])
def test_what_a_desk_types_finds_the_patient(facade, typed, expected):
    """Hyphenated and compound given names typed with or without hyphen, both name orders, French and ISO
    birth dates, IDs. "pat00" (an ID start typed in the wrong case) finds nobody by ID: IDs are exact."""
    found = _ids(facade, typed)
    if expected is None:
        assert found == []
    else:
        assert expected in found


def test_ranking_exact_id_then_exact_name_then_prefix(facade):
    """"dupre": the patient whose ID is DUPRE first, then DUPRÉ (family name equal), then DUPREZ (prefix)."""
    assert _ids(facade, "dupre") == ["PAT001", "PAT002"]  # IDs are case-sensitive: "dupre" is not ID DUPRE
    assert _ids(facade, "DUPRE") == ["DUPRE", "PAT001", "PAT002"]
    # "martin lucas" is MARTIN Lucas exactly; LUCAS Martine only matches on word starts.
    assert _ids(facade, "martin lucas") == ["PAT004", "PAT005"]
    assert _ids(facade, "lucas martin") == ["PAT004", "PAT005"]


def test_the_wrong_birth_date_or_a_missing_word_finds_nobody(facade):
    """Every word must match: a right name with another birth date, or an extra word, is not a match."""
    assert _ids(facade, "dupre 13/03/1961") == []
    assert _ids(facade, "dupre xavier") == []
    assert _ids(facade, "31/02/1961") == []  # not a date: searched as a name word, nobody has it
    assert _ids(facade, "   ") == []


def test_paging(facade):
    with facade.new_session() as s:
        first = facade.search_patients(s, "j", limit=2)
        second = facade.search_patients(s, "j", limit=2, offset=2)
    assert first.has_more and len(first.items) == 2
    assert not {m.patient_id for m in first.items} & {m.patient_id for m in second.items}


def test_results_read_as_people_write_them(facade):
    with facade.new_session() as s:
        match = facade.search_patients(s, "PAT006").items[0]
    assert match.name == "MOREAU Jean-François" and match.birth_date == "1955-02-02"


def test_study_browser_uses_the_same_search(facade):
    """Before: the study browser found "Dupré" but not "dupre" or "jean-francois"."""
    with facade.new_session() as session:
        found = facade.browse_studies(session, patient="dupre").items
        assert sorted(s.patient_id for s in found) == ["PAT001", "PAT002"]
        assert sorted(s.patient_id for s in facade.browse_studies(session, patient="jean-francois").items) == [
            "PAT006", "PAT007"]


def test_human_name_and_birth_dates_alone():
    assert human_name("DUPRÉ^JEAN") == "DUPRÉ Jean"
    assert human_name("Dupré^Zoé") == "DUPRÉ Zoé"
    assert human_name(None) == ""
    assert parse_birth_date("29/02/2023") is None and parse_birth_date("29/02/2024") == "20240229"


def test_a_renamed_patient_is_found_by_the_new_name_only(facade):
    """The name words follow the index: a later object with a corrected name (newest wins) replaces
    the old words, in the process that indexes it (no separate rebuild)."""
    ds = make_ct(patient_id="PAT007", patient_name="ROUX^Paul", charset="ISO_IR 192",
                 study_uid="1.2.826.0.1.3680043.8.498.72.1", series_uid="1.2.826.0.1.3680043.8.498.72.1.1",
                 sop_uid="1.2.826.0.1.3680043.8.498.72.1.1.1", PatientBirthDate="19660303")
    index_jobs(facade.archive.sessions,
               [Job(99, Path("unused"), Identity.of(ds), ds, "0" * 64, 100, "1.2.840.10008.1.2.1", None, None)])
    assert "PAT007" not in _ids(facade, "jean francois")
    assert "PAT007" in _ids(facade, "paul roux")


def test_the_migration_fills_the_word_table_for_patients_indexed_before_it(database_url):
    """Patients indexed before migration 0930 (no words yet) are found by the search after it."""
    from sqlalchemy import text

    from archive_core.db import make_engine, session_factory
    from backoffice.migrate import upgrade

    upgrade(database_url, "0920_qr_prefix")
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO patient (patient_id, issuer_of_patient_id, patient_name, patient_name_search, "
                          "patient_birth_date, created_at) VALUES ('OLD1', '', 'LEFÈVRE^Marie-Hélène', "
                          "'LEFEVRE^MARIE-HELENE', '19751224', CURRENT_TIMESTAMP)"))
    upgrade(database_url)
    with session_factory(engine)() as s:
        from archive_core.index.patient_search import search

        assert [m.patient_id for m in search(s, "helene lefevre").items] == ["OLD1"]
    engine.dispose()
