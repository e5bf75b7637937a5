"""Web benchmark of billing: issue + pay through the API, the receipt PDF, and the front-desk lists
with 100,000 invoices in the database; the manager's dashboard and retention pages with 100,000
patients (one study, series and image each). Not a test: prints p50/p95 in milliseconds.

    .venv/bin/python bench/web.py [--invoices 100000] [--patients 100000] [--rounds 100] [--database-url URL]
                                  [--manager-only] [--cache DIR]

With ``--cache DIR`` (SQLite only) the seeded database is kept in DIR (one file per size) and copied
for the next run with the same sizes instead of seeding again.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import report_ms  # noqa: E402


def seed_patients(url: str, patients: int) -> None:
    """*patients* patients with one study, series and image each, visits spread over 25 years, a manager user."""
    from sqlalchemy import insert

    from archive_core.db import make_engine, session_factory
    from archive_core.index.models import Instance, Patient, Series, Study
    from backoffice.auth.services import create_user

    engine = make_engine(url)
    factory = session_factory(engine)
    with factory() as s:
        create_user(s, "bench_manager", role="manager", password="bench password 123")
        s.commit()
    now = datetime.now(timezone.utc)
    modalities = ("CT", "MR", "US", "DX", "MG")
    batch = 5000
    for offset in range(0, patients, batch):
        n = min(batch, patients - offset)
        ids = range(offset + 1, offset + n + 1)
        day = {i: (now - timedelta(days=(i * 37) % 9125)).strftime("%Y%m%d") for i in ids}
        with factory() as s:
            s.execute(insert(Patient), [
                {"id": i, "patient_id": f"P{i:07d}", "issuer_of_patient_id": "", "patient_name": f"Bench^Patient{i}",
                 "patient_name_search": f"BENCH PATIENT{i}", "patient_birth_date": f"{1930 + i % 90}0101",
                 "created_at": now} for i in ids])
            s.execute(insert(Study), [
                {"id": i, "study_uid": f"1.2.826.0.1.3680043.10.1.{i}", "patient_pk": i, "study_date": day[i],
                 "modalities_in_study": modalities[i % 5], "num_series": 1, "num_instances": 1, "external": False,
                 "received_at": now - timedelta(days=(i * 37) % 9125)} for i in ids])
            s.execute(insert(Series), [
                {"id": i, "series_uid": f"1.2.826.0.1.3680043.10.2.{i}", "study_pk": i, "modality": modalities[i % 5],
                 "num_instances": 1} for i in ids])
            s.execute(insert(Instance), [
                {"id": i, "sop_instance_uid": f"1.2.826.0.1.3680043.10.3.{i}", "series_pk": i,
                 "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                 "size_bytes": 500_000 + i % 1000, "checksum_sha256": "0" * 64, "storage_key": f"bench/{i}",
                 "tier": "archive" if (i * 37) % 9125 > 1826 else "active",
                 "received_at": now - timedelta(days=(i * 37) % 9125)} for i in ids])
            s.commit()
    with factory() as s:
        if engine.dialect.name == "postgresql":
            from sqlalchemy import text

            for table in ("patient", "study", "series", "instance"):
                s.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                               f"(SELECT COALESCE(MAX(id), 1) FROM {table}))"))
            s.commit()
    engine.dispose()


def arrive(url: str, pk: int) -> None:
    """One new patient with a study, series and image received now (as the archive would write them)."""
    from sqlalchemy import create_engine, insert

    from archive_core.index.models import Instance, Patient, Series, Study

    now = datetime.now(timezone.utc)
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(insert(Patient).values(id=pk, patient_id=f"N{pk:07d}", issuer_of_patient_id="",
                                         patient_name=f"New^Patient{pk}", patient_name_search=f"NEW PATIENT{pk}",
                                         patient_birth_date="19800101", created_at=now))
        c.execute(insert(Study).values(id=pk, study_uid=f"1.2.826.0.1.3680043.10.1.{pk}", patient_pk=pk,
                                       study_date=now.strftime("%Y%m%d"), modalities_in_study="CT", num_series=1,
                                       num_instances=1, external=False, received_at=now))
        c.execute(insert(Series).values(id=pk, series_uid=f"1.2.826.0.1.3680043.10.2.{pk}", study_pk=pk,
                                        modality="CT", num_instances=1))
        c.execute(insert(Instance).values(id=pk, sop_instance_uid=f"1.2.826.0.1.3680043.10.3.{pk}", series_pk=pk,
                                          sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                                          transfer_syntax_uid="1.2.840.10008.1.2.1", size_bytes=500_000,
                                          checksum_sha256="0" * 64, storage_key=f"bench/{pk}", tier="active",
                                          received_at=now))
    engine.dispose()


def new_exam_group(url: str, n: int) -> None:
    """One exam group checked in today (billing's figures change)."""
    from archive_core.db import make_engine, session_factory
    from backoffice.billing import services as S

    engine = make_engine(url)
    with session_factory(engine)() as s:
        S.create_exam_group(s, patient_id=f"C{n:05d}", visit_date=S.paris_today(), exam_group="echographie",
                            created_by="bench", patient_name="Durand^Marie")
        s.commit()
    engine.dispose()


def sign_in_page(port: int, login: str) -> "Client":
    page = Client(port)
    status, body = page.request("GET", "/login")
    csrf = re.search(rb'name="csrf_token" type="hidden" value="([^"]+)"', body)
    csrf = csrf or re.search(rb'value="([^"]+)"[^>]*name="csrf_token"', body)
    form = urlencode({"csrf_token": csrf.group(1).decode(), "login": login,
                      "password": "bench password 123"}).encode()
    status, _ = page.request("POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 302, status
    return page


def seed(url: str, invoices: int, rounds: int) -> tuple[str, list[int], str]:
    """Migrate, create a front-desk user and token, *invoices* old invoices (bulk) and *rounds* open groups."""
    from sqlalchemy import insert, text

    from archive_core.db import make_engine, session_factory
    from backoffice.auth.services import create_token, create_user
    from backoffice.billing import services as S
    from backoffice.billing.models import ExamGroup, Invoice, InvoiceLine, NumberCounter
    from backoffice.migrate import upgrade

    upgrade(url)
    engine = make_engine(url)
    factory = session_factory(engine)
    today = S.paris_today()
    with factory() as s:
        create_user(s, "bench", role="front_desk", password="bench password 123")
        token = create_token(s, "bench")
        s.commit()
    batch = 5000
    start = datetime(today.year, 1, 1, 8, tzinfo=timezone.utc)
    series = str(today.year)
    for offset in range(0, invoices, batch):
        n = min(batch, invoices - offset)
        with factory() as s:
            first_group = offset + 1
            s.execute(insert(ExamGroup), [
                {"id": first_group + i, "patient_id": f"B{offset + i:07d}",
                 "visit_date": today - timedelta(days=1 + (offset + i) % 300),
                 "exam_group": "radiologie", "patient_name": "Bench^Patient", "consent": "accepted",
                 "created_by": "bench", "created_at": start} for i in range(n)])
            s.execute(insert(Invoice), [
                {"id": first_group + i, "number": f"{series}-{offset + i + 1:06d}", "series": series,
                 "sequence": offset + i + 1, "group_id": first_group + i,
                 "issued_at": start + timedelta(seconds=offset + i), "issued_by": "bench",
                 "patient_id": f"B{offset + i:07d}", "patient_name": "Bench^Patient",
                 "visit_date": today - timedelta(days=1 + (offset + i) % 300), "exam_group": "radiologie",
                 "exam_group_label": "Radiologie conventionnelle", "total_cents": 300, "insurer_cents": 0,
                 "patient_cents": 300, "third_party_payment": False} for i in range(n)])
            s.execute(insert(InvoiceLine), [
                {"invoice_id": first_group + i, "label": "Archivage des images — Radiologie conventionnelle",
                 "amount_cents": 300} for i in range(n)])
            s.commit()
    with factory() as s:
        if engine.dialect.name == "postgresql":  # explicit ids did not advance the sequences
            for table in ("billing_exam_group", "billing_invoice"):
                s.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                               f"(SELECT COALESCE(MAX(id), 1) FROM {table}))"))
        if invoices:
            s.add(NumberCounter(series=series, last_value=invoices))
        groups = [S.create_exam_group(s, patient_id=f"T{i:05d}", visit_date=today, exam_group="echographie",
                                      created_by="bench", patient_name="Durand^Marie").id for i in range(rounds)]
        s.commit()
    engine.dispose()
    return token, groups, today.isoformat()


