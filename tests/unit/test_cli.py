"""The public command line: users, the first admin, API tokens, DICOM peers (through the Flask CLI runner)."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

PASSWORD = "un mot de passe solide"


def _authenticates(app, login: str, password: str) -> bool:
    from backoffice.auth.services import AuthError, authenticate

    with app.extensions["archivage"].new_session() as s:
        try:
            authenticate(s, login, password)
            return True
        except AuthError:
            return False


def test_users_create_reads_the_password_from_stdin(app, runner):
    result = runner.invoke(args=["users", "create", "accueil", "--role", "front_desk", "--password-stdin"],
                           input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    assert _authenticates(app, "accueil", PASSWORD)
    from backoffice.auth.models import User

    with app.extensions["archivage"].new_session() as s:
        assert s.scalar(select(User.role).where(User.login == "accueil")) == "front_desk"


@pytest.mark.parametrize(
    "args, stdin, message",
    [
        (["users", "create", "court", "--role", "manager", "--password-stdin"], "trop\n", "at least 10"),
        (["users", "create", "x", "--role", "chef", "--password-stdin"], PASSWORD + "\n", "Invalid value"),
    ],
    ids=["short password", "unknown role"],
)
def test_users_create_refuses_bad_input(app, runner, args, stdin, message):
    result = runner.invoke(args=args, input=stdin)
    assert result.exit_code != 0
    assert message in result.output


def test_users_create_refuses_an_existing_login(app, runner):
    args = ["users", "create", "radio", "--role", "radiologist", "--password-stdin"]
    assert runner.invoke(args=args, input=PASSWORD + "\n").exit_code == 0
    again = runner.invoke(args=args, input="un autre mot de passe\n")
    assert again.exit_code == 1 and "exists" in again.output
    assert _authenticates(app, "radio", PASSWORD)


def _bootstrap_password(output: str) -> str:
    return re.search(r"password \(shown once\): (\S+)", output).group(1)


def test_users_bootstrap_creates_the_admin_once(app, runner):
    first = runner.invoke(args=["users", "bootstrap"])
    assert first.exit_code == 0, first.output
    password = _bootstrap_password(first.output)
    assert len(password) >= 12
    assert _authenticates(app, "admin", password)
    second = runner.invoke(args=["users", "bootstrap"])
    assert second.exit_code == 0
    assert "no admin created" in second.output and password not in second.output
    assert _authenticates(app, "admin", password)  # unchanged


def test_users_bootstrap_passwords_are_generated(tmp_path):
    """Two fresh instances get two different admin passwords: no literal in the code."""
    from backoffice import create_app
    from backoffice.migrate import upgrade

    passwords = []
    for name in ("a", "b"):
        app = create_app({"TESTING": True, "INSTANCE_PATH": str(tmp_path / name)})
        try:
            upgrade(app.extensions["archivage"].settings.database_url)
            passwords.append(_bootstrap_password(app.test_cli_runner().invoke(args=["users", "bootstrap"]).output))
        finally:
            app.extensions["archivage"].archive.close()
    assert passwords[0] != passwords[1]


def test_tokens_create_prints_a_usable_token_on_the_last_line(app, runner, client):
    runner.invoke(args=["users", "create", "radio", "--role", "radiologist", "--password-stdin"], input=PASSWORD + "\n")
    result = runner.invoke(args=["tokens", "create", "radio"])
    assert result.exit_code == 0, result.output
    token = result.output.strip().splitlines()[-1]
    ok = client.get("/api/v1/openapi.json", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and ok.get_json()["openapi"].startswith("3.")
    wrong = client.get("/api/v1/openapi.json", headers={"Authorization": f"Bearer {token}x"})
    assert wrong.status_code == 401


def test_tokens_create_for_an_unknown_user_fails(app, runner):
    result = runner.invoke(args=["tokens", "create", "personne"])
    assert result.exit_code == 1 and "no user personne" in result.output


def test_peers_add_list_remove(app, runner):
    assert runner.invoke(args=["peers", "add", "CT_SALLE1", "192.168.1.20", "104"]).exit_code == 0
    added = runner.invoke(args=["peers", "add", "CHU_PACS", "10.0.0.5", "11112", "--external"])
    assert added.exit_code == 0 and "(external)" in added.output
    listed = runner.invoke(args=["peers", "list"]).output.splitlines()
    assert listed == ["CHU_PACS\t10.0.0.5\t11112\texternal", "CT_SALLE1\t192.168.1.20\t104"]
    # Adding again updates the peer rather than duplicating it.
    assert runner.invoke(args=["peers", "add", "CT_SALLE1", "192.168.1.21", "4242"]).exit_code == 0
    removed = runner.invoke(args=["peers", "remove", "CHU_PACS"])
    assert removed.exit_code == 0
    assert runner.invoke(args=["peers", "list"]).output.splitlines() == ["CT_SALLE1\t192.168.1.21\t4242"]


def test_peers_add_from_a_network_and_with_tls(app, runner):
    """--from takes an address or a network (stored in its canonical form), --tls is shown in the list."""
    added = runner.invoke(args=["peers", "add", "CT_SALLE1", "192.168.1.20", "104", "--from", "10.0.0.17/24"])
    assert added.exit_code == 0, added.output
    assert "from 10.0.0.0/24" in added.output
    assert runner.invoke(args=["peers", "add", "CHU_PACS", "pacs.chu.example", "11112", "--tls"]).exit_code == 0
    single = runner.invoke(args=["peers", "add", "US_1", "192.168.1.30", "104", "--from", "10.0.0.9/32"])
    assert "from 10.0.0.9)" in single.output  # one address is shown as an address
    assert runner.invoke(args=["peers", "list"]).output.splitlines() == [
        "CHU_PACS\tpacs.chu.example\t11112\ttls",
        "CT_SALLE1\t192.168.1.20\t104\tfrom 10.0.0.0/24",
        "US_1\t192.168.1.30\t104\tfrom 10.0.0.9",
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["peers", "add", "A_TITLE_TOO_LONG_X", "h", "104"], "1 to 16"),
        (["peers", "add", "CT\\1", "h", "104"], "1 to 16"),
        (["peers", "add", "   ", "h", "104"], "1 to 16"),
        (["peers", "add", "CT1", "h", "0"], "between 1 and 65535"),
        (["peers", "add", "CT1", "h", "65536"], "between 1 and 65535"),
        (["peers", "add", "CT1", "h", "cent-quatre"], "not a valid integer"),
        (["peers", "remove", "INCONNU"], "no peer INCONNU"),
        (["peers", "add", "CT1", "h", "104", "--from", "192.168.1.300"], "IP address or a network"),
        (["peers", "add", "CT1", "h", "104", "--from", "salle-scanner"], "IP address or a network"),
        (["peers", "add", "CT1", "h", "104", "--from", "10.0.0.0/33"], "IP address or a network"),
        (["peers", "add", "CT1", "", "104"], "HOST is a host name"),
    ],
    ids=["ae too long", "ae backslash", "ae blank", "port 0", "port too high", "port not a number", "remove unknown",
         "from bad address", "from a name", "from bad prefix", "host blank"],
)
def test_peers_refuse_bad_input(app, runner, args, message):
    result = runner.invoke(args=args)
    assert result.exit_code != 0
    assert message in result.output
    assert runner.invoke(args=["peers", "list"]).output == ""
