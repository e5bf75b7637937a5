"""The NIR (numéro d'inscription au répertoire), the number the INS (identifiant national de santé)
is built on: 13 characters and a 2-digit key, key = 97 - (first 13 digits mod 97).

Form accepted (docs/patients.md): first character 1 or 2 (the sex of a NIR), 3 or 4 (numbers
given to people born abroad while being registered) or 7 or 8 (temporary numbers, the NIA);
then the year and month of birth (any two digits: people born abroad may carry a month of 20
or more), the department (2 digits, or 2A / 2B for Corsica), 3 digits of commune, 3 of order,
and the key. For the key, 2A counts as 19 and 2B as 18 (the Sécurité sociale's rule). Spaces,
dots and hyphens typed between groups are ignored; lower-case "2a"/"2b" are accepted.

The INS is the matricule (NIR or NIA) with the OID of the authority that assigned it, as listed in
the ANS "Référentiel INS" and the HL7 France FR Core Patient INS profile.
"""

from __future__ import annotations

import re

INS_NIR_OID = "1.2.250.1.213.1.4.8"  # INS-NIR: the patient's own NIR
INS_NIA_OID = "1.2.250.1.213.1.4.9"  # INS-NIA: a temporary number (numéro identifiant d'attente)
INS_NIR_TEST_OID = "1.2.250.1.213.1.4.10"  # fictitious test patients of the INSi test environment
INS_NIR_DEMO_OID = "1.2.250.1.213.1.4.11"  # fictitious demonstration patients
_FORM = re.compile(r"^[1-478]\d{4}(\d{2}|2A|2B)\d{6}\d{2}$")


class InvalidNir(ValueError):
    """Not a NIR: *reason* is ``length``, ``form`` or ``key`` (pages translate it)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def clean(value: str) -> str:
    return re.sub(r"[\s.\-]", "", value or "").upper()


def key_of(body: str) -> int:
    """The key of the 13 first characters of a NIR (2A read as 19, 2B as 18)."""
    corsica = {"2A": "19", "2B": "18"}.get(body[5:7])
    number = int(body[:5] + corsica + body[7:] if corsica else body)
    return 97 - number % 97


def validate(value: str) -> str:
    """The NIR in its 15-character form, or :class:`InvalidNir`."""
    nir = clean(value)
    if len(nir) != 15:
        raise InvalidNir("length", "a NIR has 15 characters")
    if not _FORM.match(nir):
        raise InvalidNir("form", "digits only (2A or 2B for Corsica); first digit 1, 2, 3, 4, 7 or 8")
    if key_of(nir[:13]) != int(nir[13:]):
        raise InvalidNir("key", "the key does not match")
    return nir


def oid_of(nir: str) -> str:
    """The OID of the INS a (valid) matricule makes: NIA for temporary numbers (7, 8), NIR otherwise."""
    return INS_NIA_OID if nir[:1] in ("7", "8") else INS_NIR_OID


def formatted(nir: str) -> str:
    """``1 84 12 76 451 089 46``: how the carte Vitale prints it."""
    return " ".join((nir[0], nir[1:3], nir[3:5], nir[5:7], nir[7:10], nir[10:13], nir[13:]))
