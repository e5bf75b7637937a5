"""Accounts: sign-in without lockout or login oracle, server-side sessions, token expiry and revocation, the
`users`/`tokens` commands and the admin's pages."""

from __future__ import annotations

import re
import statistics
import time
from datetime import datetime, timedelta, timezone

import pytest

from backoffice.auth import services as A
from tests.helpers import migration_drift

PASSWORD = "correct horse battery"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def _csrf(client, path="/login") -> str:
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token"[^>]*?value="([^"]+)"', html).group(1)


def _login(client, login, password=PASSWORD, address="10.0.0.1"):
    return client.post("/login", data={"login": login, "password": password, "csrf_token": _csrf(client)},
                       environ_base={"REMOTE_ADDR": address})


def _flash(response) -> str:
    return " ".join(re.findall(r'<p class="error">(.*?)</p>', response.get_data(as_text=True), re.S))


@pytest.fixture(autouse=True)
def _production_password_hashes(_cheap_password_hashes, monkeypatch):
    """This module signs in against the archive's real argon2 parameters (tests/conftest.py lowers them
    elsewhere): the timing test below needs a hash that costs what it costs in production."""
    monkeypatch.setattr(A, "_hasher", _cheap_password_hashes)
    monkeypatch.setattr(A, "_dummy_hash", None)


def test_passwords_are_hashed_with_argon2id_at_the_rfc_9106_cost(app):
    """64 MiB, 3 passes, 4 lanes (argon2-cffi's default profile): what the database keeps of a password."""
    with app.extensions["archivage"].new_session(write=True) as s:
        user = A.create_user(s, "cost", role="radiologist", password=PASSWORD)
        assert user.password_hash.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
        assert PASSWORD not in user.password_hash


@pytest.fixture
def people(app):
    with app.extensions["archivage"].new_session(write=True) as s:
        ids = {login: A.create_user(s, login, role=role, password=PASSWORD).id
               for login, role in (("radio", "radiologist"), ("accueil", "front_desk"), ("chef", "admin"))}
        s.commit()
    return ids


# -- signing in ----------------------------------------------------------------------------------------


def test_one_message_for_unknown_login_wrong_password_disabled_account_and_backoff(app, client, people):
    """Before: a locked account said "compte verrouillé", which told anyone the login existed."""
    with app.extensions["archivage"].new_session(write=True) as s:
        A.set_active(s, "accueil", False)
        s.commit()
    answers = [_login(client, "nobody-here", "whatever it is"), _login(client, "radio", "wrong password!"),
               _login(client, "accueil")]
    for _ in range(6):
        answers.append(_login(client, "radio", "wrong password!", address="10.0.0.9"))
    messages = {_flash(r) for r in answers}
    assert len(messages) == 1 and "incorrect" in messages.pop()
    assert {r.status_code for r in answers} <= {401, 429}
    assert all("verrouill" not in r.get_data(as_text=True) for r in answers)


def test_every_refusal_costs_one_password_verification(app, monkeypatch, people):
    """Before: an unknown login hashed (~100 ms) while a locked known login answered at once (~4 ms)."""
    calls = []

    class Counting:
        def __init__(self, real):
            self.real = real

        def hash(self, password):
            return self.real.hash(password)

        def verify(self, password_hash, password):
            calls.append(1)
            return self.real.verify(password_hash, password)

    monkeypatch.setattr(A, "_hasher", Counting(A._hasher))
    facade = app.extensions["archivage"]
    with facade.new_session(write=True) as s:
        A.set_active(s, "accueil", False)
        for login, password in (("nobody", "x" * 12), ("radio", "wrong password"), ("accueil", PASSWORD)):
            before = len(calls)
            with pytest.raises(A.LoginRefused):
                A.authenticate(s, login, password, address="10.0.0.1", now=T0)
            assert len(calls) == before + 1, login
        for n in range(4):  # radio from 10.0.0.2: the fourth failure starts a wait
            with pytest.raises(A.LoginRefused):
                A.authenticate(s, "radio", "wrong password", address="10.0.0.2", now=T0)
        before = len(calls)
        with pytest.raises(A.LoginRefused) as waiting:
            A.authenticate(s, "radio", PASSWORD, address="10.0.0.2", now=T0)
        assert waiting.value.retry_after_s >= 1 and len(calls) == before + 1  # still one verification


def test_unknown_and_known_logins_take_about_as_long(client, people):
    """Medians of interleaved attempts (load on the machine hits both alike); a factor of 3 tolerates noise,
    not a skipped hash (argon2 takes tens of ms; the old locked-account shortcut answered ~25 times faster).
    Each attempt comes from its own address so that no backoff applies."""
    def attempt(login: str, address: str) -> float:
        token = _csrf(client)
        start = time.perf_counter()
        client.post("/login", data={"login": login, "password": "wrong password!", "csrf_token": token},
                    environ_base={"REMOTE_ADDR": address})
        return time.perf_counter() - start

    attempt("warm-up", "10.1.0.1")  # the first request compiles templates and makes the dummy hash
    unknown, known = [], []
    for n in range(7):
        unknown.append(attempt("nobody-at-all", f"10.1.1.{n}"))
        known.append(attempt("radio", f"10.1.2.{n}"))
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 1 / 3 < ratio < 3, (unknown, known)


def test_backoff_grows_with_failures_and_ends_on_its_own(db_app):
    """No hard lock: after three free failures from one place, each failure doubles the wait (the right
    password is refused during the wait, accepted after it). On SQLite and PostgreSQL."""
    with db_app.extensions["archivage"].new_session(write=True) as s:
        now = T0
        waits = []
        for n in range(1, 8):
            with pytest.raises(A.LoginRefused):
                A.authenticate(s, "radio", "wrong password", address="10.0.0.5", now=now)
            if n < 4:
                continue
            with pytest.raises(A.LoginRefused) as refused:
                A.authenticate(s, "radio", PASSWORD, address="10.0.0.5", now=now)  # right password, too soon
            waits.append(refused.value.retry_after_s)
            now += timedelta(seconds=refused.value.retry_after_s)
        assert waits == [1, 2, 4, 8]
        assert A.authenticate(s, "radio", PASSWORD, address="10.0.0.5", now=now).login == "radio"


def test_a_stranger_cannot_lock_the_radiologist_out(app, people):
    """Before: six wrong passwords from anywhere locked the account for 15 minutes. Now a stranger guessing
    as fast as the backoff allows delays the radiologist's own desk by a minute at most."""
    with app.extensions["archivage"].new_session(write=True) as s:
        now, counted = T0, 0
        while counted < 40:
            try:
                A.authenticate(s, "radio", f"guess {counted}", address="203.0.113.7", now=now)
            except A.LoginRefused as refused:
                if refused.retry_after_s:
                    now += timedelta(seconds=refused.retry_after_s)
                else:
                    counted += 1
        with pytest.raises(A.LoginRefused) as refused:
            A.authenticate(s, "radio", PASSWORD, address="10.0.0.20", now=now)
        assert 1 <= refused.value.retry_after_s <= 60
        later = now + timedelta(seconds=61)
        assert A.authenticate(s, "radio", PASSWORD, address="10.0.0.20", now=later).login == "radio"
        # The stranger's address still waits, whatever login it tries next.
        with pytest.raises(A.LoginRefused):
            A.authenticate(s, "accueil", PASSWORD, address="203.0.113.7", now=later)


def test_one_address_trying_many_logins_is_slowed_down(app, people):
    with app.extensions["archivage"].new_session(write=True) as s:
        for n in range(12):
            with pytest.raises(A.LoginRefused):
                A.authenticate(s, f"user{n}", "guess guess", address="198.51.100.1", now=T0)
        with pytest.raises(A.LoginRefused) as refused:
            A.authenticate(s, "accueil", PASSWORD, address="198.51.100.1", now=T0)
        assert refused.value.retry_after_s >= 1
        assert A.authenticate(s, "accueil", PASSWORD, address="10.0.0.30", now=T0).login == "accueil"


# -- sessions ------------------------------------------------------------------------------------------


@pytest.fixture
def db_app(db_app):
    """The shared app (tests/unit/conftest.py: SQLite and PostgreSQL, where sessions live in the shared
    database) with a radiologist."""
    with db_app.extensions["archivage"].new_session(write=True) as s:
        A.create_user(s, "radio", role="radiologist", password=PASSWORD)
        s.commit()
    return db_app


def _cookie(client, app) -> str:
    return client.get_cookie(app.config["SESSION_COOKIE_NAME"]).value


def test_a_session_cookie_copied_before_logout_is_worthless_after(db_app):
    """Before: the signed cookie held the session itself, so a copy kept working after logout."""
    client = db_app.test_client()
    assert _login(client, "radio").status_code == 302
    stolen = _cookie(client, db_app)
    assert "radio" not in stolen and "_user_id" not in stolen  # the cookie is an opaque id
    thief = db_app.test_client()
    thief.set_cookie(db_app.config["SESSION_COOKIE_NAME"], stolen)
    assert thief.get("/").status_code == 200  # the copy works while the session lives
    client.post("/logout", data={"csrf_token": _csrf(client, "/")})
    assert client.get("/").status_code == 302
    assert thief.get("/").status_code == 302 and "/login" in thief.get("/").headers["Location"]
    from sqlalchemy import func, select

    from backoffice.auth.models import WebSession

    with db_app.extensions["archivage"].new_session() as s:
        assert s.scalar(select(func.count()).select_from(WebSession).where(WebSession.user_pk.is_not(None))) == 0


def test_signing_in_gives_a_new_session_id(db_app):
    """Session fixation: an id planted before sign-in is not the one that gets signed in."""
    client = db_app.test_client()
    _csrf(client)
    planted = _cookie(client, db_app)
    _login(client, "radio")
    assert _cookie(client, db_app) != planted
    other = db_app.test_client()
    other.set_cookie(db_app.config["SESSION_COOKIE_NAME"], planted)
    assert other.get("/").status_code == 302


def test_disable_passwd_and_enable_from_the_command_line(db_app):
    """`users disable` ends sessions and tokens at once; `users passwd` ends sessions; `users enable` restores."""
    runner = db_app.test_cli_runner()
    client = db_app.test_client()
    _login(client, "radio")
    token = runner.invoke(args=["tokens", "create", "radio"]).output.strip().splitlines()[-1]
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/openapi.json", headers=bearer).status_code == 200

    result = runner.invoke(args=["users", "disable", "radio"])
    assert result.exit_code == 0, result.output
    assert client.get("/").status_code == 302
    assert client.get("/api/v1/openapi.json", headers=bearer).status_code == 401
    assert _login(client, "radio").status_code == 401

    assert runner.invoke(args=["users", "enable", "radio"]).exit_code == 0
    assert client.get("/api/v1/openapi.json", headers=bearer).status_code == 200
    _login(client, "radio", address="10.0.0.77")
    assert client.get("/").status_code == 200

    result = runner.invoke(args=["users", "passwd", "radio", "--password-stdin"], input="a brand new secret\n")
    assert result.exit_code == 0, result.output
    assert client.get("/").status_code == 302
    assert _login(client, "radio", address="10.0.0.78").status_code == 401
    assert _login(client, "radio", "a brand new secret", address="10.0.0.78").status_code == 302

    short = runner.invoke(args=["users", "passwd", "radio", "--password-stdin"], input="short\n")
    assert short.exit_code != 0 and "10" in short.output
    assert runner.invoke(args=["users", "disable", "nobody"]).exit_code != 0


# -- tokens --------------------------------------------------------------------------------------------


def test_tokens_expire_list_and_revoke(app, runner, client, people):
    """Before: tokens never expired and could not be revoked."""
    app.config["API_TOKEN_LIFETIME_DAYS"] = 7
    created = runner.invoke(args=["tokens", "create", "radio"])
    assert created.exit_code == 0
    token = created.output.strip().splitlines()[-1]  # public contract: the token on the last line
    forever = runner.invoke(args=["tokens", "create", "radio", "--days", "0"]).output.strip().splitlines()[-1]
    listing = runner.invoke(args=["tokens", "list", "radio"]).output
    rows = [line.split("\t") for line in listing.strip().splitlines()[1:]]
    assert [r[1] for r in rows] == ["active", "active"] and token not in listing
    created_at, expires_at = datetime.fromisoformat(rows[0][2]), datetime.fromisoformat(rows[0][3])
    assert timedelta(days=7) - timedelta(seconds=5) <= expires_at - created_at <= timedelta(days=7)
    assert rows[1][3] == "never"

    facade = app.extensions["archivage"]
    with facade.new_session() as s:
        assert A.user_for_token(s, token, now=created_at + timedelta(days=6)).login == "radio"
        assert A.user_for_token(s, token, now=created_at + timedelta(days=7, seconds=1)) is None
        assert A.user_for_token(s, forever, now=created_at + timedelta(days=3650)).login == "radio"

    bearer = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/openapi.json", headers=bearer).status_code == 200
    result = runner.invoke(args=["tokens", "revoke", rows[0][0]])
    assert result.exit_code == 0, result.output
    assert client.get("/api/v1/openapi.json", headers=bearer).status_code == 401
    assert runner.invoke(args=["tokens", "list", "radio"]).output.splitlines()[1].split("\t")[1] == "revoked"
    assert runner.invoke(args=["tokens", "revoke", "999999"]).exit_code != 0


# -- admin pages ---------------------------------------------------------------------------------------


def _sign_in(client, user_id):
    with client.session_transaction() as session:
        session["_user_id"] = str(user_id)
        session["_fresh"] = True


def test_admin_pages_disable_reset_role_revoke_and_create(app, client, people):
    facade = app.extensions["archivage"]
    with facade.new_session(write=True) as s:
        token = A.create_token(s, "radio")
        s.commit()
    radio = app.test_client()
    _sign_in(radio, people["radio"])
    assert radio.get("/admin/users").status_code == 403  # admins only
    assert radio.get("/").status_code == 200

    _sign_in(client, people["chef"])
    page = client.get("/admin/users")
    assert page.status_code == 200 and "radio" in page.get_data(as_text=True)
    csrf = _csrf(client, "/admin/users")
    client.post(f"/admin/users/{people['radio']}/disable", data={"csrf_token": csrf})
    assert radio.get("/").status_code == 302
    assert client.get("/api/v1/openapi.json", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert "désactivé" in client.get("/admin/users").get_data(as_text=True)
    client.post(f"/admin/users/{people['radio']}/enable", data={"csrf_token": csrf})

    _sign_in(radio, people["radio"])
    client.post(f"/admin/users/{people['radio']}/password", data={"csrf_token": csrf, "password": "short"})
    assert radio.get("/").status_code == 200  # refused: too short, nothing changed
    client.post(f"/admin/users/{people['radio']}/password", data={"csrf_token": csrf, "password": "new secret 2026"})
    assert radio.get("/").status_code == 302
    with facade.new_session(write=True) as s:
        assert A.authenticate(s, "radio", "new secret 2026", address="10.9.9.9").login == "radio"
        token_id = A.list_tokens(s, "radio")[0].id
        s.commit()

    client.post(f"/admin/users/{people['radio']}/role", data={"csrf_token": csrf, "role": "manager"})
    client.post(f"/admin/tokens/{token_id}/revoke", data={"csrf_token": csrf})
    client.post("/admin/users", data={"csrf_token": csrf, "login": "nouvelle", "role": "front_desk",
                                      "password": "long enough pass"})
    with facade.new_session() as s:
        assert A.get_user(s, "radio").role == "manager"
        assert A.list_tokens(s, "radio")[0].revoked_at is not None
        assert A.get_user(s, "nouvelle").role == "front_desk"
    # An admin cannot disable themselves (nobody would be left to undo it).
    client.post(f"/admin/users/{people['chef']}/disable", data={"csrf_token": csrf})
    assert client.get("/admin/users").status_code == 200


def test_migration_1000_matches_the_account_models(tmp_path):
    """The tables the sessions, the throttle and token expiry use are exactly what `db upgrade` creates."""
    assert migration_drift(tmp_path, "web_session", "login_throttle", "api_token") == []
