"""Browser fixtures: the app served on a free port, and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import threading

import pytest

from tests.helpers import free_port, require_tool

# As the machine's probe starts it: no sandbox as root, and none of the background connections a
# closed network refuses. Never `playwright install`: it downloads a browser of its own.
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


def add_user(app, login: str, role: str, password: str = "correct horse battery") -> None:
    from backoffice.auth.services import create_user

    with app.extensions["archivage"].new_session(write=True) as s:
        create_user(s, login, role=role, password=password)
        s.commit()


def sign_in(page, base_url: str, login: str, password: str = "correct horse battery") -> None:
    """Fill and submit the login form as *login*."""
    page.goto(f"{base_url}/login")
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


@pytest.fixture
def live_server(app):
    """The app behind waitress (the production server) in a thread; yields its base URL."""
    from waitress.server import create_server

    port = free_port()
    server = create_server(app, host="127.0.0.1", port=port, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.close()
    thread.join(timeout=10)


@pytest.fixture
def chromium():
    """A launched Chromium (fails in CI when it is missing, skips elsewhere)."""
    executable = require_tool("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()
