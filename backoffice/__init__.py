"""The back-office web application: ``create_app`` builds it; only ``wsgi.py`` calls it at import."""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask, g

from archive_core.api import Settings, ensure_instance, instance_path_from_env, private_files

ROOT = Path(__file__).resolve().parent.parent


def create_app(test_config: dict | None = None) -> Flask:
    instance_path = instance_path_from_env(ROOT / "instance")
    if test_config and "INSTANCE_PATH" in test_config:
        instance_path = Path(test_config["INSTANCE_PATH"]).resolve()
    private_files()  # every process role builds its app first: the umask is set once, at its start
    ensure_instance(instance_path)
    app = Flask(
        __name__,
        instance_path=str(instance_path),
        instance_relative_config=True,
        template_folder=str(ROOT / "templates"),
    )
    from backoffice.errors import DatabaseIntConverter

    app.url_map.converters["int"] = DatabaseIntConverter  # /invoices/99999999999999999999 is a 404, not a 500
    app.config.from_mapping(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=False,  # set true behind HTTPS (docs/configuration.md)
        WEB_HOST="127.0.0.1",
        WEB_PORT=8000,
        IDLE_TIMEOUT_MINUTES=30,
        API_TOKEN_LIFETIME_DAYS=90,  # `tokens create` without --days; 0: until revoked
        SESSION_WARNING_SECONDS=120,  # the banner before an idle session ends
        # A form's CSRF token lives as long as the session it belongs to (the idle timeout ends both), not an
        # hour: a report typed slowly in an active session is never refused for its token's age.
        WTF_CSRF_TIME_LIMIT=None,
    )
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env("ARCHIVAGE")
    if test_config:
        app.config.update(test_config)
    from datetime import timedelta

    # Shared desk computers: a session ends after IDLE_TIMEOUT_MINUTES without a request.
    app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(minutes=int(app.config["IDLE_TIMEOUT_MINUTES"]))
    app.config["SESSION_REFRESH_EACH_REQUEST"] = True
    if not app.config.get("SECRET_KEY"):
        raise RuntimeError("SECRET_KEY missing: instance/config.py is generated on first run")

    from backoffice import extensions

    extensions.init_app(app)
    from backoffice.auth.sessions import DatabaseSessionInterface

    app.session_interface = DatabaseSessionInterface()
    from backoffice import i18n

    i18n.init_app(app)
    from backoffice import security

    security.init_app(app)
    from backoffice import errors

    errors.init_app(app)
    from backoffice.auth import continuity

    continuity.init_app(app)

    from backoffice.auth import bp as auth_bp
    from backoffice.home import bp as home_bp

    app.register_blueprint(auth_bp)
    app.register_blueprint(home_bp)
    from backoffice.retention.views import bp as retention_bp

    app.register_blueprint(retention_bp)
    from backoffice.radiology.views import bp as radiology_bp, share_bp; app.register_blueprint(radiology_bp); app.register_blueprint(share_bp)  # noqa: E702,E501
    from backoffice.billing.views import bp as billing_bp

    app.register_blueprint(billing_bp)
    from backoffice.patients.views import bp as patients_bp

    app.register_blueprint(patients_bp)

    from backoffice.dicomweb import bp as dicomweb_bp, wado_bp

    app.register_blueprint(dicomweb_bp)
    app.register_blueprint(wado_bp)
    from backoffice.radiology import ohif

    ohif.init_app(app)  # only when OHIF_DIR is set
    from backoffice.api import register_api

    register_api(app)

    from backoffice.cli import register_cli

    register_cli(app)
    logging.basicConfig(level=app.config.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Library chatter at INFO (alembic's plugin list, one line per DICOM message) hides what matters.
    for noisy in ("alembic.runtime.plugins", "pynetdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return app


def archive_settings(app: Flask) -> Settings:
    """The archive's settings, read from this app's configuration."""
    return Settings.from_mapping(Path(app.instance_path), app.config)


__all__ = ["create_app", "archive_settings", "g"]
