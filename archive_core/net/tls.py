"""DICOM TLS (PS3.15 B.1): the SSL contexts of the SCP's TLS port and of our associations to peers registered --tls."""

from __future__ import annotations

import ssl

from archive_core.config import Settings
from archive_core.errors import ArchiveError


class TLSConfigError(ArchiveError):
    """The DICOM_TLS_* settings cannot make a working TLS endpoint."""


class _HandshakeInConnectionThread(ssl.SSLContext):
    """pynetdicom wraps each accepted socket in its accept loop; a handshake there would let one
    silent client hold up every other connection. The handshake happens on the first read instead,
    in the association's own thread, under its network timeout."""

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True, **kwargs):
        return super().wrap_socket(sock, server_side=server_side, do_handshake_on_connect=False, **kwargs)


def _minimum(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195
    return context


def server_context(settings: Settings) -> ssl.SSLContext:
    """The context of the TLS port: our certificate; peers' certificates checked against DICOM_TLS_CA."""
    if not settings.DICOM_TLS_CERT or not settings.DICOM_TLS_KEY:
        raise TLSConfigError("DICOM_TLS_PORT needs DICOM_TLS_CERT and DICOM_TLS_KEY")
    if settings.DICOM_TLS_REQUIRE_CLIENT_CERT and not settings.DICOM_TLS_CA:
        raise TLSConfigError("DICOM_TLS_REQUIRE_CLIENT_CERT needs DICOM_TLS_CA (the CA of the peers' certificates)")
    context = _minimum(_HandshakeInConnectionThread(ssl.PROTOCOL_TLS_SERVER))
    try:
        context.load_cert_chain(settings.DICOM_TLS_CERT, settings.DICOM_TLS_KEY)
        if settings.DICOM_TLS_CA:
            context.load_verify_locations(cafile=settings.DICOM_TLS_CA)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"cannot load the DICOM TLS certificate, key or CA: {exc}") from exc
    if settings.DICOM_TLS_REQUIRE_CLIENT_CERT:
        context.verify_mode = ssl.CERT_REQUIRED
    elif settings.DICOM_TLS_CA:
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def client_context(settings: Settings) -> ssl.SSLContext:
    """The context of our associations to a peer registered --tls: its certificate must be signed by
    DICOM_TLS_CA (the system's CAs when unset) and name the peer's HOST; ours is presented when set."""
    context = _minimum(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    try:
        if settings.DICOM_TLS_CA:
            context.load_verify_locations(cafile=settings.DICOM_TLS_CA)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if settings.DICOM_TLS_CERT and settings.DICOM_TLS_KEY:
            context.load_cert_chain(settings.DICOM_TLS_CERT, settings.DICOM_TLS_KEY)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"cannot load the DICOM TLS certificate, key or CA: {exc}") from exc
    return context


def tls_args(settings: Settings, peer) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``associate(tls_args=...)`` for *peer*: None unless it is registered --tls."""
    return (client_context(settings), peer.host) if getattr(peer, "tls", False) else None


def is_tls(assoc) -> bool:
    sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    return isinstance(sock, ssl.SSLSocket)
