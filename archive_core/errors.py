"""Domain errors of the archive; each edge maps them once (DICOM statuses, HTTP codes)."""


class ArchiveError(Exception):
    """Base of every error the archive raises on purpose."""


class InvalidIdentifier(ArchiveError):
    """A UID or identifying attribute is missing or not valid."""


class InvalidDataset(ArchiveError):
    """The dataset cannot be parsed."""


class StorageFull(ArchiveError):
    """The storage volume is below its free-space floor."""


class DuplicateConflict(ArchiveError):
    """A different object arrived under a SOP Instance UID that is already stored."""


class UnknownPeer(ArchiveError):
    """An AE title that is not registered."""


class NotFound(ArchiveError):
    """The requested object does not exist."""


class JournalBusy(ArchiveError):
    """Another process (a running archive) owns the ingest journal."""


class BlobMissing(ArchiveError):
    """The index points at a blob the store does not have."""


class InvalidQuery(ArchiveError):
    """A query or retrieve identifier the information model does not allow (key below its level, ...)."""


class TooManyMatches(ArchiveError):
    """A query matched more than the configured maximum."""


class IdentityConflict(ArchiveError):
    """An object contradicts what the archive holds: its series is another study's, or its study another patient's.

    The message names the conflicting UID in ASCII (it is sent as the C-STORE Error Comment) and
    never a patient's name or ID.
    """


class ObjectTooLarge(ArchiveError):
    """A received object is larger than the configured maximum (``DICOM_MAX_OBJECT_BYTES``)."""


class StorageUnavailable(ArchiveError):
    """The object store cannot be reached or refuses us (network, credentials, bucket); the journal keeps what was received."""


class StorageRefused(StorageUnavailable):
    """The object store answers but refuses us for good (credentials, no such bucket): a start-up error."""
