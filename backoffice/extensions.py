"""Per-app resources: the archive facade, the database session of a request, login and CSRF."""

from __future__ import annotations

import logging

from flask import Flask, g
from flask_login import LoginManager
from flask_wtf import CSRFProtect
from sqlalchemy.orm import Session

from archive_core import api

login_manager = LoginManager()
csrf = CSRFProtect()


def init_app(app: Flask) -> None:
    from backoffice import archive_settings

    try:
        app.extensions["archivage"] = api.ArchiveFacade.open(archive_settings(app))
    except api.StorageRefused as exc:  # wrong credentials, no bucket: no process of the app may start
        raise SystemExit(f"archivage: storage refused: {exc}") from exc
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    csrf.init_app(app)

    @app.teardown_appcontext
    def _close_session(exc: BaseException | None) -> None:
        g.pop("after_commit", None)
        session: Session | None = g.pop("db", None)
        if session is not None:
            session.rollback()  # whatever the request did not commit (it failed) is undone
            session.close()

    handle_user_exception = app.handle_user_exception

    def _roll_back_then_handle(exc: Exception):
        # A view that raised commits none of its work, even when a handler turns the error into a
        # message and a redirect (a 3xx the commit below would otherwise let through): the request's
        # session is rolled back (its after-rollback hooks drop files written for it) before any
        # handler runs. This app's own method, not a process-wide patch.
        session: Session | None = g.get("db")
        g.pop("after_commit", None)
        if session is not None:
            session.rollback()
        return handle_user_exception(exc)

    app.handle_user_exception = _roll_back_then_handle

    @app.after_request
    def _commit(response):
        # The one place a request commits: after the view succeeded, before the response leaves.
        session: Session | None = g.get("db")
        if session is not None and response.status_code < 400:
            session.commit()
            for hook in g.pop("after_commit", []):
                try:
                    hook()
                except Exception:  # the request's work is committed: log, never undo it
                    logging.getLogger(__name__).exception("after-commit work failed")
        elif session is not None:
            # Undone now rather than at teardown: the write lock must be free before the session is saved.
            g.pop("after_commit", None)
            session.rollback()
        return response

    from backoffice.auth import models  # noqa: F401  (user loader registration)


def after_commit(hook) -> None:
    """Run *hook* once the request's transaction has committed (PDF rendering, jobs); dropped on rollback."""
    g.setdefault("after_commit", []).append(hook)


def rollback() -> None:
    """Undo the request's work so far (a handled domain error) and forget its after-commit work."""
    g.pop("after_commit", None)
    if "db" in g:
        g.db.rollback()


def facade() -> "api.ArchiveFacade":
    from flask import current_app

    return current_app.extensions["archivage"]


def db() -> Session:
    """The request's session; the request commits it once, at the end."""
    if "db" not in g:
        from flask import request

        # Requests that change things take SQLite's write lock up front, so that a read followed
        # by a write (the audit chain, invoice numbers) waits for other writers instead of failing.
        g.db = facade().new_session(write=request.method not in ("GET", "HEAD", "OPTIONS"))
    return g.db
