"""What a person reads: our own translated error pages, billing errors without field names, no untranslated
template text, no English sentence or raw code on any French page; and sessions that end without losing work."""

from __future__ import annotations

import ast
import re
from datetime import datetime, timedelta, timezone
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest
from sqlalchemy import select, update

from backoffice.billing import services as S
from tests.radiology_support import make_history

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery"

# What a French page must never show: Werkzeug's pages, the services' English sentences, field names, codes.
ENGLISH_OR_CODES = [
    r"\bNot Found\b", r"\bForbidden\b", r"Method Not Allowed", r"\bBad Request\b", r"Internal Server Error",
    r"The requested URL", r"\bCSRF\b", r"\bmust be\b", r"\bis required\b", r"\bno such\b", r"\brefused:",
    r"\b[a-z]+_(?:cents|bp|id)\b", r"\bfront_desk\b", r"\bstudy\.[a-z]+\b", r"\{&quot;|\{\"[a-z]+\":",
    r"\b(?:to_ask|partially_paid|to_send|queued|running)\b",
]


def visible(html: str) -> str:
    return unescape(re.sub(r"<(script|style)\b.*?</\1>|<[^>]+>", " ", html, flags=re.S))


def english_or_codes(html: str) -> list[str]:
    text = visible(html)
    return [m.group(0) for pattern in ENGLISH_OR_CODES for m in [re.search(pattern, text)] if m]


@pytest.fixture
def people(facade):
    from backoffice.auth.services import create_user

    ids = {}
    with facade.new_session(write=True) as s:
        for role in ("front_desk", "manager", "radiologist", "admin"):
            ids[role] = create_user(s, f"w_{role}", role=role, password=PASSWORD).id
        s.commit()
    return ids


def sign_in(client, user_id):
    with client.session_transaction() as session:
        session["_user_id"] = str(user_id)
        session["_fresh"] = True


