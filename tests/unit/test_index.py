"""The index on SQLite and on a real PostgreSQL: rows, counts, character sets, duplicates, audit."""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydicom.data import get_charset_files
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import func, select

from archive_core.errors import DuplicateConflict
from archive_core.index.models import Instance, Patient, Series, Study
from tests.helpers import make_ct


@pytest.fixture
def db_archive(database_url, instance_path):
    """An archive whose index lives at *database_url* (SQLite, then PostgreSQL), indexer running."""
    from archive_core.archive import Archive
    from archive_core.config import Settings
    from tests.helpers import migrate

    settings = Settings(instance_path=instance_path, DATABASE_URL=database_url, STORAGE_MIN_FREE_BYTES=0)
    migrate(settings.database_url)
    archive = Archive.open(settings)
    archive.ingestor.start()
    yield archive
    archive.close()


def _encoded(ds) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


def ingest(archive, source, *, source_ae: str | None = "CT1"):
    """Receive a dataset (or a Part 10 file) as the C-STORE handler does: from its bytes."""
    from archive_core.index.identity import Identity
    from archive_core.index.received import parse, read_part10

    if isinstance(source, Path):
        ds, raw, ts, _ = read_part10(source)
    else:
        raw, ts = _encoded(source), ExplicitVRLittleEndian
        ds = parse(raw, ts)
    outcome = archive.ingestor.receive(raw, ds, transfer_syntax_uid=ts, identity=Identity.of(ds), source_ae=source_ae)
    assert archive.ingestor.wait_indexed(timeout=30)
    return outcome


def _count(archive, model) -> int:
    with archive.sessions() as s:
        return s.scalar(select(func.count(model.id)))


def test_rows_and_counts_for_two_patients(db_archive):
    a_study, b_study = "1.2.826.0.1.3680043.8.498.10", "1.2.826.0.1.3680043.8.498.20"
    for series, modality, n in (("1", "CT", 3), ("2", "SR", 1)):
        for i in range(n):
            ingest(db_archive, make_ct(patient_id="A", study_uid=a_study, series_uid=f"{a_study}.{series}",
                                       modality=modality, InstanceNumber=i + 1, SeriesNumber=int(series)))
    ingest(db_archive, make_ct(patient_id="B", patient_name="Martin^Paul", study_uid=b_study,
                               series_uid=f"{b_study}.1", modality="MR", StudyDescription="IRM genou"))
    assert [_count(db_archive, m) for m in (Patient, Study, Series, Instance)] == [2, 2, 3, 5]
    with db_archive.sessions() as s:
        a = s.scalar(select(Study).where(Study.study_uid == a_study))
        assert (a.patient.patient_id, a.num_series, a.num_instances, a.modalities_in_study) == ("A", 2, 4, "CT\\SR")
        assert (a.study_date, a.accession_number, a.external) == ("20240115", "ACC1", False)
        b = s.scalar(select(Study).where(Study.study_uid == b_study))
        assert (b.patient.patient_name, b.study_description, b.modalities_in_study) == ("Martin^Paul", "IRM genou", "MR")
        numbers = sorted(s.scalars(select(Instance.instance_number).join(Series).where(Series.series_uid == f"{a_study}.1")))
        assert numbers == [1, 2, 3]
        inst = s.scalar(select(Instance).where(Instance.series.has(Series.series_uid == f"{b_study}.1")))
        assert (inst.transfer_syntax_uid, inst.source_ae, inst.tier) == (ExplicitVRLittleEndian, "CT1", "active")
        assert db_archive.store.exists(inst.storage_key)


def test_a_batch_of_jobs_is_indexed_in_one_go(db_archive, tmp_path):
    from archive_core.index.entries import job_from_file
    from archive_core.index.upsert import index_jobs

    study = "1.2.826.0.1.3680043.8.498.30"
    jobs = []
    for i in range(4):
        path = tmp_path / f"{i}.dcm"
        make_ct(study_uid=study, series_uid=f"{study}.{i % 2}", InstanceNumber=i).save_as(path, enforce_file_format=True)
        jobs.append(job_from_file(path, seq=0))
    assert index_jobs(db_archive.sessions, jobs) == {study}
    assert index_jobs(db_archive.sessions, jobs) == {study}  # indexing again changes nothing
    with db_archive.sessions() as s:
        st = s.scalar(select(Study).where(Study.study_uid == study))
        assert (st.num_series, st.num_instances) == (2, 4)
    assert [_count(db_archive, m) for m in (Patient, Study, Series, Instance)] == [1, 1, 2, 4]


def _charset_file(name: str) -> Path:
    return Path(get_charset_files(name)[0])


@pytest.mark.parametrize(
    "source, expected_name",
    [
        (lambda: make_ct(charset="ISO_IR 100", patient_name="Dupont^Hélène"), "Dupont^Hélène"),
        (lambda: make_ct(charset="ISO_IR 192", patient_name="Müller^Zoë=王^小東"), "Müller^Zoë=王^小東"),
        (lambda: _charset_file("chrX1.dcm"), "Wang^XiaoDong=王^小東"),  # ISO_IR 192, from pydicom's files
        (lambda: _charset_file("chrH31.dcm"), "Yamada^Tarou=山田^太郎=やまだ^たろう"),  # ISO 2022 IR 87
        (lambda: _charset_file("chrH32.dcm"), "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"),  # ISO 2022 IR 13 + IR 87
    ],
    ids=["ISO_IR 100", "ISO_IR 192", "chrX1", "chrH31", "chrH32"],
)
def test_the_index_holds_names_decoded_with_the_specific_character_set(db_archive, source, expected_name):
    ingest(db_archive, source())
    with db_archive.sessions() as s:
        assert s.scalar(select(Patient.patient_name)) == expected_name


