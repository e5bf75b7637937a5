"""What the SCP admits: associations in all and per calling address, and idle-timer upkeep.

pynetdicom's own ``maximum_associations`` counts every accepted TCP connection, also those that
have not sent their A-ASSOCIATE-RQ yet: a few dozen silent connections filled it and every
modality was refused until pynetdicom's ACSE timeout closed them. Here only associations that
asked (an A-ASSOCIATE-RQ arrived) count, per calling address and in all; a silent connection
holds a thread until ``DICOM_ACSE_TIMEOUT`` and nothing else.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ: rejected-transient, DUL service provider (presentation related), local limit exceeded.
LIMIT_REJECTION = (0x02, 0x03, 0x02)


class AssociationLimits:
    """Admits an association when it asks (pynetdicom's ``EVT_REQUESTED``), or rejects it."""

    def __init__(self, *, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        self._lock = threading.Lock()
        self._admitted: set = set()

    def _live(self) -> list:
        # Associations are threads: one that ended (released, aborted, killed) leaves by itself,
        # so no close event has to be seen for the count to stay right.
        self._admitted = {a for a in self._admitted if a.is_alive()}
        return list(self._admitted)

    def refusal(self, address: str, open_from: list[str]) -> str | None:
        """Why an association from *address* is refused while *open_from* (calling addresses) are open here."""
        return over_limits(self.total, self.per_address, address, open_from)

    def on_requested(self, event) -> None:
        assoc = event.assoc
        if assoc.is_rejected or assoc.is_aborted:
            return  # already refused (who may associate is checked first)
        address = assoc.requestor.address
        with self._lock:
            reason = self.refusal(address, [a.requestor.address for a in self._live()])
            if reason is None:
                self._admitted.add(assoc)
                return
        calling = str(getattr(assoc.requestor.primitive, "calling_ae_title", "") or "").strip()
        log.warning("association from %s (calling AE %s) rejected: %s", address, calling, reason)
        assoc.acse.send_reject(*LIMIT_REJECTION)
        # As pynetdicom does for its own rejections: wait until the rejection is sent, then end.
        assoc.kill()


def over_limits(total: int, per_address: int, address: str, open_from: list[str]) -> str | None:
    """Why one more association from *address* is refused when *open_from* are open (None: admitted)."""
    from_address = sum(1 for a in open_from if a == address)
    if len(open_from) >= total:
        return f"{len(open_from)} associations open (DICOM_MAX_ASSOCIATIONS={total})"
    if from_address >= per_address:
        return f"{from_address} associations open from {address} (DICOM_MAX_ASSOCIATIONS_PER_ADDRESS={per_address})"
    return None


def restart_idle_timer(assoc) -> None:
    """Count the end of an operation as activity.

    pynetdicom's idle timer restarts only when a PDU arrives, and its reactor looks at it right
    after a handler returns: a C-MOVE longer than ``DICOM_NETWORK_TIMEOUT`` would be aborted the
    moment it finished.
    """
    timer = getattr(getattr(assoc, "dul", None), "_idle_timer", None)
    if timer is not None:
        timer.restart()


def keeping_alive(handler):
    """*handler* (plain or generator), restarting the association's idle timer when it ends."""

    @functools.wraps(handler)
    def wrapper(event, *args):
        result = handler(event, *args)
        if inspect.isgenerator(result):
            return _restart_after(result, event.assoc)
        restart_idle_timer(event.assoc)
        return result

    return wrapper


def _restart_after(generator, assoc):
    try:
        return (yield from generator)
    finally:
        restart_idle_timer(assoc)