def csrf(client, path) -> str:
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token"[^>]*?value="([^"]+)"', html).group(1)


def login(client, login_name, next_path=None):
    """Through the real login form, as a person does."""
    url = "/login" + (f"?next={next_path}" if next_path else "")
    return client.post(url, data={"login": login_name, "password": PASSWORD, "csrf_token": csrf(client, url)})


def page_settings(response) -> dict:
    """What base.html's session script was given (JSON)."""
    import json

    return json.loads(re.search(r"const cfg = (\{.*?\});\n", response.get_data(as_text=True), re.S).group(1))


def end_every_session(facade):
    """The idle timeout, as the database sees it: every session's row has expired."""
    from backoffice.auth.models import WebSession

    with facade.new_session(write=True) as s:
        s.execute(update(WebSession).values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
        s.commit()


# -- error pages -----------------------------------------------------------------------------------------------


ERRORS = [  # role, method, path, status, the French sentence; bad input: an unknown page, a wrong method, a role
    ("front_desk", "GET", "/billing/invoices/999999", 404, "n'existe pas à cette adresse"),
    ("front_desk", "GET", "/no-such-page", 404, "n'existe pas à cette adresse"),
    ("front_desk", "GET", "/billing/groups/1/consent", 405, "ne s'ouvre pas ainsi"),
    ("front_desk", "GET", "/retention/", 403, "Votre rôle ne permet pas"),
    ("radiologist", "GET", "/billing/", 403, "Votre rôle ne permet pas"),
]


@pytest.mark.parametrize("role, method, path, status, french", ERRORS, ids=[f"{e[3]}:{e[2]}" for e in ERRORS])
def test_http_errors_are_our_translated_pages_in_the_site_layout(client, people, role, method, path, status, french):
    sign_in(client, people[role])
    response = client.open(path, method=method)
    html = response.get_data(as_text=True)
    assert response.status_code == status
    assert french in html and "Se déconnecter" in html  # our layout, signed in
    assert english_or_codes(html) == []
    client.post("/language", data={"lang": "en", "csrf_token": csrf(client, "/")})
    english = client.open(path, method=method).get_data(as_text=True)
    assert french not in english and "Sign out" in english


def test_a_missing_csrf_token_gets_a_french_page_not_werkzeugs(client, people):
    """Bad input: a form posted without its token while signed in (another tab signed in again)."""
    sign_in(client, people["front_desk"])
    response = client.post("/billing/checkin", data={"patient_id": "P1"},
                           headers={"Referer": "http://localhost/billing/checkin"})
    html = response.get_data(as_text=True)
    assert response.status_code == 400 and "La page a expiré" in html
    assert english_or_codes(html) == []


def test_the_api_answers_json_errors(client, people, facade):
    from backoffice.auth.services import create_token

    with facade.new_session(write=True) as s:
        token = create_token(s, "w_front_desk")
        s.commit()
    headers = {"Authorization": f"Bearer {token}"}
    for method, path, status in (("GET", "/api/v1/nothing-here", 404), ("DELETE", "/api/v1/openapi.json", 405)):
        response = client.open(path, method=method, headers=headers)
        assert response.status_code == status and response.is_json, (method, path)
        assert response.get_json()["error"]["code"]


def test_an_archive_core_error_is_mapped_to_a_status_and_a_translated_message(app):
    """archive_core keeps its English sentence (log, DICOM peers); the back-office's one table translates."""
    from archive_core import errors as core
    from archive_core.render import RenderError
    from backoffice.errors import CORE_ERRORS, core_error

    with app.test_request_context("/", headers={"Accept-Language": "fr"}):
        assert core_error(core.NotFound("no object 1.2.3")) == (404, str(CORE_ERRORS[core.NotFound][1]))
        assert core_error(RenderError("frame 9 does not exist"))[0] == 422
        status, message = core_error(core.StorageFull("below the free-space floor"))
        assert status == 507 and "plein" in message and "floor" not in message


# -- billing errors in the desk's words ----------------------------------------------------------------------


def _raised_codes() -> set[str]:
    """Every ``code=`` a billing error is raised with, in the services and the pages."""
    codes = set()
    for path in (ROOT / "backoffice" / "billing").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                for kw in node.exc.keywords:
                    if kw.arg == "code" and isinstance(kw.value, ast.Constant):
                        codes.add(kw.value.value)
    return codes


def test_every_billing_error_code_has_a_sentence():
    from backoffice.billing.errors import ERRORS

    codes = _raised_codes()
    assert len(codes) > 20
    assert sorted(codes - set(ERRORS)) == []


def test_an_unnamed_billing_error_shows_its_kinds_sentence_never_the_english_one(app):
    from backoffice.billing.errors import message_for

    with app.test_request_context("/"):
        assert message_for(S.Conflict("something new went wrong")) == "Impossible dans l'état actuel de cet enregistrement."
        assert "coverage_bp" not in message_for(S.Invalid("coverage_bp must be an integer", code="bad_number",
                                                          field="coverage_bp"))


BAD_POSTS = [  # path, form, French words expected; the English sentence each replaced
    ("/billing/tariffs", {"exam_group": "scanner", "label": "x", "fee": "-4", "effective_from": "2026-01-01"},
     "Montant invalide"),  # amount_cents must be a positive whole number of cents
    ("/billing/insurers", {"name": "MGEN", "amc_number": "123", "coverage": "beaucoup"},
     "Taux invalide : écrivez un pourcentage"),  # the rate is typed in percent (was coverage_bp, an integer)
    ("/billing/checkin", {"patient_id": "", "exam_group": "radiologie"}, "Indiquez le patient"),  # patient_id is required
]


@pytest.mark.parametrize("path, form, french", BAD_POSTS, ids=[b[0] for b in BAD_POSTS])
def test_bad_billing_input_reads_as_a_french_sentence(app, client, people, path, form, french):
    app.config["WTF_CSRF_ENABLED"] = False
    sign_in(client, people["manager"])
    html = client.post(path, data=form, headers={"Referer": f"http://localhost{path}"},
                       follow_redirects=True).get_data(as_text=True)
    assert french in html, visible(html)[:2000]
    assert english_or_codes(html) == []


def test_closings_show_amounts_per_method_not_json(app, client, people, facade):
    from backoffice.billing.models import Closing

    with facade.new_session(write=True) as s:
        s.add(Closing(kind="day", period="2026-11-30", totals_json='{"card": 650, "cash": 300}', total_cents=950,
                      payment_count=2, signed_by="w_manager", signed_at=datetime(2026, 11, 30, 18, tzinfo=timezone.utc),
                      last_payment_hash="0" * 64))
        s.commit()
    sign_in(client, people["manager"])
    html = visible(client.get("/billing/closings").get_data(as_text=True))
    assert "carte bancaire : 6,50\xa0€" in html and "espèces : 3,00\xa0€" in html and "jour 2026-11-30" in html
    assert '"card"' not in html and "650" not in html


# -- templates and catalogs -----------------------------------------------------------------------------------

# Paper documents are French whatever the interface language (tests/unit/test_i18n.py checks they stay so).
DOCUMENTS = {"billing/_invoice_patient.html", "billing/_invoice_lines.html", "billing/_practice.html",
             "billing/_pdf_style.html",
             "billing/invoice_pdf.html", "billing/receipt_pdf.html", "billing/receipted_invoice_pdf.html",
             "billing/credit_note_pdf.html", "billing/closing_pdf.html", "billing/remittance.html",
             "radiology/reproduction.html", "retention/certificate.html"}
# Text the same in every language: the language chooser's own label, and acronyms.
UNIVERSAL = {"Langue / Language", "OK"}


class _TemplateText(HTMLParser):
    """The text a person sees from a template's literal HTML (Jinja expressions blanked out)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.texts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag, attrs):
        self.hidden += tag in ("script", "style")
        values = dict(attrs)
        for name in ("alt", "title", "placeholder", "aria-label"):
            if values.get(name):
                self.texts.append(values[name])
        if tag == "input" and values.get("type") in ("submit", "button") and values.get("value"):
            self.texts.append(values["value"])

    def handle_endtag(self, tag):
        self.hidden -= tag in ("script", "style") and self.hidden > 0

    def handle_data(self, data):
        if not self.hidden:
            self.texts.append(data)


def untranslated_text(source: str) -> list[str]:
    from jinja2 import Environment

    env = Environment(extensions=["jinja2.ext.i18n"])
    literal = "".join(value if kind == "data" else " " for _line, kind, value in env.lex(source))
    parser = _TemplateText()
    parser.feed(literal)
    parser.close()
    found = []
    for text in (" ".join(t.split()) for t in parser.texts):
        words = [w for w in re.findall(r"[^\W\d_]{2,}", text) if not w.isupper()]  # OID, UID, CSV: acronyms
        if words and text not in UNIVERSAL:
            found.append(text)
    return found


def test_the_template_check_finds_literal_text():
    assert untranslated_text('<p>Hello {{ name }}</p><button title="Fermer">{{ _("x") }}</button>') == ["Hello", "Fermer"]
    assert untranslated_text('<p>{{ _("Bonjour") }} — {{ n }} · (OID {{ oid }})</p><script>var a = "b";</script>') == []


def test_no_template_shows_text_outside_gettext():
    found = {}
    for path in sorted((ROOT / "templates").rglob("*.html")):
        name = path.relative_to(ROOT / "templates").as_posix()
        if name not in DOCUMENTS and (texts := untranslated_text(path.read_text())):
            found[name] = texts
    assert found == {}


def _catalog(lang):
    from babel.messages.pofile import read_po

    with (ROOT / "translations" / lang / "LC_MESSAGES" / "messages.po").open("rb") as handle:
        return read_po(handle, locale=lang)


@pytest.mark.parametrize("lang", ["fr", "en"])
def test_every_msgid_has_a_msgstr_in_both_catalogs(lang):
    catalog = _catalog(lang)
    assert [m.id for m in catalog if m.id and (not m.string or m.fuzzy)] == []
    if lang == "fr":  # the source language translates to itself
        assert [m.id for m in catalog if m.id and m.string != m.id] == []


# -- every page, as each role --------------------------------------------------------------------------------


@pytest.fixture
def day(app, facade):
    history = make_history(facade.archive)
    with facade.new_session(write=True) as s:
        group = S.create_exam_group(s, patient_id="PAT-RAD-1", visit_date=S.paris_today(), exam_group="radiologie",
                                    created_by="t", patient_name="Martin^Élise")
        s.commit()
    return {"study_uid": history.current, "group_id": group.id, "patient_id": "PAT-RAD-1"}


def _get_pages(app, day):
    """Every GET page of the app with its path filled from the day's data (API, images and files left out)."""
    values = {"study_uid": day["study_uid"], "group_id": day["group_id"], "patient_id": day["patient_id"]}
    for rule in app.url_map.iter_rules():
        if "GET" not in rule.methods or rule.rule.startswith(("/api/", "/dicom-web", "/wado", "/static", "/share")):
            continue
        if re.search(r"\.(pdf|zip|json|csv)|/image|/media|/export|/session/", rule.rule):
            continue
        if set(rule.arguments) - set(values):
            continue
        yield rule, re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", lambda m: str(values[m.group(1)]), rule.rule)


@pytest.mark.parametrize("role", ["front_desk", "manager", "radiologist", "admin"])
def test_no_french_page_shows_an_english_sentence_or_a_raw_code(app, client, people, day, role):
    sign_in(client, people[role])
    seen = 0
    for rule, path in _get_pages(app, day):
        if role not in getattr(app.view_functions[rule.endpoint], "allowed_roles", ()):
            continue
        response = client.get(path)
        if response.status_code != 200 or response.mimetype != "text/html":
            continue
        seen += 1
        assert english_or_codes(response.get_data(as_text=True)) == [], (role, path)
    assert seen >= 3


def test_the_walk_can_fail(app, client, people):
    assert english_or_codes("<p>coverage_bp must be an integer</p>") == ["must be", "coverage_bp"]
    assert english_or_codes("<span>w (front_desk)</span><td>{&quot;card&quot;: 650}</td>") != []


# -- sessions that end ---------------------------------------------------------------------------------------


def test_pages_know_when_their_session_ends_and_status_does_not_lengthen_it(app, client, people, facade):
    from backoffice.auth.models import WebSession

    login(client, "w_radiologist")
    response = client.get("/")
    assert 'id="session-warning"' in response.get_data(as_text=True)
    assert 1795 <= page_settings(response)["expiresIn"] <= 1800 and page_settings(response)["warnBefore"] == 120
    with facade.new_session(write=True) as s:
        soon = datetime.now(timezone.utc) + timedelta(seconds=90)
        s.execute(update(WebSession).values(expires_at=soon))
        s.commit()
    assert client.get("/session/status", headers={"Accept": "application/json"}).get_json()["expires_in"] <= 90
    with facade.new_session() as s:  # asking did not lengthen it
        assert all(abs((e.replace(tzinfo=timezone.utc) if e.tzinfo is None else e) - soon) < timedelta(seconds=1)
                   for e in s.scalars(select(WebSession.expires_at)))
    token = csrf(client, "/")
    assert client.post("/session/keepalive", data={"csrf_token": token},
                       headers={"Accept": "application/json"}).get_json()["expires_in"] == 1800
    assert client.get("/session/status", headers={"Accept": "application/json"}).get_json()["expires_in"] > 1700


def test_a_report_posted_after_expiry_comes_back_filled_after_signing_in_and_is_not_saved(client, people, day, facade):
    """Bad input: a report typed for longer than the idle timeout, then sent. Nothing saved, nothing lost."""
    from backoffice.radiology.models import Report

    login(client, "w_radiologist")
    page = f"/radiology/studies/{day['study_uid']}"
    token = csrf(client, page)
    end_every_session(facade)
    typed = "Nodule de 6 mm du lobe supérieur droit, à surveiller."
    response = client.post(f"{page}/report", data={"csrf_token": token, "findings": typed},
                           headers={"Referer": f"http://localhost{page}"})
    assert response.status_code == 302 and response.headers["Location"].startswith("/login?next=")
    assert "expiré" in client.get(response.headers["Location"]).get_data(as_text=True)
    back = login(client, "w_radiologist", next_path=page)
    assert back.headers["Location"] == page
    kept = page_settings(client.get(page))["kept"]  # the page's script puts it back in the form
    assert kept["action"] == f"{page}/report" and kept["fields"] == [["findings", typed]]  # no CSRF token kept
    assert page_settings(client.get(page))["kept"] is None  # shown once
    with facade.new_session() as s:
        assert s.scalars(select(Report)).all() == []  # nothing was replayed


def test_a_payment_posted_after_expiry_is_shown_for_confirmation_never_recorded(app, client, people, day, facade):
    from backoffice.billing.models import Payment

    login(client, "w_front_desk")
    app.config["WTF_CSRF_ENABLED"] = False
    invoice_url = client.post(f"/billing/groups/{day['group_id']}/invoice", data={}).headers["Location"]
    app.config["WTF_CSRF_ENABLED"] = True
    token = csrf(client, invoice_url)
    end_every_session(facade)
    response = client.post(f"{invoice_url}/payments", data={"csrf_token": token, "amount": "3,00", "method": "card"},
                           headers={"Referer": f"http://localhost{invoice_url}"})
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    login(client, "w_front_desk", next_path=invoice_url)
    kept = page_settings(client.get(invoice_url))["kept"]
    assert kept["fields"] == [["amount", "3,00"], ["method", "card"]]
    with facade.new_session() as s:
        assert s.scalars(select(Payment)).all() == []


def test_login_follows_only_a_path_of_this_site(client, people):
    """Bad input: next pointing at another site (an open redirect)."""
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        assert login(client, "w_manager", next_path=target).headers["Location"] == "/"
        client.post("/logout", data={"csrf_token": csrf(client, "/")})


# -- the report editor saves as typed -------------------------------------------------------------------------


def test_the_report_draft_is_saved_as_typed(client, people, day, facade):
    from backoffice.radiology.models import Report

    login(client, "w_radiologist")
    page = f"/radiology/studies/{day['study_uid']}"
    token = csrf(client, page)
    url = f"{page}/report/autosave"
    headers = {"Accept": "application/json", "X-Requested-With": "fetch"}
    for text in ("Nodule", "Nodule de 6 mm"):
        answer = client.post(url, data={"csrf_token": token, "findings": text}, headers=headers)
        assert answer.status_code == 200 and answer.get_json()["saved"] is True
    with facade.new_session() as s:
        drafts = s.scalars(select(Report)).all()
    assert [(d.version, d.status, d.findings) for d in drafts] == [(1, "draft", "Nodule de 6 mm")]  # one draft
    # Bad input: no CSRF token; then a session that has ended: JSON the page's script reads, nothing saved.
    refused = client.post(url, data={"findings": "sans jeton"}, headers=headers)
    assert refused.status_code == 400 and refused.is_json
    end_every_session(facade)
    expired = client.post(url, data={"csrf_token": token, "findings": "trop tard"}, headers=headers)
    assert expired.status_code in (400, 401) and expired.is_json
    with facade.new_session() as s:
        assert s.scalars(select(Report.findings)).all() == ["Nodule de 6 mm"]
