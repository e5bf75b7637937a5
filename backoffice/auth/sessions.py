"""Server-side browser sessions in the database: the cookie carries a random id, nothing else.

Ending a session is deleting its row, which logout, disabling an account and changing a password do;
a copied cookie then opens an empty session. Any web process can serve any request (the web role is
stateless): the session lives in the shared database, not in the process nor in the cookie.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta, timezone

from flask import Flask, Request, Response, g
from flask.sessions import SessionInterface, SessionMixin, TaggedJSONSerializer
from sqlalchemy import delete, select
from werkzeug.datastructures import CallbackDict

from backoffice.auth.models import WebSession

_serializer = TaggedJSONSerializer()
# A session's row is written when it changes; otherwise its expiry is pushed back at most once a minute,
# so reading pages does not turn every GET into a database write.
REFRESH_EVERY = timedelta(minutes=1)


def _sha(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


class DatabaseSession(CallbackDict, SessionMixin):
    def __init__(self, initial=None, sid: str | None = None, expires_at: datetime | None = None) -> None:
        def on_update(self) -> None:
            self.modified = True

        super().__init__(initial, on_update)
        self.sid = sid
        self.expires_at = expires_at
        self.modified = False
        self.rotate = False
        self.expired = False  # the browser sent the id of a session that has ended (idle timeout, sign-out)

    def regenerate(self) -> None:
        """A new id at sign-in and sign-out (session fixation): the old id stops existing."""
        self.rotate = True
        self.modified = True


def regenerate(session) -> None:
    if isinstance(session, DatabaseSession):
        session.regenerate()


def _ended() -> DatabaseSession:
    ended = DatabaseSession()
    ended.expired = True
    return ended


def expiry_after_response(app: Flask, session) -> datetime | None:
    """When *session* ends, counting the refresh :meth:`DatabaseSessionInterface.save_session` will make."""
    if not isinstance(session, DatabaseSession) or not session:
        return None
    now = datetime.now(timezone.utc)
    lifetime = app.permanent_session_lifetime
    if session.expires_at is None or session.modified or session.rotate:
        return now + lifetime
    if g.get("session_peek") or session.expires_at - now > lifetime - REFRESH_EVERY:
        return session.expires_at
    return now + lifetime


def _user_pk(data: dict) -> int | None:
    try:
        return int(data["_user_id"])
    except (KeyError, TypeError, ValueError):
        return None


class DatabaseSessionInterface(SessionInterface):
    def _facade(self, app: Flask):
        return app.extensions["archivage"]

    def open_session(self, app: Flask, request: Request) -> DatabaseSession:
        sid = request.cookies.get(self.get_cookie_name(app))
        if not sid or len(sid) > 128:
            return DatabaseSession()
        now = datetime.now(timezone.utc)
        with self._facade(app).new_session() as s:
            row = s.get(WebSession, _sha(sid))
            if row is None:
                return _ended()
            expires_at = row.expires_at
            if expires_at <= now:
                return _ended()
            try:
                data = _serializer.loads(row.data)
            except ValueError:
                return DatabaseSession()
        return DatabaseSession(data, sid=sid, expires_at=expires_at)

    def save_session(self, app: Flask, session: DatabaseSession, response: Response) -> None:
        name, domain, path = self.get_cookie_name(app), self.get_cookie_domain(app), self.get_cookie_path(app)
        now = datetime.now(timezone.utc)
        lifetime = app.permanent_session_lifetime
        old_sid = session.sid
        if not session:
            if old_sid is not None and session.modified:
                with self._facade(app).new_session(write=True) as s:
                    s.execute(delete(WebSession).where(WebSession.sid_sha256 == _sha(old_sid)))
                    s.commit()
                response.delete_cookie(name, domain=domain, path=path, secure=self.get_cookie_secure(app),
                                       samesite=self.get_cookie_samesite(app), httponly=self.get_cookie_httponly(app))
            return
        fresh_enough = (session.expires_at is not None and session.expires_at - now > lifetime - REFRESH_EVERY)
        peek = bool(g.get("session_peek"))  # a page's script asking how long is left does not lengthen it
        if old_sid is not None and not session.modified and not session.rotate and (fresh_enough or peek):
            return
        if session.accessed:
            response.vary.add("Cookie")
        sid = old_sid if old_sid is not None and not session.rotate else secrets.token_urlsafe(32)
        expires_at = now + lifetime
        with self._facade(app).new_session(write=True) as s:
            if old_sid is not None and sid != old_sid:
                s.execute(delete(WebSession).where(WebSession.sid_sha256 == _sha(old_sid)))
            row = s.get(WebSession, _sha(sid))
            if row is None and sid == old_sid:
                # Ended on the server while this request ran (logout elsewhere, account disabled, new
                # password): it stays ended.
                s.rollback()
                response.delete_cookie(name, domain=domain, path=path)
                return
            if row is None:
                # The rare new session also sweeps expired ones.
                s.execute(delete(WebSession).where(WebSession.expires_at < now))
                row = WebSession(sid_sha256=_sha(sid), created_at=now)
                s.add(row)
            row.data = _serializer.dumps(dict(session))
            row.user_pk = _user_pk(session)
            row.expires_at = expires_at
            s.commit()
        session.sid, session.expires_at, session.rotate = sid, expires_at, False
        response.set_cookie(name, sid, expires=expires_at if session.permanent else None, httponly=True,
                            domain=domain, path=path, secure=self.get_cookie_secure(app),
                            samesite=self.get_cookie_samesite(app))


def active_session_count(s, user_pk: int) -> int:
    now = datetime.now(timezone.utc)
    return len(list(s.scalars(select(WebSession.sid_sha256).where(WebSession.user_pk == user_pk,
                                                                  WebSession.expires_at > now))))