class Client:
    def __init__(self, port: int, token: str | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.cookie = ""

    def request(self, method: str, path: str, body: dict | bytes | None = None, headers: dict | None = None):
        h = {**self.headers, **(headers or {})}
        if self.cookie:
            h["Cookie"] = self.cookie
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        if isinstance(body, dict):
            h["Content-Type"] = "application/json"
        self.conn.request(method, path, body=data, headers=h)
        response = self.conn.getresponse()
        payload = response.read()
        cookie = response.getheader("Set-Cookie")
        if cookie:
            self.cookie = cookie.split(";", 1)[0]
        return response.status, payload


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000




def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--invoices", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--database-url")
    parser.add_argument("--manager-only", action="store_true", help="only the manager's pages (no invoice issued)")
    parser.add_argument("--cache", type=Path, help="keep the seeded SQLite database here and reuse it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="archivage-bench-") as tmp:
        instance = Path(tmp) / "instance"
        instance.mkdir()
        database = instance / "archivage.sqlite3"
        url = args.database_url or f"sqlite:///{database}"
        rounds = 0 if args.manager_only else args.rounds
        cached = None
        if args.cache is not None and not args.database_url:
            args.cache.mkdir(parents=True, exist_ok=True)
            cached = args.cache / f"bench-{args.invoices}-{args.patients}-{rounds}.sqlite3"
        t0 = time.perf_counter()
        if cached is not None and cached.exists():
            shutil.copyfile(cached, database)
            token, groups, today = json.loads(cached.with_suffix(".json").read_text())
            from backoffice.migrate import upgrade

            upgrade(url)  # a migration added since the database was cached
            print(f"reused {cached} in {time.perf_counter() - t0:.1f} s")
        else:
            token, groups, today = seed(url, args.invoices, rounds)
            seed_patients(url, args.patients)
            print(f"seeded {args.invoices} invoices and {args.patients} patients in {time.perf_counter() - t0:.1f} s "
                  f"({url.split(':')[0]})")
            if cached is not None:
                shutil.copyfile(database, cached)
                cached.with_suffix(".json").write_text(json.dumps([token, groups, today]))
        from tests.helpers import free_port

        port = free_port()
        env = {**os.environ, "ARCHIVAGE_INSTANCE_PATH": str(instance), "ARCHIVAGE_DATABASE_URL": url,
               "ARCHIVAGE_LOG_LEVEL": "WARNING"}
        server = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "web", "--port", str(port)],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        try:
            api = Client(port, token)
            for _ in range(300):
                try:
                    if api.request("GET", "/api/v1/openapi.json")[0] == 200:
                        break
                except OSError:
                    api = Client(port, token)
                    time.sleep(0.1)
            manager = sign_in_page(port, "bench_manager")
            first = {}
            for path in ("/dashboard", "/retention/", "/retention/patients?list=due&days=30", "/retention/sweep"):
                # The first retention load decides every patient the bulk seeding queued (once).
                t_first = time.perf_counter()
                status, body = manager.request("GET", path)
                first[path] = (time.perf_counter() - t_first) * 1000
                assert status == 200, (path, status, body[:300])
            dashboard, retention, due_list, all_page, sweep_page = [], [], [], [], []
            for _ in range(args.rounds):
                dashboard.append(timed(lambda: manager.request("GET", "/dashboard")))
            # The dashboard after a change: a new image (the archive's figures) or a new exam group (billing's)
            # is written by another process before each load; the figures it changes are computed again.
            after_image, after_group = [], []
            for n in range(max(args.rounds // 5, 5)):
                arrive(url, args.patients + 1 + n)
                after_image.append(timed(lambda: manager.request("GET", "/dashboard")))
                new_exam_group(url, n)
                after_group.append(timed(lambda: manager.request("GET", "/dashboard")))
            for _ in range(args.rounds):
                retention.append(timed(lambda: manager.request("GET", "/retention/")))
                due_list.append(timed(lambda: manager.request("GET", "/retention/patients?list=due&days=30")))
                all_page.append(timed(lambda: manager.request("GET", "/retention/patients?list=all&page=200")))
                sweep_page.append(timed(lambda: manager.request("GET", "/retention/sweep")))
            if not args.manager_only:
                issue_pay, issue_only, receipts, invoice_ids = [], [], [], []
                for group_id in groups:
                    def issue_and_pay():
                        status, body = api.request("POST", "/api/v1/invoices", {"exam_group_id": group_id})
                        assert status == 201, body
                        invoice = json.loads(body)
                        invoice_ids.append(invoice["id"])
                        issue_only.append((time.perf_counter() - t_start) * 1000)
                        status, body = api.request("POST", f"/api/v1/invoices/{invoice['id']}/payments",
                                                   {"amount_cents": invoice["balance_cents"], "method": "card"})
                        assert status == 201, body
                    t_start = time.perf_counter()
                    issue_pay.append(timed(issue_and_pay))
                # Let the background renderer finish the invoices' PDFs: receipts are measured on their own.
                folder = instance / "documents" / "invoices"
                deadline = time.monotonic() + 300
                while len(list(folder.rglob("*.pdf"))) < len(invoice_ids) and time.monotonic() < deadline:
                    time.sleep(0.2)
                for invoice_id in invoice_ids:
                    receipts.append(timed(lambda: api.request("GET", f"/api/v1/invoices/{invoice_id}/receipt.pdf")))
                lists_api, lists_inv, lists_page, lists_inv_page = [], [], [], []
                for _ in range(args.rounds):
                    lists_api.append(timed(lambda: api.request("GET", f"/api/v1/exam-groups?date={today}")))
                    lists_inv.append(timed(lambda: api.request("GET", "/api/v1/invoices")))
                page = sign_in_page(port, "bench")
                for _ in range(args.rounds):
                    lists_page.append(timed(lambda: page.request("GET", f"/billing/?date={today}")))
                    lists_inv_page.append(timed(lambda: page.request("GET", "/billing/invoices")))
        finally:
            server.terminate()
            server.wait(timeout=30)
        report_ms(f"page /dashboard ({args.invoices} invoices, {args.patients} patients)", dashboard)
        report_ms("page /dashboard after a new image", after_image)
        report_ms("page /dashboard after a new exam group", after_group)
        report_ms(f"page /retention/ ({args.patients} patients)", retention)
        report_ms("page /retention/patients?list=due&days=30", due_list)
        report_ms("page /retention/patients?list=all&page=200", all_page)
        report_ms("page /retention/sweep (dry-run preview)", sweep_page)
        for path, ms in first.items():
            print(f"first load of {path}: {ms:.0f} ms")
        if args.manager_only:
            return
        report_ms("issue invoice (API, PDF stored after commit)", issue_only)
        report_ms("issue + pay (API)", issue_pay)
        report_ms("receipt.pdf (API)", receipts)
        report_ms(f"GET /api/v1/exam-groups today ({args.rounds} groups)", lists_api)
        report_ms(f"GET /api/v1/invoices first page of {args.invoices + args.rounds}", lists_inv)
        report_ms("page /billing/ (today's exam groups)", lists_page)
        report_ms("page /billing/invoices (first 100)", lists_inv_page)


if __name__ == "__main__":
    main()
