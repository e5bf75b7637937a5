"""UID validation and the archive's own implementation UIDs."""

from __future__ import annotations

import re

from archive_core.errors import InvalidIdentifier

# Digits and dots, no empty component, at most 64 characters. Leading zeros in a component are
# technically invalid but common in the field; they cannot form a path, so they are accepted.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")

IMPLEMENTATION_CLASS_UID = "2.25.181340367165104522532862963612540930921"
IMPLEMENTATION_VERSION_NAME = "ARCHIVAGE_0_1"


def clean_uid(value: object) -> str:
    """A UID as sent, without the padding a wire value may carry."""
    return str(value if value is not None else "").strip().rstrip("\x00").strip()


def is_valid_uid(value: object) -> bool:
    text = clean_uid(value)
    return 0 < len(text) <= 64 and _UID.fullmatch(text) is not None


def require_uid(value: object, name: str) -> str:
    """*value* as a clean UID, or :class:`InvalidIdentifier` naming the attribute."""
    text = clean_uid(value)
    if not text:
        raise InvalidIdentifier(f"{name} is missing")
    if not is_valid_uid(text):
        raise InvalidIdentifier(f"{name} is not a valid UID")
    return text
