"""The associations we open to a peer: the presentation contexts we propose, the TLS handshake tried
first, the socket's tuning, and the C-MOVE destination's association (:class:`Capture`)."""

from __future__ import annotations

import functools
import logging
import socket
from dataclasses import dataclass, field
from typing import Iterable

from pydicom.uid import UID
from pynetdicom import build_context
from pynetdicom.presentation import PresentationContext

from archive_core.index.query import StoredInstance
from archive_core.net import tuning
from archive_core.net.conversion import UNCOMPRESSED
from archive_core.net.sender import flush_pending_responses, use_stored_sender

log = logging.getLogger(__name__)
MAX_CONTEXTS = 128
_REACTOR_TURN = 0.001  # the literal pynetdicom's reactor sleeps each turn


def proposed_contexts(instances: Iterable[StoredInstance]) -> list[PresentationContext]:
    """Contexts to ask a destination for: each stored (SOP class, transfer syntax), and an
    uncompressed little endian fallback per SOP class for the other syntaxes."""
    wanted: dict[tuple[str, str], None] = {}
    for inst in instances:
        wanted[(inst.sop_class_uid, inst.transfer_syntax_uid)] = None
    contexts: list[PresentationContext] = []
    fallbacks: list[PresentationContext] = []
    seen_fallback: set[str] = set()
    for sop_class, ts in wanted:
        contexts.append(build_context(sop_class, [ts]))
        if UID(ts) not in UNCOMPRESSED and sop_class not in seen_fallback:
            seen_fallback.add(sop_class)
            fallbacks.append(build_context(sop_class, list(UNCOMPRESSED)))
    chosen = (contexts + fallbacks)[:MAX_CONTEXTS]
    if len(contexts) + len(fallbacks) > MAX_CONTEXTS:
        log.warning("more than %d presentation contexts needed; some instances may fail", MAX_CONTEXTS)
    return chosen


@dataclass
class Capture:
    """Holds the association a C-MOVE opens to its destination, to read its accepted contexts."""

    assoc: object = None
    contexts: list[PresentationContext] = field(default_factory=list)
    # The C-MOVE's own association: its deferred pending responses go out after each C-STORE request.
    requestor: object = None

    def on_accepted(self, event) -> None:
        self.assoc = event.assoc
        self.contexts = list(event.assoc.accepted_contexts)
        use_stored_sender(event.assoc, hold_reactor=True)
        # Its reactor thread, not started yet, pauses at its first turn: the first C-STORE holds it
        # (sender.hold) without waiting for a turn of it.
        event.assoc._reactor_checkpoint.clear()
        if self.requestor is not None:
            event.assoc._archivage_after_send = functools.partial(flush_pending_responses, self.requestor)


def tune_socket(assoc, loop_delay: float) -> None:
    """Nagle off and no idle sleep in the DUL loop (as the server does for its associations)."""
    raw = assoc.dul.socket.socket if assoc.dul.socket else None
    tuning.set_nodelay(raw)
    assoc.dul._run_loop_delay = loop_delay
    if not loop_delay:
        tuning.tune_requestor(assoc)  # no spinning DUL (where tuning.install() routed pynetdicom's sleeps)
        # Its reactor thread sleeps 1 ms per turn before it looks whether it is asked to pause: once
        # asked (sender.hold, release), it skips that sleep and pauses at once.
        checkpoint = assoc._reactor_checkpoint
        assoc._archivage_wait = lambda seconds: seconds == _REACTOR_TURN and not checkpoint.is_set()
    # pynetdicom drops the socket of a connection the peer closed without closing it (its shutdown
    # fails first): kept here, closed by close_socket when the connection ends.
    assoc._archivage_socket = raw


def close_socket(event) -> None:
    """pynetdicom ``EVT_CONN_CLOSE`` on our own associations: see :func:`tune_socket`."""
    raw = getattr(event.assoc, "_archivage_socket", None)
    if raw is not None:
        raw.close()


def tls_refusal(host: str, port: int, tls_args, *, timeout: float) -> str | None:
    """Why a TLS handshake with the peer fails (its certificate, or no TLS there), or None when it
    succeeds or *tls_args* is None. pynetdicom leaks the socket of a failed handshake, and says less."""
    if tls_args is None:
        return None
    context, hostname = tls_args
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=hostname):
                return None
    except OSError as exc:  # ssl.SSLError is one
        return str(getattr(exc, "reason", None) or exc.strerror or exc)
