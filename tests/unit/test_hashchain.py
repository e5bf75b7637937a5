"""The audit trail and the payment journal share archive_core.hashchain; their stored chains still verify.

The expected hashes below were computed with the formulas the two modules used before they shared
the helper (sha256 of the previous hash + compact JSON; the audit trail without ASCII escapes,
the payment journal with them), on values with accents and a naive datetime as SQLite returns one.
A helper that changed a separator, the escaping or the order of the fields fails here.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from types import SimpleNamespace

from archive_core import audit
from archive_core.hashchain import GENESIS, holds, link_hash
from backoffice.billing import services as billing

AUDIT_1 = "0cf534517c4b56166f00c97f27e87cf6a03874bc939271d4be0255112a05e1f0"
AUDIT_2 = "2a8f7d00300848122f77e74c737929249c79586f3297cb00e53765bf879c5a40"
PAYMENT_1 = "d2e028f6c079dccb5a807e5ba8e17ef691f2d41ee61ba06c410290bb86258963"
PAYMENT_2 = "b67f6bbfdbf4e2ae649317c3a9e8f8108e38238a507e4458d651b98896e2410e"


def _events():
    return [
        audit.AuditEvent(at="2026-12-01T14:56:02.123456+00:00", actor="dr.dupré", actor_kind="user",
                         action="study.view", patient_id="PAT-ÉLÉ", study_uid="1.2.3", detail='{"note": "échographie"}'),
        audit.AuditEvent(at="2026-12-01T15:00:00.000000+00:00", actor="STORESCU", actor_kind="ae",
                         action="dicom.store", patient_id=None, study_uid="1.2.4", detail="{}"),
    ]


def _payments():
    return [
        billing.Payment(invoice_id=1, amount_cents=2500, method="cash", payer="patient", credit_note_id=None,
                        received_at=datetime(2026, 12, 1, 9, 30, tzinfo=timezone.utc), received_by="accueil.zoé",
                        paris_day=date(2026, 12, 1)),
        # naive: SQLite gives stored UTC instants back without their zone
        billing.Payment(invoice_id=1, amount_cents=-500, method="cheque", payer="patient", credit_note_id=3,
                        received_at=datetime(2026, 12, 1, 23, 30), received_by="accueil",
                        paris_day=date(2026, 12, 2)),
    ]


def _chain(entries, digest):
    prev, hashes = GENESIS, []
    for entry in entries:
        entry.prev_hash = prev
        entry.hash = prev = digest(prev, entry)
        hashes.append(prev)
    return hashes


def test_audit_chain_is_byte_identical_to_the_stored_format():
    assert _chain(_events(), audit._digest) == [AUDIT_1, AUDIT_2]


def test_payment_chain_is_byte_identical_to_the_stored_format():
    assert _chain(_payments(), billing._payment_digest) == [PAYMENT_1, PAYMENT_2]


def test_the_escaping_is_part_of_the_format():
    """Same fields, other escaping: another hash (the audit trail and the journal must not swap it)."""
    fields = ["dr.dupré", 1]
    assert link_hash(GENESIS, fields, ensure_ascii=False) != link_hash(GENESIS, fields, ensure_ascii=True)
    assert link_hash(GENESIS, ["dr.dupre", 1], ensure_ascii=False) == link_hash(GENESIS, ["dr.dupre", 1],
                                                                                ensure_ascii=True)


def test_holds_finds_an_edited_entry_and_a_broken_link():
    events = _events()
    _chain(events, audit._digest)
    assert holds(GENESIS, events[0], audit._digest) and holds(AUDIT_1, events[1], audit._digest)
    events[1].detail = '{"changed": true}'   # edited after the fact
    assert not holds(AUDIT_1, events[1], audit._digest)
    link = SimpleNamespace(prev_hash="f" * 64, hash=AUDIT_2)   # the entry before it was removed
    assert not holds(AUDIT_1, link, lambda prev, entry: AUDIT_2)
