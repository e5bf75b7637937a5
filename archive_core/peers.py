"""The registry of known DICOM peers (modalities, workstations, other archives)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from archive_core.errors import NotFound, UnknownPeer
from archive_core.index.models import Peer

AE_TITLE_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _-.")


@dataclass(frozen=True)
class PeerInfo:
    ae_title: str
    host: str
    port: int
    external: bool


def _info(p: Peer) -> PeerInfo:
    return PeerInfo(p.ae_title, p.host, p.port, p.external)


def validate_ae_title(ae_title: str) -> str:
    title = ae_title.strip()
    if not 0 < len(title) <= 16 or not set(title) <= AE_TITLE_CHARS:
        raise ValueError("an AE title is 1 to 16 letters, digits, spaces or _-.")
    return title


def add_peer(session: Session, ae_title: str, host: str, port: int, *, external: bool = False) -> PeerInfo:
    title = validate_ae_title(ae_title)
    if not 0 < int(port) < 65536:
        raise ValueError("port must be between 1 and 65535")
    peer = session.scalar(select(Peer).where(Peer.ae_title == title))
    if peer is None:
        peer = Peer(ae_title=title)
        session.add(peer)
    peer.host, peer.port, peer.external = host, int(port), external
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
