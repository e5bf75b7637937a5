"""Arranging retention scenarios: patients with studies on given dates, users with tokens."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import make_ct


def add_study(archive, tmp_path: Path, patient_id: str, study_date: str, *, birth_date: str | None = "19700101",
              images: int = 2, external: bool = False, modality: str = "CT", patient_name: str = "Dupont^Jean") -> str:
    """Store a study of *images* instances through the import path; return its Study UID."""
    from pydicom.uid import generate_uid

    from archive_core.maintenance import import_path

    folder = tmp_path / f"in-{generate_uid()}"
    folder.mkdir()
    study_uid, series_uid = generate_uid(), generate_uid()
    for n in range(images):
        ds = make_ct(patient_id=patient_id, study_uid=study_uid, series_uid=series_uid, study_date=study_date,
                     modality=modality, patient_name=patient_name, InstanceNumber=n + 1)
        if birth_date is None:
            del ds.PatientBirthDate
        else:
            ds.PatientBirthDate = birth_date
        ds.save_as(folder / f"{n}.dcm", enforce_file_format=True)
    report = import_path(archive, folder, external=external)
    assert report.stored == images, report
    return study_uid


def add_patients_in_bulk(facade, count: int, *, study_date: str) -> None:
    """*count* patients P000, P001... (born 1 January 1970), each with one CT study of *study_date*,
    written in two bulk inserts as an index import writes them (the retention triggers queue them)."""
    from datetime import datetime, timezone

    from sqlalchemy import insert

    from archive_core.index.models import Patient, Study

    now = datetime(2026, 11, 28, tzinfo=timezone.utc)
    with facade.new_session(write=True) as s:
        s.execute(insert(Patient), [{"id": 1000 + i, "patient_id": f"P{i:03d}", "issuer_of_patient_id": "",
                                     "patient_name": f"Nom{i:03d}^Prénom", "patient_birth_date": "19700101",
                                     "created_at": now} for i in range(count)])
        s.execute(insert(Study), [{"id": 1000 + i, "study_uid": f"1.2.3.{i}", "patient_pk": 1000 + i,
                                   "study_date": study_date, "modalities_in_study": "CT", "external": False,
                                   "received_at": now} for i in range(count)])
        s.commit()


def make_user(app, login: str, role: str) -> str:
    """Create a user and return a bearer token."""
    from backoffice.auth.services import create_token, create_user

    facade = app.extensions["archivage"]
    with facade.new_session(write=True) as s:
        create_user(s, login, role=role, password="correct horse battery")
        token = create_token(s, login)
        s.commit()
    return token


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def instance_files(archive, study_uid: str) -> list[str]:
    """Every stored object of a study, in either tier (``tier:key``, listed by the store: a folder or a bucket)."""
    return [f"{tier}:{key}" for tier in ("active", "archive") for key in archive.store_for(tier).keys()
            if study_uid in key and key.endswith(".dcm")]


def read_object(archive, entry: str) -> bytes:
    """The bytes of one entry of :func:`instance_files`."""
    tier, key = entry.split(":", 1)
    return archive.store_for(tier).read_bytes(key)


def sign_in(client, app, login: str, role: str) -> None:
    """Create a user and make *client* its signed-in browser session (as the login form would)."""
    from sqlalchemy import select

    from backoffice.auth.models import User

    make_user(app, login, role)
    with app.extensions["archivage"].new_session() as s:
        user_id = s.scalar(select(User.id).where(User.login == login))
    with client.session_transaction() as session:
        session["_user_id"] = str(user_id)
        session["_fresh"] = True
