"""The names a radiologist reads for the CT window presets (the core keys them by code: `lung`, `bone`...)."""

from __future__ import annotations

from flask_babel import lazy_gettext as _l

#: Label of each window preset of archive_core.render.PRESETS, in the reader's language.
PRESET_LABELS = {
    "lung": _l("Poumon"),
    "mediastinum": _l("Médiastin"),
    "abdomen": _l("Abdomen"),
    "liver": _l("Foie"),
    "bone": _l("Os"),
    "brain": _l("Cerveau"),
    "stroke": _l("AVC"),
    "subdural": _l("Sous-dural"),
}


def preset_label(name: str) -> str:
    """The preset's label; a code the table does not know is shown as it is rather than hidden."""
    return str(PRESET_LABELS.get(name, name))
