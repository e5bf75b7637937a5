"""The interface language: French by default, English on request (selector, Accept-Language); catalogs complete."""

from __future__ import annotations

import re
import subprocess
from html import unescape
from pathlib import Path

import pytest

from backoffice.billing import services as S
from tests.helpers import require_tool
from tests.radiology_support import make_history

ROOT = Path(__file__).resolve().parents[2]
CATALOGS = ROOT / "translations"

# French words of the interface that have no place on an English page. Not checked: data (patient names, the
# tariff labels the practice typed) and the retention rule's sentence ("conservé jusqu'au …: 20 ans …"),
# which archive_core composes without gettext. Whole words, case-sensitive.
FRENCH_WORDS = ("Rechercher", "Enregistrer", "Facture", "Factures", "Examens", "Aucun", "Aucune", "aucun",
                "Conservation", "Séquestre", "séquestre", "Antériorité", "Antériorités", "Modalité",
                "Identifiant", "Bonjour", "déconnecter", "connexion", "Mutuelle", "Mutuelles", "Tarifs", "Ouvrir", "Voir", "État",
                "Journal", "Lot", "Déplacer", "Encaisser", "Payeur", "Clôture", "Destructions", "Motif", "Signer",
                "Rattacher", "Fusionner", "Supprimer", "images choisies", "Partager", "octets", "à demander",
                "veille", "lendemain", "Suivants", "toutes", "oui", "non", "brouillon")


@pytest.fixture
def users(facade):
    from backoffice.auth.services import create_user

    ids = {}
    with facade.new_session(write=True) as s:
        for role in ("front_desk", "manager", "radiologist", "admin"):
            ids[role] = create_user(s, f"i18n_{role}", role=role, password="correct horse battery").id
        s.commit()
    return ids


@pytest.fixture
def data(app, facade):
    """Something on each page: an exam group to bill, a study with a prior, a legal hold."""
    history = make_history(facade.archive)
    with facade.new_session(write=True) as s:
        group = S.create_exam_group(s, patient_id="PX", visit_date=S.paris_today(), exam_group="radiologie",
                                    created_by="t", patient_name="Martin^Paul")
        s.commit()
    return {"history": history, "group_id": group.id}


def sign_in(client, user_id):
    with client.session_transaction() as session:
        session["_user_id"] = str(user_id)
        session["_fresh"] = True


