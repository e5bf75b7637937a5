"""The NIR (numéro d'inscription au répertoire), the number the INS (identifiant national de santé)
is built on: 13 characters and a 2-digit key, key = 97 - (NIR mod 97).

Corsica: departments 2A and 2B are written with a letter; for the key, 2A counts as 19 and 2B as
18 (the rule of the Sécurité sociale). Spaces typed between groups are ignored.
"""

from __future__ import annotations

import re

INS_NIR_OID = "1.2.250.1.213.1.4.8"  # INS-NIR (the patient's own NIR)
INS_NIA_OID = "1.2.250.1.213.1.4.9"  # INS-NIA (a temporary number given by the INSEE)
_FORM = re.compile(r"^[1-478]\d{4}(\d{2}|2A|2B)\d{6}\d{2}$")


class InvalidNir(ValueError):
    """Not a NIR: *reason* is ``length``, ``form`` or ``key`` (pages translate it)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def clean(value: str) -> str:
    return re.sub(r"[\s.\-]", "", value or "").upper()


def key_of(body: str) -> int:
    """The key of the 13 first characters of a NIR."""
    number = int(body.replace("2A", "19", 1) if body[5:7] == "2A" else
                 body.replace("2B", "18", 1) if body[5:7] == "2B" else body)
    return 97 - number % 97


def validate(value: str) -> str:
    """The NIR in its 15-character form, or :class:`InvalidNir`."""
    nir = clean(value)
    if len(nir) != 15:
        raise InvalidNir("length", "a NIR has 15 characters")
    if not _FORM.match(nir):
        raise InvalidNir("form", "digits only (2A or 2B for Corsica)")
    if key_of(nir[:13]) != int(nir[13:]):
        raise InvalidNir("key", "the key does not match")
    return nir


def formatted(nir: str) -> str:
    """``1 84 12 76 451 089 46``: how the carte Vitale prints it."""
    return " ".join((nir[0], nir[1:3], nir[3:5], nir[5:7], nir[7:10], nir[10:13], nir[13:]))
