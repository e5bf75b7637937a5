"""The audit trail's hash chain: ``flask --app wsgi audit verify`` passes, then finds a tampered row."""

from __future__ import annotations

from sqlalchemy import text

from archive_core.audit import GENESIS, AuditEvent


def _record(app, n: int) -> None:
    facade = app.extensions["archivage"]
    for i in range(n):
        facade.audit_now("study.viewed", actor="radio", patient_id="PAT1", study_uid=f"1.2.3.{i}",
                         detail={"page": "viewer", "n": i})


def test_records_are_chained(app):
    _record(app, 3)
    with app.extensions["archivage"].new_session() as s:
        events = s.query(AuditEvent).order_by(AuditEvent.id).all()
    assert events[0].prev_hash == GENESIS
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    assert len({e.hash for e in events}) == 3


def test_verify_passes_on_an_intact_chain(app, runner):
    _record(app, 5)
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code == 0, result.output
    assert "audit chain intact: 5 events" in result.output


def test_verify_finds_the_tampered_row(app, runner):
    _record(app, 5)
    facade = app.extensions["archivage"]
    with facade.new_session(write=True) as s:
        # Someone with the database owner's rights disables the append-only guard first.
        s.execute(text("DROP TRIGGER audit_event_no_update"))
        s.execute(text("UPDATE audit_event SET detail = :d WHERE id = 3"), {"d": '{"page": "nothing to see"}'})
        s.commit()
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code == 1
    assert "broken at event 3 (after 2 good events)" in result.output


def test_verify_finds_a_deleted_row(app, runner):
    _record(app, 4)
    with app.extensions["archivage"].new_session(write=True) as s:
        s.execute(text("DROP TRIGGER audit_event_no_delete"))
        s.execute(text("DELETE FROM audit_event WHERE id = 2"))
        s.commit()
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code == 1
    assert "broken at event 3" in result.output
