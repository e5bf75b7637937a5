"""Every page and API route declares its roles; walk them all with every role and with no login."""

from __future__ import annotations

import re

import pytest

from backoffice.auth.models import ROLES

# The only routes open without an account (DESIGN.md): signing in, static files, share links.
# Choosing the interface language is open too: the login page offers it before anyone signs in.
PUBLIC_ENDPOINTS = {"auth.login", "static", "i18n.set_language"}
PUBLIC_PREFIXES = ("share.",)


def _routes(app):
    for rule in app.url_map.iter_rules():
        if rule.endpoint in PUBLIC_ENDPOINTS or rule.endpoint.startswith(PUBLIC_PREFIXES):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", "1", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield rule, path, method


@pytest.fixture
def users(app):
    from backoffice.auth.services import create_token, create_user

    facade = app.extensions["archivage"]
    tokens = {}
    with facade.new_session(write=True) as s:
        for role in ROLES:
            user = create_user(s, f"user_{role}", role=role, password="correct horse battery")
            tokens[role] = (user.id, create_token(s, user.login))
        s.commit()
    return tokens


def test_every_route_declares_its_roles(app):
    undeclared = [rule.endpoint for rule, _p, _m in _routes(app)
                  if not hasattr(app.view_functions[rule.endpoint], "allowed_roles")]
    assert undeclared == []


def test_without_login_pages_redirect_and_api_answers_json_401(app, client):
    app.config["WTF_CSRF_ENABLED"] = False
    for rule, path, method in _routes(app):
        response = client.open(path, method=method)
        if path.startswith(("/api/", "/dicom-web/", "/wado")):  # no browser to redirect: 401
            assert response.status_code == 401, (method, path)
            assert response.get_json()["error"]["code"] == "unauthorized"
        else:
            assert response.status_code == 302 and "/login" in response.headers["Location"], (method, path)


def test_a_wrong_token_is_refused(client):
    response = client.get("/api/v1/openapi.json", headers={"Authorization": "Bearer not-a-token"})
    assert response.status_code == 401


@pytest.mark.parametrize("role", ROLES)
def test_each_role_reaches_exactly_its_routes(app, client, users, role):
    app.config["WTF_CSRF_ENABLED"] = False
    user_id, token = users[role]
    for rule, path, method in _routes(app):
        with client.session_transaction() as session:  # signed in again: POST /logout signs out
            session["_user_id"] = str(user_id)
            session["_fresh"] = True
        allowed = role in app.view_functions[rule.endpoint].allowed_roles
        headers = {"Authorization": f"Bearer {token}"} if path.startswith("/api/") else {}
        response = client.open(path, method=method, headers=headers, json={} if method != "GET" else None)
        if allowed:
            assert response.status_code not in (401, 403), (role, method, path, response.status_code)
        else:
            assert response.status_code == 403, (role, method, path, response.status_code)
