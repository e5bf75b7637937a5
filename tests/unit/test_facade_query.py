"""The back-office's view of the archive: finding studies, one study, priors (facade, SQLite)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from archive_core.api import ArchiveFacade, StudySummary
from archive_core.errors import NotFound
from archive_core.index.entries import Job
from archive_core.index.identity import Identity
from archive_core.index.upsert import index_jobs
from tests.helpers import make_ct

ROOT = "1.2.826.0.1.3680043.8.498.55"


def _index(archive, datasets) -> None:
    jobs = [
        Job(0, Path("unused"), Identity.of(ds), ds, "0" * 64, 100, "1.2.840.10008.1.2.1", None, None)
        for ds in datasets
    ]
    index_jobs(archive.sessions, jobs)


@pytest.fixture
def facade(archive):
    # Patient PAT1: three studies (CT chest 2023, MR knee 2024-03, CT+SR head 2024-03 later); PAT2: one.
    specs = [
        ("1", "PAT1", "Dupré^Zoé", "20230110", "090000", "CT", "CHEST", "Thorax"),
        ("2", "PAT1", "Dupré^Zoé", "20240301", "083000", "MR", "KNEE", "IRM genou"),
        ("3", "PAT1", "Dupré^Zoé", "20240301", "143000", "CT", "HEAD", "Crâne"),
        ("4", "PAT2", "Martin^Paul", "20240302", "100000", "CR", "HAND", "Main"),
    ]
    datasets = []
    for n, pid, name, date, time, modality, part, desc in specs:
        for i in (1, 2):
            datasets.append(make_ct(
                patient_id=pid, patient_name=name, charset="ISO_IR 192", study_uid=f"{ROOT}.{n}",
                series_uid=f"{ROOT}.{n}.1", sop_uid=f"{ROOT}.{n}.1.{i}", study_date=date, modality=modality,
                StudyTime=time, BodyPartExamined=part, StudyDescription=desc, AccessionNumber=f"A{n}", InstanceNumber=i,
            ))
    datasets.append(make_ct(patient_id="PAT1", patient_name="Dupré^Zoé", study_uid=f"{ROOT}.3",
                            series_uid=f"{ROOT}.3.2", sop_uid=f"{ROOT}.3.2.1", modality="SR", study_date="20240301"))
    _index(archive, datasets)
    return ArchiveFacade(archive)


@pytest.fixture
def session(facade):
    """The caller's session, as a request's (these tests only read after setting up)."""
    with facade.new_session() as s:
        yield s


@pytest.mark.parametrize("criteria, expected", [
    ({"patient_id": "PAT1"}, {"1", "2", "3"}),
    ({"patient_name": "dupre"}, {"1", "2", "3"}),
    ({"date_from": "20240301"}, {"2", "3", "4"}),
    ({"date_from": "20240101", "date_to": "20240301"}, {"2", "3"}),
    ({"modality": "CT"}, {"1", "3"}),
    ({"modality": "SR"}, {"3"}),
    ({"accession_number": "A4"}, {"4"}),
    ({"text": "genou"}, {"2"}),
    ({"text": "dupré"}, {"1", "2", "3"}),
    ({"text": "PAT2"}, {"4"}),
    ({}, {"1", "2", "3", "4"}),
])
def test_find_studies(facade, criteria, expected, session):
    assert {s.study_uid for s in facade.find_studies(session, **criteria)} == {f"{ROOT}.{n}" for n in expected}


def test_find_studies_summary_and_paging(facade, session):
    (study,) = facade.find_studies(session, accession_number="A3")
    assert (study.patient_name, study.modalities) == ("Dupré^Zoé", ("CT", "SR"))
    assert (study.num_series, study.num_instances) == (2, 3)
    first, second = facade.find_studies(session, limit=2), facade.find_studies(session, limit=2, offset=2)
    assert len(first) == len(second) == 2
    assert not {s.study_uid for s in first} & {s.study_uid for s in second}


def test_get_study_has_series_and_instances(facade, session):
    detail = facade.get_study(session, f"{ROOT}.3")
    assert [s.modality for s in detail.series] == ["CT", "SR"]
    assert [i.sop_instance_uid for i in detail.series[0].instances] == [f"{ROOT}.3.1.1", f"{ROOT}.3.1.2"]
    with pytest.raises(NotFound):
        facade.get_study(session, "1.2.3.4")


def test_priors_are_the_patients_other_studies_newest_first(facade, session):
    priors = facade.priors(session, f"{ROOT}.1")
    assert [p.study_uid for p in priors] == [f"{ROOT}.3", f"{ROOT}.2"]
    assert priors[0].modalities == ("CT", "SR") and priors[0].body_parts == ("HEAD",)
    assert priors[1].body_parts == ("KNEE",)
    assert facade.priors(session, f"{ROOT}.4") == []
    with pytest.raises(NotFound):
        facade.priors(session, "1.2.3.4")


def test_every_listing_gives_the_same_summary_of_a_study(facade, session):
    """Before: find_studies and get_study built their summaries from C-FIND rows (no arrival time) and
    priors built their own (empty strings for what is missing): one study read differently by page."""
    uid = f"{ROOT}.2"
    (found,) = facade.find_studies(session, accession_number="A2")
    listed = {s.study_uid: s for s in facade.list_studies(session, patient_id="PAT1")}[uid]
    browsed = {s.study_uid: s for s in facade.browse_studies(session, patient="PAT1").items}[uid]
    assert found == listed == browsed == facade.study_detail(session, uid).study == facade.get_study(session, uid).study
    assert found.received_at is not None and found.description == "IRM genou"
    prior = {p.study_uid: p for p in facade.priors(session, f"{ROOT}.1")}[uid]
    assert StudySummary(**{f.name: getattr(prior, f.name) for f in fields(StudySummary)}) == found
    assert prior.body_parts == ("KNEE",)


def test_listings_read_in_the_callers_transaction(facade):
    """A request that changes the index and then lists sees its own change before it commits, and
    nothing of it once rolled back. Bad case tried: each listing in a session of its own saw only the
    last commit (the tombstoned study still listed, as a prior and in search)."""
    from archive_core.api import utcnow

    gone = f"{ROOT}.2"
    with facade.new_session(write=True) as s:
        facade.tombstone_study(s, gone, at=utcnow())
        assert gone not in {x.study_uid for x in facade.find_studies(s, patient_id="PAT1")}
        assert gone not in {p.study_uid for p in facade.prior_studies(s, f"{ROOT}.1")}
        with pytest.raises(NotFound):
            facade.study_detail(s, gone)
        s.rollback()
    with facade.new_session() as s:
        assert gone in {x.study_uid for x in facade.find_studies(s, patient_id="PAT1")}
        assert gone in {p.study_uid for p in facade.prior_studies(s, f"{ROOT}.1")}
