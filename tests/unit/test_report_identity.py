"""Signed reports carry the signer's full name and RPPS as they were, and the signing time in Paris."""

from __future__ import annotations

import re
import subprocess
from datetime import datetime, timezone

import pytest
import time_machine
from sqlalchemy import select

from tests.helpers import require_tool
from tests.radiology_support import make_history

PASSWORD = "correct horse battery"


@pytest.fixture
def history(facade):
    return make_history(facade.archive)


@pytest.fixture
def people(app, facade):
    from backoffice.auth.services import create_token, create_user

    with facade.new_session(write=True) as s:
        durand = create_user(s, "cdurand", role="radiologist", password=PASSWORD, full_name=" Camille  DURAND ",
                             rpps="10001234567")
        bare = create_user(s, "remplacant", role="radiologist", password=PASSWORD)
        admin = create_user(s, "chef", role="admin", password=PASSWORD)
        out = {"durand": durand.id, "bare": bare.id, "admin": admin.id, "token": create_token(s, "cdurand")}
        s.commit()
    return out


def sign_in(client, user_id, lang="fr"):
    with client.session_transaction() as session:
        session["_user_id"] = str(user_id)
        session["_fresh"] = True
        session["lang"] = lang


def csrf(client, path):
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).get_data(as_text=True)).group(1)


def sign_through_the_page(client, user_id, study_uid, at: datetime, lang="fr"):
    """Write and sign a report with the clock set to *at*; signed in again afterwards (the web session
    opened at *at* has long expired by the real clock)."""
    page = f"/radiology/studies/{study_uid}"
    with time_machine.travel(at, tick=False):  # the clock of the signing (the CSRF token is dated too)
        sign_in(client, user_id, lang)
        token = csrf(client, page)
        client.post(f"{page}/report", data={"csrf_token": token, "findings": "Pas de nodule."})
        assert client.post(f"{page}/report/sign", data={"csrf_token": token}).status_code == 302
    sign_in(client, user_id, lang)


def text_of(client, path):
    return " ".join(re.sub(r"<[^>]+>", " ", client.get(path).get_data(as_text=True)).split())


