"""The web back-office runs as several processes behind a load balancer: no state lives in one of them.

Two ``flask --app wsgi web`` processes on one instance (the same database and configuration, as two
nodes behind a proxy). A browser (a ``requests`` session) signs in on one and goes on on the other.
"""

from __future__ import annotations

import os
import re

import requests

from tests.servers import archive_env, web_process


def _csrf(browser: requests.Session, url: str) -> str:
    return re.search(r'name="csrf_token"[^>]*?value="([^"]+)"', browser.get(url).text).group(1)


def test_a_session_started_on_one_web_process_works_on_another_and_ends_on_both(tmp_path):
    """Signed in through process A, the same cookie opens a page on B, and a form token issued by B
    is accepted by A for the logout (the CSRF secret is in the server-side session, not in a
    process); after that logout, the cookie opens nothing on B. Bad input tried: the cookie replayed
    after logout."""
    from archive_core.db import make_engine, session_factory
    from backoffice.auth.services import create_user
    from tests.helpers import migrate
    from archive_core.config import Settings

    instance = tmp_path / "instance"
    instance.mkdir()
    migrate(Settings(instance_path=instance).database_url)
    engine = make_engine(Settings(instance_path=instance).database_url)
    with session_factory(engine)() as s:
        create_user(s, "accueil", role="front_desk", password="correct horse battery")
        s.commit()
    engine.dispose()
    env = {**os.environ, **archive_env(instance)}
    with web_process(env, tmp_path / "a.log") as a, web_process(env, tmp_path / "b.log") as b:
        browser = requests.Session()
        signed_in = browser.post(f"{a}/login", data={"login": "accueil", "password": "correct horse battery",
                                                       "csrf_token": _csrf(browser, f"{a}/login")},
                                 allow_redirects=False)
        assert signed_in.status_code == 302 and "/login" not in signed_in.headers["Location"]
        on_b = browser.get(f"{b}/patients/", allow_redirects=False)
        assert on_b.status_code == 200, on_b.headers.get("Location")
        token_from_b = _csrf(browser, f"{b}/patients/")
        stolen = dict(browser.cookies)
        logged_out = browser.post(f"{a}/logout", data={"csrf_token": token_from_b}, allow_redirects=False)
        assert logged_out.status_code == 302 and logged_out.headers["Location"].endswith("/login")
        replay = requests.get(f"{b}/patients/", cookies=stolen, allow_redirects=False)
        assert replay.status_code == 302 and "/login" in replay.headers["Location"]
