"""C-FIND audit events are written off the answer path, yet none is lost once the association is released.

The archive runs as ``archive serve`` (a child process) and is killed with ``kill -9`` the moment the
peer has its A-RELEASE answer: every query of that association must already be in the audit trail.
"""

from __future__ import annotations

import json
import sqlite3

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

CALLING = "WORKSTATION"


def _identifier(**keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _find_events(instance_path) -> list[tuple[str, dict]]:
    with sqlite3.connect(instance_path / "archivage.sqlite3") as db:
        rows = db.execute("SELECT actor, detail FROM audit_event WHERE action = 'dicom.find' ORDER BY id").fetchall()
    return [(actor, json.loads(detail)) for actor, detail in rows]


def test_queries_are_in_the_audit_trail_when_the_peer_sees_the_release_even_after_kill_9(archive_process):
    """Five queries on one association, released, then ``kill -9`` at once (bad input: a crash right
    after the last answer): the five dicom.find events are there after the crash, in order, with
    their keys and answer counts. Events written only when the connection closes (after the release
    answer) would be lost."""
    done = archive_process.cli("peers", "add", CALLING, "127.0.0.1", "104")
    assert done.returncode == 0, done.stderr
    ae = AE(ae_title=CALLING)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", archive_process.port, ae_title="ARCHIVAGE")
    assert assoc.is_established
    names = [f"NOBODY{n}*" for n in range(5)]
    try:
        for name in names:
            statuses = [s.Status for s, _ in assoc.send_c_find(_identifier(PatientName=name),
                                                                StudyRootQueryRetrieveInformationModelFind)]
            assert statuses == [0x0000]
    finally:
        assoc.release()
    archive_process.kill()

    events = _find_events(archive_process.instance_path)
    assert [actor for actor, _ in events] == [CALLING] * 5
    assert [d["keys"] for _, d in events] == [{"PatientName": name} for name in names]
    assert [d["answers"] for _, d in events] == [0] * 5

