"""Corrections: a study moved to the right patient, duplicates merged, a study sent by mistake destroyed on approval."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.helpers import STORAGE_BACKENDS
from tests.retention_support import add_study, bearer, instance_files, make_user, read_object

# Corrections rewrite stored objects: on a local folder and on an S3-compatible server.
pytestmark = STORAGE_BACKENDS


@pytest.fixture
def manager(app):
    return bearer(make_user(app, "gerante", "manager"))


@pytest.fixture
def second(app):
    """Another manager: the one who approves and executes what *manager* requested (four eyes)."""
    return bearer(make_user(app, "associe", "manager"))


def _studies_of(facade, patient_id):
    from archive_core.index.models import Patient, Study

    with facade.new_session() as s:
        return set(s.scalars(select(Study.study_uid).join(Patient).where(
            Patient.patient_id == patient_id, Patient.deleted_at.is_(None), Study.deleted_at.is_(None))))


def _actions(facade):
    from archive_core.audit import AuditEvent

    with facade.new_session() as s:
        return list(s.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


def test_move_a_study_to_the_right_patient(client, manager, facade, tmp_path):
    wrong = add_study(facade.archive, tmp_path, "P-WRONG", "20240101")
    add_study(facade.archive, tmp_path, "P-RIGHT", "20200101")
    response = client.post(f"/api/v1/studies/{wrong}/move", json={"patient_id": "P-RIGHT", "reason": "erreur d'accueil"},
                           headers=manager)
    assert response.status_code == 200
    assert wrong in _studies_of(facade, "P-RIGHT") and wrong not in _studies_of(facade, "P-WRONG")
    # The moved study is now P-RIGHT's last visit.
    assert client.get("/api/v1/patients/P-RIGHT/retention", headers=manager).get_json()["keep_until"] == "2044-01-01"
    assert "correction.study_moved" in _actions(facade)


def test_move_needs_a_reason(client, manager, facade, tmp_path):
    study = add_study(facade.archive, tmp_path, "P-WRONG", "20240101")
    add_study(facade.archive, tmp_path, "P-RIGHT", "20200101")
    assert client.post(f"/api/v1/studies/{study}/move", json={"patient_id": "P-RIGHT"}, headers=manager).status_code == 400


def test_merge_duplicate_patients(client, manager, facade, tmp_path):
    a = add_study(facade.archive, tmp_path, "DUP-1", "20240101")
    b = add_study(facade.archive, tmp_path, "DUP-2", "20200101")
    client.post("/api/v1/retention/holds", json={"patient_id": "DUP-1", "reason": "litige"}, headers=manager)
    response = client.post("/api/v1/patients/DUP-1/merge", json={"into_patient_id": "DUP-2", "reason": "doublon"},
                           headers=manager)
    assert response.status_code == 200 and response.get_json()["studies_moved"] == 1
    assert _studies_of(facade, "DUP-2") == {a, b}
    assert client.get("/api/v1/patients/DUP-1/retention", headers=manager).status_code == 404
    assert client.get("/api/v1/patients/DUP-2/retention", headers=manager).get_json()["on_hold"] is True
    # A new study sent under the merged identifier is filed under the survivor.
    c = add_study(facade.archive, tmp_path, "DUP-1", "20250101")
    assert c in _studies_of(facade, "DUP-2")


def test_a_study_sent_by_mistake_goes_through_approval(client, manager, second, facade, tmp_path):
    keep = add_study(facade.archive, tmp_path, "P-TEST", "20240101")
    mistake = add_study(facade.archive, tmp_path, "P-TEST", "20240102")
    response = client.post(f"/api/v1/studies/{mistake}/deletion-requests", json={"reason": "examen de test"},
                           headers=manager)
    assert response.status_code == 201
    batch_id = response.get_json()["id"]
    # Requested is not deleted: execution is refused until a manager approves.
    assert client.post(f"/api/v1/retention/batches/{batch_id}/execute", headers=manager).status_code == 409
    assert len(instance_files(facade.archive, mistake)) == 2
    assert client.post(f"/api/v1/retention/batches/{batch_id}/approve", json={"reason": "confirmé"},
                       headers=second).status_code == 200
    assert client.post(f"/api/v1/retention/batches/{batch_id}/execute", headers=second).get_json()["status"] == "executed"
    assert instance_files(facade.archive, mistake) == []
    assert len(instance_files(facade.archive, keep)) == 2
    assert _studies_of(facade, "P-TEST") == {keep}
    assert client.post(f"/api/v1/studies/{mistake}/deletion-requests", json={"reason": "encore"},
                       headers=manager).status_code == 404


def test_a_study_of_a_patient_on_hold_is_not_destroyed(client, manager, second, facade, tmp_path):
    mistake = add_study(facade.archive, tmp_path, "P-HOLD", "20240102")
    batch_id = client.post(f"/api/v1/studies/{mistake}/deletion-requests", json={"reason": "test"},
                           headers=manager).get_json()["id"]
    assert client.post(f"/api/v1/retention/batches/{batch_id}/approve", json={"reason": "ok"},
                       headers=second).status_code == 200
    client.post("/api/v1/retention/holds", json={"patient_id": "P-HOLD", "reason": "litige"}, headers=manager)
    response = client.post(f"/api/v1/retention/batches/{batch_id}/execute", headers=second)
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "changed_since_approval"
    # Sent back for a new decision, and a study of a patient on hold cannot be approved again.
    assert client.get(f"/api/v1/retention/batches/{batch_id}", headers=second).get_json()["status"] == "proposed"
    response = client.post(f"/api/v1/retention/batches/{batch_id}/approve", json={"reason": "ok"}, headers=second)
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "on_hold"
    assert len(instance_files(facade.archive, mistake)) == 2


def _identity_on_file(facade, study_uid):
    """The Patient module of each stored file of a study, as the facade hands it out."""
    from io import BytesIO

    from pydicom import dcmread

    out = []
    with facade.new_session() as s:
        refs = facade.study_instances(s, study_uid)
    for ref in refs:
        ds = dcmread(BytesIO(facade.read_instance(ref.sop_instance_uid)))
        out.append((str(ds.PatientName), ds.PatientID, ds.get("IssuerOfPatientID"), ds.PatientBirthDate,
                    ds.PatientSex, ds))
    return out


def _fsck_problems(facade):
    from archive_core.maintenance import fsck

    return fsck(facade.archive).problems


def _set_identity(facade, patient_id, **columns):
    from archive_core.index.models import Patient

    with facade.new_session(write=True) as s:
        patient = s.scalar(select(Patient).where(Patient.patient_id == patient_id))
        for column, value in columns.items():
            setattr(patient, column, value)
        s.commit()


@pytest.mark.parametrize("tier", ["active", "archive"])
def test_a_moved_study_s_files_carry_the_right_patient(client, manager, facade, tmp_path, tier):
    wrong = add_study(facade.archive, tmp_path, "P-WRONG", "20240101", birth_date="19700101")
    add_study(facade.archive, tmp_path, "P-RIGHT", "20200101", birth_date="19851224")
    _set_identity(facade, "P-RIGHT", patient_name="DURAND^Hélène", patient_sex="F", issuer_of_patient_id="")
    if tier == "archive":
        from archive_core.index.models import Patient

        with facade.new_session() as s:
            pk = s.scalar(select(Patient.id).where(Patient.patient_id == "P-WRONG"))
        assert facade.move_patient_to_archive(pk).instances == 2
    before = {str(p) for p in instance_files(facade.archive, wrong)}
    response = client.post(f"/api/v1/studies/{wrong}/move", json={"patient_id": "P-RIGHT", "reason": "erreur d'accueil"},
                           headers=manager)
    assert response.status_code == 200
    files = _identity_on_file(facade, wrong)
    assert len(files) == 2
    for name, patient_id, issuer, birth, sex, ds in files:
        assert (name, patient_id, issuer, birth, sex) == ("DURAND^Hélène", "P-RIGHT", None, "19851224", "F")
        original = ds.OriginalAttributesSequence[-1]
        assert original.ReasonForTheAttributeModification == "CORRECT"
        assert original.ModifiedAttributesSequence[0].PatientID == "P-WRONG"
        assert original.ModifiedAttributesSequence[0].PatientBirthDate == "19700101"
    # The replaced files are gone, the new ones live in the same tier, and the index agrees with them.
    after = {str(p) for p in instance_files(facade.archive, wrong)}
    assert not before & after and len(after) == 2
    assert all(p.startswith(f"{tier}:") for p in after)
    assert _fsck_problems(facade) == 0


def test_a_move_that_rolls_back_leaves_the_files_as_they_were(facade, tmp_path):
    wrong = add_study(facade.archive, tmp_path, "P-WRONG", "20240101")
    add_study(facade.archive, tmp_path, "P-RIGHT", "20200101")
    before = {p: read_object(facade.archive, p) for p in instance_files(facade.archive, wrong)}
    with facade.new_session(write=True) as s:
        facade.move_study(s, wrong, "P-RIGHT")
        assert len(instance_files(facade.archive, wrong)) == 4  # old and new until the outcome is known
        s.rollback()
    assert {p: read_object(facade.archive, p) for p in instance_files(facade.archive, wrong)} == before
    assert [f[1] for f in _identity_on_file(facade, wrong)] == ["P-WRONG", "P-WRONG"]
    assert _fsck_problems(facade) == 0


def test_merged_patients_files_carry_the_survivor_s_identity(client, manager, facade, tmp_path):
    a = add_study(facade.archive, tmp_path, "DUP-1", "20240101")
    add_study(facade.archive, tmp_path, "DUP-2", "20200101")
    assert client.post("/api/v1/patients/DUP-1/merge", json={"into_patient_id": "DUP-2", "reason": "doublon"},
                       headers=manager).status_code == 200
    assert [f[1] for f in _identity_on_file(facade, a)] == ["DUP-2", "DUP-2"]
    assert _fsck_problems(facade) == 0


def test_fsck_repair_quarantines_a_file_a_crash_left_behind_after_a_move(client, manager, facade, tmp_path):
    from archive_core.maintenance import fsck

    wrong = add_study(facade.archive, tmp_path, "P-WRONG", "20240101")
    add_study(facade.archive, tmp_path, "P-RIGHT", "20200101")
    old = {p: read_object(facade.archive, p) for p in instance_files(facade.archive, wrong)}
    assert client.post(f"/api/v1/studies/{wrong}/move", json={"patient_id": "P-RIGHT", "reason": "erreur"},
                       headers=manager).status_code == 200
    for entry, data in old.items():  # as if the process died before deleting the replaced files
        tier, key = entry.split(":", 1)
        facade.archive.store_for(tier).put_bytes(key, data)
    assert len(fsck(facade.archive).orphan_files) == 2
    repaired = fsck(facade.archive, repair=True)
    assert sum("superseded" in line for line in repaired.repaired) == 2
    assert fsck(facade.archive).problems == 0
    assert [f[1] for f in _identity_on_file(facade, wrong)] == ["P-RIGHT", "P-RIGHT"]
