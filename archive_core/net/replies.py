"""What the DIMSE handlers answer with, written once: a failure status, the failure that answers an
exception, and the C-FIND answering loop that stops at a cancel or at DICOM_MAX_FIND_RESULTS
(Query/Retrieve and the Modality Worklist)."""

from __future__ import annotations

import logging
from typing import Iterable, Iterator, TypeVar

from pydicom.dataset import Dataset

from archive_core.errors import ArchiveError
from archive_core.net.status import CANCEL, TOO_MANY_MATCHES, status_for

log = logging.getLogger(__name__)

Row = TypeVar("Row")


def failure(code: int, reason: str) -> Dataset:
    """A status dataset: *code* and the reason as its Error Comment (64 characters at most, LO)."""
    status = Dataset()
    status.Status = code
    status.ErrorComment = reason[:64]
    return status


def failure_for(exc: BaseException, table: dict[type[Exception], int], service: str, calling: str, *,
                expected: type[BaseException] = ArchiveError, processing: int = 0xC000) -> Dataset:
    """The failure status answering *exc*, raised while serving *service* to AE *calling*: an *expected*
    error gets its code in *table* (else *processing*) and its message, logged as a warning; any other
    is a processing failure (*processing*), logged with its traceback (call this in the except block)."""
    if isinstance(exc, expected):
        code = status_for(exc, table, processing)
        log.warning("%s from %s answered 0x%04X: %s", service, calling, code, exc)
        return failure(code, str(exc))
    log.exception("%s from %s failed", service, calling)
    return failure(processing, f"processing failure: {exc.__class__.__name__}")


class FindAnswers:
    """The matches of one C-FIND, to answer one pending response each: iterating stops when the peer
    cancels (final status FE00) or once *limit* matches went out and another one comes (final status
    A700, "refine the query"). Afterwards ``sent`` counts the matches handed out and ``final`` is the
    final status to send, if not success."""

    def __init__(self, event, matches: Iterable[Row], limit: int, service: str, calling: str) -> None:
        self._event, self._matches, self._limit = event, matches, limit
        self._service, self._calling = service, calling
        self.sent = 0
        self.final: Dataset | int | None = None
        self.cancelled = False

    def __iter__(self) -> Iterator[Row]:
        for match in self._matches:
            if self._event.is_cancelled:
                self.final, self.cancelled = CANCEL, True
                return
            if self.sent == self._limit:
                log.warning("%s from %s stopped after %d matches", self._service, self._calling, self._limit)
                self.final = failure(TOO_MANY_MATCHES, f"more than {self._limit} matches: refine the query")
                return
            self.sent += 1
            yield match
