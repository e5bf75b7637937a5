"""Sending studies to a real DCMTK storescp: background jobs with progress, and the prefetch rule."""

from __future__ import annotations

import socket
import subprocess
import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from tests.helpers import free_port, require_tool, tool_env
from tests.radiology_support import ct_slice, make_history, store


@pytest.fixture
def history(facade):
    return make_history(facade.archive)


def wait_for(condition, timeout=30.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


@pytest.fixture
def workstation(tmp_path, facade):
    """DCMTK's storescp as reading workstation WS1, registered as a peer."""
    from archive_core.peers import add_peer

    storescp = require_tool("storescp")
    out = tmp_path / "ws1"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen([storescp, "--aetitle", "WS1", "+xa", "--output-directory", str(out), str(port)],
                            env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening():
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    assert wait_for(listening, 15), "storescp did not start"
    with facade.new_session(write=True) as s:
        add_peer(s, "WS1", "127.0.0.1", port)
        s.commit()
    yield out
    proc.terminate()
    proc.wait(timeout=10)


def received(folder):
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def test_send_job_delivers_the_study_and_chosen_prior(facade, history, workstation):
    from backoffice.radiology.sending import create_send_job, run_send_job

    with facade.new_session(write=True) as s:
        job_id = create_send_job(s, "WS1", [history.current, history.prior_us_abdomen], requested_by="dr").id
        s.commit()
    job = run_send_job(facade, job_id)
    assert (job.status, job.total, job.sent, job.failed) == ("done", 5, 5, 0)
    assert len(received(workstation)) == 5


def test_send_from_the_study_page_shows_progress(app, facade, history, workstation):
    from backoffice.auth.services import create_user

    with facade.new_session(write=True) as s:
        user = create_user(s, "dr", role="radiologist", password="correct horse battery")
        s.commit()
    client = app.test_client()
    with client.session_transaction() as session:
        session["_user_id"], session["_fresh"] = str(user.id), True
    import re

    page = f"/radiology/studies/{history.current}"
    token = re.search(r'name="csrf_token"[^>]*?value="([^"]+)"', client.get(page).get_data(as_text=True)).group(1)
    response = client.post(f"{page}/send", data={"csrf_token": token, "peer": "WS1", "prior": [history.prior_ct_chest]})
    assert response.status_code == 302
    response.close()  # runs call_on_close: the job starts after the request committed it
    html = client.get(page).get_data(as_text=True)
    job_url = re.search(r'data-job="([^"]+)"', html).group(1)
    assert wait_for(lambda: client.get(job_url).get_json()["status"] in ("done", "failed"), 60)
    job = client.get(job_url).get_json()
    assert (job["status"], job["sent"], job["total"]) == ("done", 5, 5)
    assert len(received(workstation)) == 5


def test_a_workstation_that_is_down_fails_the_job(facade, history):
    from archive_core.peers import add_peer
    from backoffice.radiology.sending import create_send_job, run_send_job

    with facade.new_session(write=True) as s:
        add_peer(s, "DOWN", "127.0.0.1", free_port())
        job_id = create_send_job(s, "DOWN", [history.current], requested_by="dr").id
        s.commit()
    job = run_send_job(facade, job_id)
    assert job.status == "failed" and job.sent == 0 and "DOWN" in job.message


def _set_received(facade, when, study_uid=None):
    from archive_core.index.models import Study

    with facade.new_session(write=True) as s:
        q = update(Study).values(received_at=when)
        s.execute(q.where(Study.study_uid == study_uid) if study_uid else q)
        s.commit()


@pytest.mark.parametrize("max_priors, max_age_years, expected", [
    (2, 5, ["current", "prior_ct_chest"]),
    (1, 5, ["current"]),
    (5, 5, ["current", "prior_ct_chest", "prior_mr_chest"]),
    (5, 4, ["current", "prior_ct_chest"]),  # on 2026-06-01, four years back is 2022-06-01: the 2022-05 MR is too old
])
def test_prefetch_sends_relevant_older_priors_once(facade, history, workstation, max_priors, max_age_years, expected):
    from datetime import datetime, timezone

    from backoffice.radiology.sending import PrefetchRule, prefetch

    clock = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)
    new = ct_slice("1.2.826.0.1.3680043.8.498.77", "1.2.826.0.1.3680043.8.498.78", 1, study_date="20260601",
                   patient_id=history.patient_id, BodyPartExamined="CHEST", StudyDescription="TDM THORAX CONTROLE")
    store(facade.archive, [new])
    _set_received(facade, clock - timedelta(days=3))  # the history arrived days ago ...
    _set_received(facade, clock - timedelta(hours=1), new.StudyInstanceUID)  # ... the new study an hour ago
    rule = PrefetchRule(destinations=("WS1",), max_priors=max_priors, max_age_years=max_age_years)
    jobs = prefetch(facade, rule, now=clock)
    assert len(jobs) == 1 and jobs[0].trigger_study_uid == new.StudyInstanceUID
    assert jobs[0].study_uids.split("\\") == [getattr(history, name) for name in expected]
    assert jobs[0].status == "done" and len(received(workstation)) == jobs[0].sent > 0
    assert prefetch(facade, rule, now=clock) == []  # once
    assert prefetch(facade, rule, now=clock + timedelta(days=2)) == []  # nothing new in the last 24 hours
