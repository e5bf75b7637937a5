"""The registry of known DICOM peers (modalities, workstations, other archives) and who they are on the wire.

A registered peer is its AE title *and* the address its associations come from: the addresses its
HOST resolves to, or the address or network given with ``--from``.
"""

from __future__ import annotations

import ipaddress
import shlex
import socket
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from archive_core.errors import NotFound, UnknownPeer
from archive_core.index.models import Peer

AE_TITLE_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _-.")
# The port written in the command that would register an unknown AE: DICOM's well-known port
# (the peer's own listening port is not on the wire; the operator corrects it if it differs).
DEFAULT_PEER_PORT = 104
_RESOLVE_TTL_S = 60.0


@dataclass(frozen=True)
class PeerInfo:
    ae_title: str
    host: str
    port: int
    external: bool
    allowed_from: str | None = None
    tls: bool = False


def _info(p: Peer) -> PeerInfo:
    return PeerInfo(p.ae_title, p.host, p.port, p.external, p.allowed_from, bool(p.tls))


def validate_ae_title(ae_title: str) -> str:
    title = ae_title.strip()
    if not 0 < len(title) <= 16 or not set(title) <= AE_TITLE_CHARS:
        raise ValueError("an AE title is 1 to 16 letters, digits, spaces or _-.")
    return title


def validate_network(value: str) -> str:
    """An IP address or network (CIDR) in its canonical form (one address: without its /32 or /128);
    ``ValueError`` otherwise."""
    try:
        network = ipaddress.ip_network(value.strip(), strict=False)
        return str(network.network_address) if network.num_addresses == 1 else str(network)
    except ValueError:
        raise ValueError(f"--from takes an IP address or a network such as 192.168.1.0/24, not {value.strip()!r}") from None


def add_peer(session: Session, ae_title: str, host: str, port: int, *, external: bool = False,
             allowed_from: str | None = None, tls: bool = False) -> PeerInfo:
    """Register (or re-register) a peer; its associations must come from *host* or *allowed_from*."""
    title = validate_ae_title(ae_title)
    host = host.strip()
    if not host or any(c.isspace() for c in host):
        raise ValueError("HOST is a host name or an IP address")
    if not 0 < int(port) < 65536:
        raise ValueError("port must be between 1 and 65535")
    network = validate_network(allowed_from) if allowed_from else None
    peer = session.scalar(select(Peer).where(Peer.ae_title == title))
    if peer is None:
        peer = Peer(ae_title=title)
        session.add(peer)
    peer.host, peer.port, peer.external, peer.allowed_from, peer.tls = host, int(port), external, network, tls
    session.flush()
    return _info(peer)


def remove_peer(session: Session, ae_title: str) -> None:
    peer = session.scalar(select(Peer).where(Peer.ae_title == ae_title.strip()))
    if peer is None:
        raise NotFound(f"no peer {ae_title.strip()}")
    session.delete(peer)
    session.flush()


def list_peers(session: Session) -> list[PeerInfo]:
    return [_info(p) for p in session.scalars(select(Peer).order_by(Peer.ae_title))]


def find_peer(session: Session, ae_title: str) -> PeerInfo | None:
    peer = session.scalar(select(Peer).where(Peer.ae_title == ae_title.strip()))
    return _info(peer) if peer else None


def get_peer(session: Session, ae_title: str) -> PeerInfo:
    peer = find_peer(session, ae_title)
    if peer is None:
        raise UnknownPeer(f"{ae_title.strip()} is not a registered peer")
    return peer


# -- who is on the wire -----------------------------------------------------------------------------


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    # A server listening on "::" sees IPv4 clients as ::ffff:a.b.c.d.
    mapped = getattr(addr, "ipv4_mapped", None)
    return mapped or addr


_resolved: dict[str, tuple[float, frozenset]] = {}
_resolved_lock = threading.Lock()


def resolve(host: str) -> frozenset:
    """The addresses *host* resolves to (an IP literal is itself), cached for a minute; empty if it does not resolve."""
    literal = _address(host)
    if literal is not None:
        return frozenset({literal})
    now = time.monotonic()
    with _resolved_lock:
        hit = _resolved.get(host)
    if hit and now - hit[0] < _RESOLVE_TTL_S:
        return hit[1]
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        found = frozenset(a for a in (_address(info[4][0]) for info in infos) if a is not None)
    except OSError:
        found = frozenset()
    with _resolved_lock:
        _resolved[host] = (now, found)
    return found


def connects_from(peer: PeerInfo, address: str) -> bool:
    """Whether an association coming from *address* may be *peer*'s: its HOST, or its ``--from``."""
    addr = _address(address or "")
    if addr is None:
        return False
    if peer.allowed_from:
        network = ipaddress.ip_network(peer.allowed_from, strict=False)
        if addr.version == network.version and addr in network:
            return True
    return addr in resolve(peer.host)


def register_command(ae_title: str, address: str, peer: PeerInfo | None = None) -> str:
    """The one command line that would let *ae_title* connect from *address*."""
    if peer is None:
        return f"flask --app wsgi peers add {shlex.quote(ae_title)} {address} {DEFAULT_PEER_PORT}"
    flags = "".join([" --external" if peer.external else "", " --tls" if peer.tls else ""])
    return (f"flask --app wsgi peers add {shlex.quote(peer.ae_title)} {peer.host} {peer.port}"
            f" --from {address}{flags}")