def pdf_text(tmp_path, pdf: bytes) -> str:
    path = tmp_path / "reproduction.pdf"
    path.write_bytes(pdf)
    out = subprocess.run([require_tool("pdftotext"), str(path), "-"], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    return " ".join(out.split())


# Winter (UTC+1), summer (UTC+2), and the night of the spring change (01:00 UTC on 29 March 2026 is 03:00).
@pytest.mark.parametrize("signed_at, paris", [
    (datetime(2026, 1, 15, 13, 56, tzinfo=timezone.utc), "le 15/01/2026 à 14:56"),
    (datetime(2026, 7, 15, 12, 56, tzinfo=timezone.utc), "le 15/07/2026 à 14:56"),
    (datetime(2026, 3, 29, 1, 30, tzinfo=timezone.utc), "le 29/03/2026 à 03:30"),
    (datetime(2026, 12, 31, 23, 30, tzinfo=timezone.utc), "le 01/01/2027 à 00:30"),  # the date changes too
])
def test_page_and_paper_show_name_rpps_and_paris_time(client, people, history, tmp_path, signed_at, paris):
    """Bad output tried: the login and the UTC time (the page said 'Signé par cdurand … 13:56 UTC')."""
    sign_through_the_page(client, people["durand"], history.current, signed_at)
    expected = f"Signé par Dr Camille DURAND (RPPS 10001234567) {paris} (heure de Paris)"
    page = text_of(client, f"/radiology/studies/{history.current}")
    assert expected in page and "UTC" not in page
    pdf = client.get(f"/api/v1/studies/{history.current}/reproduction.pdf",
                     headers={"Authorization": f"Bearer {people['token']}"})
    assert pdf.status_code == 200
    assert expected in pdf_text(tmp_path, pdf.data)


def test_english_signature_line(client, people, history):
    sign_through_the_page(client, people["durand"], history.current, datetime(2026, 7, 15, 12, 56, tzinfo=timezone.utc),
                          lang="en")
    page = text_of(client, f"/radiology/studies/{history.current}")
    assert "Signed by Dr Camille DURAND (RPPS 10001234567) on Jul 15, 2026 at 14:56 (Paris time)" in page


def test_without_a_full_name_the_login_signs(client, people, history):
    sign_through_the_page(client, people["bare"], history.current,
                          datetime(2026, 1, 15, 13, 56, tzinfo=timezone.utc))
    page = text_of(client, f"/radiology/studies/{history.current}")
    assert "Signé par remplacant le 15/01/2026 à 14:56 (heure de Paris)" in page and "RPPS" not in page


def test_renaming_the_signer_leaves_the_signed_report_as_it_was(client, people, history, facade):
    """Bad case tried: the admin changes the radiologist's name and RPPS after signing; the signed report
    must keep the identity it was signed with (it is frozen), while the next signature uses the new one."""
    sign_through_the_page(client, people["durand"], history.current,
                          datetime(2026, 1, 15, 13, 56, tzinfo=timezone.utc))
    sign_in(client, people["admin"])
    token = csrf(client, "/admin/users")
    client.post(f"/admin/users/{people['durand']}/identity",
                data={"csrf_token": token, "full_name": "Camille LEGRAND", "rpps": "10009876543"})
    from backoffice.auth.models import User

    with facade.new_session() as s:
        assert s.scalar(select(User.full_name).where(User.login == "cdurand")) == "Camille LEGRAND"
    sign_in(client, people["durand"])
    page = text_of(client, f"/radiology/studies/{history.current}")
    assert "Dr Camille DURAND (RPPS 10001234567)" in page and "LEGRAND" not in page


@pytest.mark.parametrize("rpps", ["1000123456", "100012345678", "1000123456A", "１０００１２３４５６７"])
def test_admin_page_refuses_a_bad_rpps(client, people, facade, rpps):
    """Bad input tried: 10 and 12 digits, a letter, full-width digits. Nothing is saved, a message says why."""
    sign_in(client, people["admin"])
    token = csrf(client, "/admin/users")
    answer = client.post(f"/admin/users/{people['durand']}/identity", follow_redirects=True,
                         data={"csrf_token": token, "full_name": "Camille LEGRAND", "rpps": rpps})
    assert "11 chiffres" in answer.get_data(as_text=True)
    created = client.post("/admin/users", follow_redirects=True, data={
        "csrf_token": token, "login": "nouveau", "role": "radiologist", "password": PASSWORD, "rpps": rpps})
    assert "Utilisateur non créé" in created.get_data(as_text=True)
    from backoffice.auth.models import User

    with facade.new_session() as s:
        assert s.scalar(select(User.full_name).where(User.login == "cdurand")) == "Camille DURAND"
        assert s.scalar(select(User.id).where(User.login == "nouveau")) is None


def test_admin_page_creates_a_radiologist_with_name_and_rpps(client, people, facade):
    sign_in(client, people["admin"])
    token = csrf(client, "/admin/users")
    client.post("/admin/users", data={"csrf_token": token, "login": "lbernard", "role": "radiologist",
                                      "password": PASSWORD, "full_name": "Léa BERNARD", "rpps": "100 0555 0001"})
    from backoffice.auth.models import User

    with facade.new_session() as s:
        user = s.scalar(select(User).where(User.login == "lbernard"))
        assert (user.full_name, user.rpps) == ("Léa BERNARD", "10005550001")


def test_cli_creates_with_name_and_rpps_and_refuses_a_bad_one(app, runner):
    """Bad input tried: an RPPS of 10 digits; the user is not created."""
    from backoffice.auth.models import User

    ok = runner.invoke(args=["users", "create", "radio", "--role", "radiologist", "--password-stdin",
                             "--full-name", "Camille DURAND", "--rpps", "10001234567"], input=PASSWORD + "\n")
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(args=["users", "create", "radio2", "--role", "radiologist", "--password-stdin",
                              "--rpps", "1000123456"], input=PASSWORD + "\n")
    assert bad.exit_code != 0 and "RPPS must be 11 digits" in bad.output
    with app.extensions["archivage"].new_session() as s:
        assert s.scalar(select(User.rpps).where(User.login == "radio")) == "10001234567"
        assert s.scalar(select(User.full_name).where(User.login == "radio")) == "Camille DURAND"
        assert s.scalar(select(User.id).where(User.login == "radio2")) is None