def test_duplicate_check_reads_the_index(db_archive):
    first = make_ct()
    assert ingest(db_archive, first).seq > 0
    assert ingest(db_archive, first).duplicate  # identical: success, not stored twice
    changed = make_ct(sop_uid=first.SOPInstanceUID, study_uid=first.StudyInstanceUID,
                      series_uid=first.SeriesInstanceUID, PatientName="Autre^Nom")
    with pytest.raises(DuplicateConflict):
        ingest(db_archive, changed)
    assert _count(db_archive, Instance) == 1
    assert len(list(db_archive.store.keys())) == 1


def test_concurrent_audit_records_keep_one_chain(db_archive):
    from archive_core.api import ArchiveFacade
    from archive_core.audit import AuditEvent, verify

    facade = ArchiveFacade(db_archive)
    errors = []

    def write(n: int) -> None:
        try:
            for i in range(10):
                facade.audit_now("study.viewed", actor=f"user{n}", study_uid=f"1.2.3.{i}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with db_archive.sessions() as s:
        report = verify(s)
        assert s.scalar(select(func.count(AuditEvent.id))) == 40
    assert report.ok and report.checked == 40


def _job(ds, seq: int, checksum: str):
    from archive_core.index.entries import Job
    from archive_core.index.identity import Identity

    return Job(seq, Path("unused"), Identity.of(ds), ds, checksum, 100 + seq, ExplicitVRLittleEndian, "CT1", None)


def test_one_batch_keeps_the_newest_name_the_last_copy_and_revives_a_purged_study(db_archive):
    """What the indexer's batch writes (Core statements, not the ORM) on SQLite and PostgreSQL.

    Bad inputs tried in one batch: a patient whose name changes between two of its studies (the
    newest wins, and the patient search finds the new name, not the old one), the same SOP Instance
    UID twice with other content (policy overwrite: one row, the last copy), then the study purged
    (tombstones) and an object of it received again (every level visible again). Indexing the same
    batch again writes nothing: no fact changed, so no patient is queued for a new retention answer.
    """
    from sqlalchemy import text, update

    from archive_core.index.patient_search import search
    from archive_core.index.upsert import index_jobs

    s1, s2 = "1.2.826.0.1.3680043.8.498.40", "1.2.826.0.1.3680043.8.498.41"
    first = make_ct(patient_id="M1", patient_name="MARTIN^PAUL", study_uid=s1, series_uid=f"{s1}.1",
                    sop_uid=f"{s1}.1.1")
    renamed = make_ct(patient_id="M1", patient_name="MARTIN^PIERRE", study_uid=s2, series_uid=f"{s2}.1",
                      sop_uid=f"{s2}.1.1", modality="MR")
    again = make_ct(patient_id="M1", patient_name="MARTIN^PIERRE", study_uid=s2, series_uid=f"{s2}.1",
                    sop_uid=f"{s2}.1.1", modality="MR", InstanceNumber=7)
    batch = [_job(first, 1, "1" * 64), _job(renamed, 2, "2" * 64), _job(again, 3, "3" * 64)]
    assert index_jobs(db_archive.sessions, batch) == {s1, s2}

    def stale() -> int:
        with db_archive.sessions() as s:
            return s.scalar(text("SELECT COUNT(*) FROM retention_stale"))

    with db_archive.sessions() as s:
        assert [m.patient_id for m in search(s, "pierre martin").items] == ["M1"]
        assert search(s, "paul martin").items == ()
        rows = s.execute(select(Instance.checksum_sha256, Instance.instance_number, Instance.size_bytes)
                         .where(Instance.sop_instance_uid == f"{s2}.1.1")).all()
        assert rows == [("3" * 64, 7, 103)]
        counts = dict(s.execute(select(Study.study_uid, Study.num_instances)).all())
        assert counts == {s1: 1, s2: 1}
    queued = stale()
    assert queued > 0  # the new patient, studies and images are queued by the triggers
    assert index_jobs(db_archive.sessions, batch) == {s1, s2}
    assert stale() == queued

    with db_archive.sessions() as s, s.begin():
        now = datetime.now(timezone.utc)
        study_pk, patient_pk = s.execute(select(Study.id, Study.patient_pk).where(Study.study_uid == s1)).one()
        s.execute(update(Study).where(Study.id == study_pk).values(deleted_at=now))
        s.execute(update(Patient).where(Patient.id == patient_pk).values(deleted_at=now))
        s.execute(update(Series).where(Series.study_pk == study_pk).values(deleted_at=now))
        s.execute(update(Instance).where(Instance.sop_instance_uid == f"{s1}.1.1").values(deleted_at=now))
    index_jobs(db_archive.sessions, [_job(first, 4, "1" * 64)])
    with db_archive.sessions() as s:
        assert s.scalar(select(Study.deleted_at).where(Study.study_uid == s1)) is None
        assert s.scalar(select(Patient.deleted_at).where(Patient.patient_id == "M1")) is None
        assert s.scalar(select(Series.deleted_at).where(Series.series_uid == f"{s1}.1")) is None
        assert s.scalar(select(Instance.deleted_at).where(Instance.sop_instance_uid == f"{s1}.1.1")) is None
        assert [m.patient_id for m in search(s, "pierre martin").items] == ["M1"]
