"""Gapless invoice numbering: twenty desks issue at the same moment against a running server."""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
import pytest

from tests.servers import web_process

ISSUERS = 20


def _call(method: str, url: str, token: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture
def server(database_url, tmp_path):
    """``flask --app wsgi web`` (waitress) on a migrated database, with a front-desk token."""
    from archive_core.db import make_engine, session_factory
    from backoffice.auth.services import create_token, create_user
    from backoffice.billing import services as S
    from tests.helpers import migrate

    instance = tmp_path / "instance"
    instance.mkdir()
    migrate(database_url)
    engine = make_engine(database_url)
    with session_factory(engine)() as s:
        create_user(s, "desk", role="front_desk", password="correct horse battery")
        token = create_token(s, "desk")
        groups = [S.create_exam_group(s, patient_id=f"P{n:02d}", visit_date=S.paris_today(), exam_group="echographie",
                                      created_by="desk").id for n in range(ISSUERS)]
        s.commit()
    engine.dispose()
    env = {**os.environ, "ARCHIVAGE_INSTANCE_PATH": str(instance), "ARCHIVAGE_DATABASE_URL": database_url,
           "ARCHIVAGE_STORAGE_MIN_FREE_BYTES": "0"}
    with web_process(env, tmp_path / "web.log") as url:
        yield f"{url}/api/v1", token, groups, tmp_path / "web.log"


def test_twenty_simultaneous_issuers_get_consecutive_numbers(server):
    base, token, groups, log = server
    barrier = threading.Barrier(ISSUERS)
    results: list[tuple[int, dict]] = []
    lock = threading.Lock()

    def issue(group_id: int) -> None:
        barrier.wait(timeout=30)
        outcome = _call("POST", f"{base}/invoices", token, {"exam_group_id": group_id})
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=issue, args=(g,)) for g in groups]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [status for status, _ in results] == [201] * ISSUERS, results
    numbers = sorted(body["number"] for _, body in results)
    from backoffice.billing import services as S

    year = S.paris_today().year  # the practice's year (Paris): at 23:30 UTC on 31 December, already the next
    assert numbers == [f"{year}-{n:06d}" for n in range(1, ISSUERS + 1)]  # no gap, no duplicate
    # Chronological: a later number never carries an earlier issue time.
    by_number = sorted((body["number"], body["issued_at"]) for _, body in results)
    times = [t for _n, t in by_number]
    assert times == sorted(times)
    assert "Traceback" not in log.read_text()  # the PDFs rendered after commit did not fail either


def test_twenty_simultaneous_payments_keep_the_journal_chained(server, database_url):
    from archive_core.db import make_engine, session_factory
    from backoffice.billing import services as S

    base, token, groups, _log = server
    invoices = [_call("POST", f"{base}/invoices", token, {"exam_group_id": g})[1]["id"] for g in groups]
    barrier = threading.Barrier(ISSUERS)
    statuses: list[int] = []

    def pay(invoice_id: int) -> None:
        barrier.wait(timeout=30)
        statuses.append(_call("POST", f"{base}/invoices/{invoice_id}/payments", token,
                              {"amount_cents": 400, "method": "card"})[0])

    threads = [threading.Thread(target=pay, args=(i,)) for i in invoices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert statuses == [201] * ISSUERS
    engine = make_engine(database_url)
    with session_factory(engine)() as s:
        report = S.verify_journal(s)
    engine.dispose()
    assert report.ok and report.checked == ISSUERS
