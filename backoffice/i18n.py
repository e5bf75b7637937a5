"""The interface language: French by default, English available (Flask-Babel, gettext catalogs).

Source strings (msgids) are French, so the French interface is the templates' own text; the
catalogs in ``translations/`` are compiled from their ``.po`` into the instance folder at start-up.
"""

from __future__ import annotations

import os
import tempfile
from datetime import timezone
from pathlib import Path

from babel.dates import format_date, format_datetime
from flask import Blueprint, Flask, current_app, has_request_context, redirect, request, session, url_for
from flask_babel import Babel, get_locale

from archive_core.values import PARIS

LANGUAGES = ("fr", "en")
TRANSLATIONS = Path(__file__).resolve().parent.parent / "translations"

bp = Blueprint("i18n", __name__)
babel = Babel()


def current_language() -> str:
    """The language of this request: the session's choice, else Accept-Language among ours, else the default."""
    default = current_app.config.get("DEFAULT_LANGUAGE", "fr")
    if not has_request_context():  # CLI commands, the scheduler
        return default
    chosen = session.get("lang")
    if chosen in LANGUAGES:
        return chosen
    return request.accept_languages.best_match(LANGUAGES, default=default)


def locale_name() -> str:
    """The Babel locale of this request for dates and amounts (fr_FR in French, en in English)."""
    return "fr_FR" if str(get_locale() or "fr") == "fr" else str(get_locale())


# Compiled catalogs of this process, by (.po path, its mtime in ns, its size): an app created again in the
# same process (each test makes its own, in its own instance folder) writes the bytes instead of
# parsing and compiling 2,300 messages again (0.3 s).
_compiled: dict[tuple[str, int, int], bytes] = {}


def compile_catalogs(source: Path, target: Path) -> Path:
    """Compile each ``<lang>/LC_MESSAGES/messages.po`` under *source* into *target* (when stale)."""
    for po_path in sorted(source.glob("*/LC_MESSAGES/messages.po")):
        lang = po_path.parent.parent.name
        mo_path = target / lang / "LC_MESSAGES" / "messages.mo"
        po_stat = po_path.stat()
        if mo_path.exists() and mo_path.stat().st_mtime >= po_stat.st_mtime:
            continue
        key = (str(po_path), po_stat.st_mtime_ns, po_stat.st_size)
        if key not in _compiled:
            _compiled[key] = _compile(po_path, lang)
        mo_path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside then renamed: several processes (web, scheduler) may start together.
        fd, tmp = tempfile.mkstemp(dir=mo_path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            out.write(_compiled[key])
        os.replace(tmp, mo_path)
    return target


def _compile(po_path: Path, lang: str) -> bytes:
    import io

    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    with po_path.open("rb") as handle:
        catalog = read_po(handle, locale=lang)
    out = io.BytesIO()
    write_mo(out, catalog)
    return out.getvalue()


def fill_source_catalog(po_path: Path = TRANSLATIONS / "fr" / "LC_MESSAGES" / "messages.po") -> int:
    """Give every msgid of the source-language (French) catalog its own text as msgstr; returns how many.

    The msgids are the French text, so the French catalog translates each to itself: with every msgstr
    filled, a string missing from the catalog is seen at once (tests/unit/test_i18n.py), in both languages.
    """
    from babel.messages.pofile import read_po, write_po

    with po_path.open("rb") as handle:
        catalog = read_po(handle, locale="fr")
    filled = 0
    for message in catalog:
        if message.id and not message.string:
            message.string = message.id
            filled += 1
    with po_path.open("wb") as out:
        write_po(out, catalog, width=120)
    return filled


def init_app(app: Flask) -> None:
    app.config.setdefault("DEFAULT_LANGUAGE", "fr")
    if app.config["DEFAULT_LANGUAGE"] not in LANGUAGES:
        raise RuntimeError(f"DEFAULT_LANGUAGE must be one of {', '.join(LANGUAGES)}")
    compiled = compile_catalogs(TRANSLATIONS, Path(app.instance_path) / "cache" / "translations")
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = str(compiled)
    app.config["BABEL_DEFAULT_LOCALE"] = app.config["DEFAULT_LANGUAGE"]
    babel.init_app(app, locale_selector=current_language, default_timezone=PARIS.key)

    @app.template_filter("short_date")
    def _short_date(value) -> str:
        """dd/mm/yyyy in French (as the pages always showed), Babel's short date in English."""
        if value is None:
            return ""
        if str(get_locale() or "fr") == "fr":
            return value.strftime("%d/%m/%Y")
        return format_date(value, "medium", locale=str(get_locale()))

    @app.template_filter("short_datetime")
    def _short_datetime(value) -> str:
        if value is None:
            return ""
        if str(get_locale() or "fr") == "fr":
            return value.strftime("%d/%m/%Y %H:%M")
        return format_datetime(value, "medium", tzinfo=timezone.utc, locale=str(get_locale()))

    @app.context_processor
    def _languages():
        return {"languages": LANGUAGES, "current_language": str(get_locale() or "fr")}

    app.register_blueprint(bp)


@bp.route("/language", methods=["POST"])
def set_language():
    """Open to everyone, signed in or not (the login page offers it too); CSRF-protected like every form."""
    lang = request.form.get("lang")
    if lang in LANGUAGES:
        session["lang"] = lang
    back = request.referrer
    return redirect(back if back and back.startswith(request.host_url) else url_for("home.index"))


if __name__ == "__main__":  # `make translations`: python -m backoffice.i18n
    print(f"{fill_source_catalog()} French msgstr filled")
