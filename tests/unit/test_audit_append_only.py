"""The audit trail is append-only in the database, and its hash chain finds a row changed behind its back."""

from __future__ import annotations

import json
import sqlite3

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from archive_core.db import make_engine, session_factory, write_session


@pytest.fixture
def sessions(database_url):
    from archive_core import audit
    from tests.helpers import migrate

    migrate(database_url)
    engine = make_engine(database_url)
    factory = session_factory(engine)
    with write_session(factory) as s:
        for n in range(3):
            audit.record(s, "hold.placed", actor="gerante", patient_id=f"P{n}", detail={"reason": "réclamation"})
    yield factory
    engine.dispose()


@pytest.mark.parametrize("statement", [
    "UPDATE audit_event SET actor = 'someone else' WHERE id = 2",
    "DELETE FROM audit_event WHERE id = 2",
])
def test_the_database_refuses_to_change_or_delete_events(sessions, statement):
    with pytest.raises(DBAPIError, match="append-only"):
        with write_session(sessions) as s:
            s.execute(text(statement))


def test_the_chain_detects_a_tampered_row(sessions, database_url):
    from archive_core.audit import verify

    with sessions() as s:
        assert verify(s).ok and verify(s).checked == 3
    # Someone with the database owner's rights disables the guard and rewrites history.
    with write_session(sessions) as s:
        if database_url.startswith("sqlite"):
            s.execute(text("DROP TRIGGER audit_event_no_update"))
        else:
            s.execute(text("ALTER TABLE audit_event DISABLE TRIGGER USER"))
        s.execute(text("UPDATE audit_event SET patient_id = 'P9' WHERE id = 2"))
    with sessions() as s:
        report = verify(s)
    assert not report.ok and report.first_bad_id == 2 and report.checked == 1


def test_audit_verify_command_fails_on_a_tampered_chain(app, runner):
    from archive_core.audit import record

    facade = app.extensions["archivage"]
    with facade.new_session(write=True) as s:
        record(s, "death.recorded", actor="gerante", patient_id="P1")
        record(s, "hold.placed", actor="gerante", patient_id="P1")
        s.commit()
    with app.app_context():
        assert runner.invoke(args=["audit", "verify"]).exit_code == 0
    with facade.new_session(write=True) as s:
        s.execute(text("DROP TRIGGER audit_event_no_update"))
        s.execute(text("UPDATE audit_event SET actor = 'x' WHERE action = 'hold.placed'"))
        s.commit()
    with app.app_context():
        result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code == 1 and "broken" in result.output


def test_a_batch_appended_in_one_insert_continues_the_chain_as_single_records_would(sessions):
    """audit.record_many (the C-FIND audit writer's batch) after three single records: one chain that
    verify accepts, in order, with the fields and details given; then a tampered detail in the batch
    (bad input) is found at its row."""
    from archive_core import audit

    batch = [{"action": "dicom.find", "actor": "CT_SALLE1", "actor_kind": "ae", "patient_id": None,
              "detail": {"keys": {"PatientName": f"Dupré{n}*"}, "answers": n}} for n in range(4)]
    with write_session(sessions) as s:
        audit.record_many(s, batch)
        audit.record(s, "hold.placed", actor="gerante", patient_id="P7")  # a single record after the batch
    with sessions() as s:
        report = audit.verify(s)
        events = s.query(audit.AuditEvent).order_by(audit.AuditEvent.id).all()
    assert report.ok and report.checked == 8
    assert [e.action for e in events] == ["hold.placed"] * 3 + ["dicom.find"] * 4 + ["hold.placed"]
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    assert [(e.actor, e.actor_kind) for e in events[3:7]] == [("CT_SALLE1", "ae")] * 4
    assert '"PatientName": "Dupré2*"' in events[5].detail
    with write_session(sessions) as s:
        if s.get_bind().dialect.name == "sqlite":
            s.execute(text("DROP TRIGGER audit_event_no_update"))
        else:
            s.execute(text("ALTER TABLE audit_event DISABLE TRIGGER USER"))
        s.execute(text("UPDATE audit_event SET detail = '{}' WHERE id = 6"))
    with sessions() as s:
        assert audit.verify(s).first_bad_id == 6


def test_append_now_writes_the_row_record_writes_and_continues_the_same_chain(sessions):
    """audit.append_now (facade.audit_now's Core insert, every DICOMweb request) between single records:
    verify accepts the chain, each row holds the fields given (accented detail kept as UTF-8, keys
    sorted as record stores them) and is committed when it returns (read from another session); bad
    input: a misspelt field is a TypeError and writes nothing."""
    from archive_core import audit

    engine = sessions.kw["bind"]
    detail = {"query": "PatientName=Dupré*", "matches": 1}
    audit.append_now(engine, "dicomweb.search", actor="radio", study_uid="1.2.3", detail=detail)
    with write_session(sessions) as s:
        audit.record(s, "dicomweb.search", actor="radio", study_uid="1.2.3", detail=detail)
    audit.append_now(engine, "study.view", actor="share:7", actor_kind="share_link", patient_id="P8")
    with sessions() as s:
        report = audit.verify(s)
        events = s.query(audit.AuditEvent).order_by(audit.AuditEvent.id).all()
    assert report.ok and report.checked == 6
    appended, recorded, shared = events[3:]
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    columns = ("actor", "actor_kind", "action", "patient_id", "study_uid", "detail")
    assert [getattr(appended, c) for c in columns] == [getattr(recorded, c) for c in columns]
    assert appended.detail == '{"matches": 1, "query": "PatientName=Dupré*"}'
    assert (shared.actor, shared.actor_kind, shared.patient_id, shared.study_uid, shared.detail) == (
        "share:7", "share_link", "P8", None, "{}")
    with pytest.raises(TypeError):
        audit.append_now(engine, "dicomweb.search", actor="radio", studyuid="1.2.3")
    with sessions() as s:
        assert s.query(audit.AuditEvent).count() == 6


def test_append_many_now_writes_a_batch_in_order_and_a_failed_batch_writes_nothing(sessions):
    """audit.append_many_now (the queued search records, several per transaction): three events in one
    batch continue the chain in their order, between a record() and an append_now, and verify holds.
    Bad input: a batch whose third event has no actor (NOT NULL) is refused whole: none of its events
    is written and the chain goes on from the event before it."""
    from archive_core import audit

    engine = sessions.kw["bind"]
    with write_session(sessions) as s:
        audit.record(s, "study.view", actor="radio", patient_id="P1")
    batch = [{"action": "dicomweb.search", "actor": "radio", "detail": {"query": f"PatientID=P{n}", "matches": n}}
             for n in range(3)]
    audit.append_many_now(engine, batch)
    # SQLite's driver error as it is (no SQLAlchemy statement runs there); PostgreSQL's through Core.
    with pytest.raises((sqlite3.IntegrityError, IntegrityError), match="actor"):
        audit.append_many_now(engine, batch[:2] + [{"action": "dicomweb.search", "actor": None}])
    audit.append_now(engine, "dicomweb.retrieve", actor="radio", study_uid="1.2.3")
    with sessions() as s:
        report = audit.verify(s)
        events = s.query(audit.AuditEvent).order_by(audit.AuditEvent.id).all()[-5:]
    assert report.ok, report.problems
    assert [e.action for e in events] == ["study.view", "dicomweb.search", "dicomweb.search", "dicomweb.search",
                                          "dicomweb.retrieve"]
    assert [json.loads(e.detail)["matches"] for e in events[1:4]] == [0, 1, 2]
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