def csrf(client, path="/login") -> str:
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token"[^>]*?value="([^"]+)"', html).group(1)


def choose(client, lang, path="/login"):
    response = client.post("/language", data={"lang": lang, "csrf_token": csrf(client, path)},
                           headers={"Referer": f"http://localhost{path}"})
    assert response.status_code == 302
    return response


def text(client, path, **kw) -> str:
    response = client.get(path, **kw)
    assert response.status_code == 200, (path, response.status_code)
    return response.get_data(as_text=True)


def french_words_in(html: str) -> list[str]:
    visible = unescape(re.sub(r"<(script|style)\b.*?</\1>|<[^>]+>", " ", html, flags=re.S))
    return [w for w in FRENCH_WORDS if re.search(rf"(?<!\w){re.escape(w)}(?!\w)", visible)]


def test_french_is_the_default(client, users):
    sign_in(client, users["manager"])
    page = text(client, "/")
    assert '<html lang="fr">' in page
    assert "Bonjour i18n_manager" in page and "Se déconnecter" in page and "Hello" not in page


AREAS = [  # role, page, English text, the French it replaces
    ("manager", "/", "Hello i18n_manager", "Bonjour"),
    ("front_desk", "/billing/", "Today's exams", "Examens du jour"),
    ("manager", "/retention/", "Record retention", "Conservation des dossiers"),
    ("radiologist", "/radiology/", "Accession no.", "N° d'examen"),
]


@pytest.mark.parametrize("role, path, english, french", AREAS, ids=[a[1] for a in AREAS])
def test_switching_to_english_translates_each_area(client, users, data, role, path, english, french):
    sign_in(client, users[role])
    assert french in text(client, path)
    choose(client, "en", path)
    page = text(client, path)
    assert '<html lang="en">' in page
    assert english in page and french not in page


def test_english_dates_and_amounts_use_english_formats(client, users, data):
    sign_in(client, users["front_desk"])
    french = text(client, "/billing/")
    assert "3,00\xa0€" in french and "à demander" in french
    choose(client, "en", "/billing/")
    english = text(client, "/billing/")
    assert "€3.00" in english and "to ask" in english
    day = S.paris_today()
    assert f"{day.strftime('%B')} {day.day}, {day.year}" in english  # Babel's English long date


def test_the_choice_made_on_the_login_page_survives_signing_in_and_persists(client, users):
    choose(client, "en")
    assert "Sign in" in text(client, "/login")
    client.post("/login", data={"login": "i18n_manager", "password": "correct horse battery",
                                "csrf_token": csrf(client)})
    assert "Hello i18n_manager" in text(client, "/")
    assert "Record retention" in text(client, "/retention/")
    assert "Audit trail" in text(client, "/retention/audit")
    choose(client, "fr", "/")
    assert "Bonjour i18n_manager" in text(client, "/")


@pytest.mark.parametrize("header, expected", [
    ("en", "Hello"),
    ("en-GB,en;q=0.9", "Hello"),
    ("en-US", "Hello"),  # a regional variant alone
    ("de-DE,de;q=0.9,en;q=0.5", "Hello"),  # the best language we have among those asked
    ("fr-FR,fr;q=0.9,en;q=0.8", "Bonjour"),
    ("de-DE", "Bonjour"),  # unsupported: French
    ("es, it;q=0.5", "Bonjour"),
    ("", "Bonjour"),
])
def test_accept_language_among_french_and_english(client, users, header, expected):
    sign_in(client, users["manager"])
    assert expected in text(client, "/", headers={"Accept-Language": header})


def test_a_chosen_language_beats_the_browser_header(client, users):
    sign_in(client, users["manager"])
    choose(client, "fr", "/")
    assert "Bonjour" in text(client, "/", headers={"Accept-Language": "en"})


def test_unsupported_choice_and_missing_csrf_change_nothing(client, users):
    sign_in(client, users["manager"])
    choose(client, "de", "/")
    assert "Bonjour" in text(client, "/")
    response = client.post("/language", data={"lang": "en"})  # no CSRF token
    assert response.status_code == 400
    assert "Bonjour" in text(client, "/")


def test_default_language_can_be_english(app, client, users):
    app.config["DEFAULT_LANGUAGE"] = "en"
    sign_in(client, users["manager"])
    assert "Hello" in text(client, "/")
    assert "Hello" in text(client, "/", headers={"Accept-Language": "de"})


def test_flashed_messages_and_service_errors_follow_the_language(app, client, users, data):
    app.config["WTF_CSRF_ENABLED"] = False
    sign_in(client, users["front_desk"])
    client.post("/language", data={"lang": "en"})
    client.post(f"/billing/groups/{data['group_id']}/consent", data={"accepted": "1"})
    assert "Consent recorded." in text(client, f"/billing/groups/{data['group_id']}")
    sign_in(client, users["manager"])
    client.post("/retention/holds", data={"patient_id": "NOBODY", "reason": "claim"})
    assert "no patient with this ID" in text(client, "/retention/")


ENGLISH_PAGES = [
    ("manager", "/"), ("admin", "/"),
    ("front_desk", "/billing/"), ("front_desk", "/billing/checkin"), ("front_desk", "/billing/invoices"),
    ("front_desk", "/billing/closing"), ("front_desk", "/billing/groups/{group_id}"),
    ("manager", "/billing/tariffs"), ("manager", "/billing/mapping"), ("manager", "/billing/insurers"),
    ("manager", "/billing/claims"), ("manager", "/billing/closings"), ("manager", "/billing/exports"),
    ("manager", "/retention/"), ("manager", "/retention/history"), ("manager", "/retention/corrections"),
    ("manager", "/retention/audit"), ("manager", "/retention/patient?patient_id=PAT-RAD-1"),
    ("manager", "/retention/patients?list=all"), ("manager", "/retention/sweep"), ("manager", "/dashboard"),
    ("radiologist", "/radiology/"), ("radiologist", "/radiology/studies/{study_uid}"),
    ("radiologist", "/radiology/studies/{study_uid}/viewer"),
]


@pytest.mark.parametrize("role, path", ENGLISH_PAGES, ids=[f"{r}:{p}" for r, p in ENGLISH_PAGES])
def test_english_pages_show_no_french_interface_words(client, users, data, role, path):
    sign_in(client, users[role])
    client.post("/language", data={"lang": "en", "csrf_token": csrf(client, "/")})
    page = text(client, path.format(group_id=data["group_id"], study_uid=data["history"].current))
    assert french_words_in(page) == []


def test_the_french_word_check_can_fail(client, users):
    sign_in(client, users["front_desk"])
    assert {"Rechercher", "Examens"} <= set(french_words_in(text(client, "/billing/")))


def test_documents_stay_french_in_an_english_session(app, client, users, data):
    require_tool("pdftotext")
    app.config["WTF_CSRF_ENABLED"] = False
    sign_in(client, users["front_desk"])
    client.post("/language", data={"lang": "en"})
    client.post(f"/billing/groups/{data['group_id']}/consent", data={"accepted": "1"})
    invoice_url = client.post(f"/billing/groups/{data['group_id']}/invoice", data={}).headers["Location"]
    client.post(f"{invoice_url}/payments", data={"amount": "3,00", "method": "cash"})
    assert "Invoice no." in text(client, invoice_url)
    pdf = client.get(f"{invoice_url}/receipt.pdf").data
    receipt = subprocess.run(["pdftotext", "-", "-"], input=pdf, capture_output=True, check=True, timeout=60).stdout
    assert "espèces" in receipt.decode() and "3,00" in receipt.decode()


# -- the catalogs ------------------------------------------------------------------------------------------------


def _catalog(lang):
    from babel.messages.pofile import read_po

    with (CATALOGS / lang / "LC_MESSAGES" / "messages.po").open("rb") as handle:
        return read_po(handle, locale=lang)


def _placeholders(message: str) -> list[str]:
    return sorted(re.findall(r"%\(\w+\)s|%%", message))


def test_every_msgid_has_an_english_translation_with_the_same_placeholders():
    english = _catalog("en")
    ids = [m for m in english if m.id]
    assert len(ids) > 300
    assert [m.id for m in ids if not m.string or m.fuzzy] == []
    assert [m.id for m in ids if _placeholders(m.id) != _placeholders(m.string)] == []


def test_french_and_english_catalogs_hold_the_same_msgids():
    def keys(lang):
        return {(m.context, m.id) for m in _catalog(lang) if m.id}

    assert keys("fr") == keys("en")


def test_every_string_marked_in_the_source_is_in_the_catalogs():
    from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
    from babel.messages.frontend import parse_mapping_cfg

    with (ROOT / "babel.cfg").open() as handle:
        method_map, options_map = parse_mapping_cfg(handle)
    keywords = {**DEFAULT_KEYWORDS, "_l": None, "lazy_pgettext": ((1, "c"), 2)}  # as `make translations`
    found = set()
    for _filename, _lineno, message, _comments, context in extract_from_dir(
            str(ROOT), method_map, options_map, keywords=keywords):
        found.add((context, message if isinstance(message, str) else message[0]))
    known = {(m.context, m.id) for m in _catalog("en") if m.id}
    assert sorted(found - known, key=str) == []


def test_paper_reproduction_stays_french_in_an_english_session(client, users, data):
    require_tool("pdftotext")
    sign_in(client, users["radiologist"])
    choose(client, "en", "/")
    study_uid = data["history"].current
    assert "Mar 1, 2024" in text(client, f"/radiology/studies/{study_uid}")
    pdf = client.get(f"/radiology/studies/{study_uid}/reproduction.pdf").data
    printed = subprocess.run(["pdftotext", "-", "-"], input=pdf, capture_output=True, check=True, timeout=60).stdout
    assert "01/03/2024" in printed.decode() and "Mar 1, 2024" not in printed.decode()
