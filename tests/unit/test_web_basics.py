"""Signing in and out, CSRF on forms, and the OpenAPI description."""

from __future__ import annotations

import pytest


@pytest.fixture
def desk_user(app):
    from backoffice.auth.services import create_user

    facade = app.extensions["archivage"]
    with facade.new_session(write=True) as s:
        create_user(s, "accueil", role="front_desk", password="correct horse battery")
        s.commit()


def _csrf(client, path="/login") -> str:
    import re

    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token"[^>]*?value="([^"]+)"', html).group(1)


def test_login_then_home_then_logout(client, desk_user):
    response = client.post("/login", data={"login": "accueil", "password": "correct horse battery",
                                           "csrf_token": _csrf(client)})
    assert response.status_code == 302
    home = client.get("/")
    assert home.status_code == 200 and "accueil" in home.get_data(as_text=True)
    assert client.post("/logout", data={"csrf_token": _csrf(client, "/")}).status_code == 302
    assert client.get("/").status_code == 302


def test_wrong_password_is_refused_and_audited(app, client, desk_user):
    from sqlalchemy import select

    from archive_core.audit import AuditEvent

    response = client.post("/login", data={"login": "accueil", "password": "wrong password!",
                                           "csrf_token": _csrf(client)})
    assert response.status_code == 401
    with app.extensions["archivage"].new_session() as s:
        assert s.scalar(select(AuditEvent.action).order_by(AuditEvent.id.desc())) == "login.failed"


def test_login_form_without_csrf_token_is_refused(client, desk_user):
    response = client.post("/login", data={"login": "accueil", "password": "correct horse battery"})
    assert response.status_code in (400, 200)
    assert client.get("/").status_code == 302  # not signed in


def test_openapi_lists_paths_for_a_token_holder(app, client):
    from backoffice.auth.services import create_token, create_user

    facade = app.extensions["archivage"]
    with facade.new_session(write=True) as s:
        create_user(s, "radio", role="radiologist", password="correct horse battery")
        token = create_token(s, "radio")
        s.commit()
    spec = client.get("/api/v1/openapi.json", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert spec["openapi"].startswith("3.")
    assert "/api/v1/openapi.json" in spec["paths"]
