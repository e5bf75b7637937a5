"""The one table from archive errors to DIMSE statuses, per service."""

from __future__ import annotations

from archive_core.errors import (
    DuplicateConflict,
    IdentityConflict,
    InvalidDataset,
    InvalidIdentifier,
    InvalidQuery,
    ObjectTooLarge,
    StorageFull,
    TooManyMatches,
    UnknownPeer,
)

SUCCESS = 0x0000
REFUSED_NOT_AUTHORIZED = 0x0124
PROCESSING_FAILURE = 0x0110
# Warning "Elements discarded": the object sent under a known SOP Instance UID was not kept.
DUPLICATE_KEPT_FIRST = 0xB006
# Failure, "cannot understand" range: the object's Series or Study Instance UID belongs to another
# study or patient in the archive (one patient per study, one study per series).
IDENTITY_CONFLICT = 0xC409

PENDING = 0xFF00
# Pending, some optional keys in the identifier were not matched on (PS3.4 C.4.1.1.4).
PENDING_UNMATCHED_KEYS = 0xFF01
CANCEL = 0xFE00
IDENTIFIER_INVALID = 0xA900
# Refused: out of resources -- the query matched more than DICOM_MAX_FIND_RESULTS.
TOO_MANY_MATCHES = 0xA700

STORE_STATUS: dict[type[Exception], int] = {
    StorageFull: 0xA700,
    IdentityConflict: IDENTITY_CONFLICT,
    ObjectTooLarge: 0xA700,
    InvalidIdentifier: 0xA900,
    InvalidDataset: 0xC000,
    DuplicateConflict: DUPLICATE_KEPT_FIRST,
    UnknownPeer: REFUSED_NOT_AUTHORIZED,
}


def status_for(exc: BaseException, table: dict[type[Exception], int], default: int = 0xC000) -> int:
    return next((code for kind, code in table.items() if isinstance(exc, kind)), default)


FIND_STATUS: dict[type[Exception], int] = {
    InvalidQuery: IDENTIFIER_INVALID,
    TooManyMatches: TOO_MANY_MATCHES,
    UnknownPeer: REFUSED_NOT_AUTHORIZED,
}

RETRIEVE_STATUS: dict[type[Exception], int] = {
    InvalidQuery: IDENTIFIER_INVALID,
    UnknownPeer: REFUSED_NOT_AUTHORIZED,
}
