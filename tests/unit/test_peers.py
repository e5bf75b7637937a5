"""A registered peer is its AE title and the address it connects from; the migration that added the address."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from archive_core.db import make_engine, session_factory, write_session
from archive_core.peers import PeerInfo, add_peer, connects_from, find_peer, register_command


def _peer(host: str, allowed_from: str | None = None) -> PeerInfo:
    return PeerInfo("CT_SALLE1", host, 104, False, allowed_from)


@pytest.mark.parametrize(
    "host, allowed_from, address, allowed",
    [
        ("192.168.1.20", None, "192.168.1.20", True),
        ("192.168.1.20", None, "192.168.1.21", False),  # another machine using the AE title
        ("192.168.1.20", None, "::ffff:192.168.1.20", True),  # IPv4 client of a server listening on ::
        ("192.168.1.20", "10.0.0.0/24", "10.0.0.77", True),  # --from a network
        ("192.168.1.20", "10.0.0.0/24", "10.0.1.77", False),
        ("192.168.1.20", "10.0.0.0/24", "192.168.1.20", True),  # HOST still counts
        ("192.168.1.20", "10.0.0.9/32", "10.0.0.9", True),
        ("192.168.1.20", "10.0.0.9", "10.0.0.10", False),
        ("localhost", None, "127.0.0.1", True),  # a host name is resolved
        ("localhost", None, "192.168.1.20", False),
        ("nowhere.invalid", None, "127.0.0.1", False),  # a name that does not resolve lets nobody in
        ("192.168.1.20", None, "", False),
        ("192.168.1.20", None, "not-an-address", False),
    ],
)
def test_which_addresses_a_peer_may_connect_from(host, allowed_from, address, allowed):
    assert connects_from(_peer(host, allowed_from), address) is allowed


def test_the_register_command_names_the_ae_and_the_address_it_came_from():
    assert register_command("CT_NEW", "10.0.0.7") == "flask --app wsgi peers add CT_NEW 10.0.0.7 104"
    # A registered AE seen from another address: keep its host, port and flags, add the address.
    known = PeerInfo("CHU_PACS", "10.0.0.5", 11112, True, None, True)
    assert register_command("CHU_PACS", "10.0.0.8", known) == (
        "flask --app wsgi peers add CHU_PACS 10.0.0.5 11112 --from 10.0.0.8 --external --tls")
    # An AE title with a space is quoted so the line can be pasted as it is.
    assert register_command("ECHO SCU", "10.0.0.7") == "flask --app wsgi peers add 'ECHO SCU' 10.0.0.7 104"


def test_peers_registered_before_the_migration_keep_their_host_as_their_only_address(database_url):
    """The migration adds --from and --tls to existing peers without letting anyone else in."""
    from alembic import command

    from backoffice.migrate import alembic_config, upgrade

    command.upgrade(alembic_config(database_url), "0001")
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO peer (ae_title, host, port, external, created_at) "
                          "VALUES ('OLD_CT', '192.168.1.30', 104, false, CURRENT_TIMESTAMP)"))
    upgrade(database_url)
    sessions = session_factory(engine)
    try:
        with sessions() as s:
            old = find_peer(s, "OLD_CT")
        assert (old.allowed_from, old.tls) == (None, False)
        assert connects_from(old, "192.168.1.30") and not connects_from(old, "192.168.1.31")
        with write_session(sessions) as s:
            add_peer(s, "NEW_US", "192.168.1.40", 104, allowed_from="10.1.2.3/16", tls=True)
        with sessions() as s:
            new = find_peer(s, "NEW_US")
        assert (new.allowed_from, new.tls) == ("10.1.0.0/16", True)
    finally:
        engine.dispose()


def test_a_host_name_is_resolved_at_most_once_a_minute(monkeypatch):
    """Resolution happens on the association path: a slow DNS must not be asked on every association."""
    import socket

    from archive_core import peers

    calls = []

    def getaddrinfo(host, *args, **kwargs):
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.168.1.50", 0))]

    monkeypatch.setattr(peers.socket, "getaddrinfo", getaddrinfo)
    peer = PeerInfo("ECHO_1", "echo1.cabinet.test", 104, False)
    assert connects_from(peer, "192.168.1.50") and connects_from(peer, "192.168.1.50")
    assert calls == ["echo1.cabinet.test"]
    monkeypatch.setattr(peers, "_RESOLVE_TTL_S", 0.0)  # the minute has passed
    assert connects_from(peer, "192.168.1.50")
    assert calls == ["echo1.cabinet.test"] * 2
