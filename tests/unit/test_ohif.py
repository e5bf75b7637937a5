"""OHIF under /ohif/ (backoffice/radiology/ohif.py) on a miniature package, and tools/fetch_ohif.py on small
tarballs: who may open it, what is rewritten for the sub-path, the page's policy, and the fetch's refusals.
The real package in a browser: tests/integration/test_ohif_app.py."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import tarfile

import pytest

from backoffice.radiology.ohif import CONTENT_NAMED
from tools import fetch_ohif

# The shape of the package's index.html (3.13.2): inline scripts setting PUBLIC_URL, root-absolute URLs.
INDEX = ('<!doctype html><html><head><script>console.time("scriptToView"),window.PUBLIC_URL="/"</script>'
         '<link rel="manifest" href="/manifest.json"><link rel="icon" href="/assets/favicon.ico">'
         '<script rel="preload" as="script" src="/app-config.js"></script>'
         '<script rel="preload" as="script" type="module" src="/init-service-worker.js"></script>'
         '<script>function browserImportFunction(n){return import(n)}window.PUBLIC_URL="/"</script>'
         '<script defer src="/app.bundle.0f6159c501addfe9.js"></script>'
         '<link href="/app.bundle.css" rel="stylesheet"></head><body><div id="root"></div></body></html>')
RUNTIME = b'(() => {\n__webpack_require__.p = "/";\n})();\nvar x = 1;\n'


@pytest.fixture
def dist(tmp_path):
    folder = tmp_path / "dist"
    (folder / "assets").mkdir(parents=True)
    (folder / "index.html").write_text(INDEX)
    (folder / "app-config.js").write_text("window.config = {dataSources: [{qidoRoot: 'https://elsewhere'}]};")
    (folder / "app.bundle.0f6159c501addfe9.js").write_bytes(RUNTIME)
    (folder / "89.bundle.b327bf3664812958.js").write_bytes(b"console.log('a chunk');")
    (folder / "app.bundle.css").write_bytes(b"@font-face{src:url(/a34f.woff2)}a{background:url(//cdn.example/x.png)}")
    (folder / "0ddf166f7a343eda.wasm").write_bytes(b"\0asm\1\0\0\0")
    (folder / "manifest.json").write_text('{"icons": [{"src": "/assets/android-chrome-36x36.png"}]}')
    (tmp_path / "secret.py").write_text("SECRET = 1")
    return folder


def _app(tmp_path, **config):
    from backoffice import create_app
    from tests.helpers import migrate
    from archive_core.config import Settings

    instance = tmp_path / "instance-ohif"
    instance.mkdir(exist_ok=True)
    migrate(Settings(instance_path=instance).database_url)
    return create_app({"TESTING": True, "INSTANCE_PATH": str(instance), "STORAGE_MIN_FREE_BYTES": 0,
                       "WTF_CSRF_ENABLED": False, **config})


@pytest.fixture
def ohif_app(tmp_path, dist):
    app = _app(tmp_path, OHIF_DIR=str(dist))
    from tests.browser.conftest import add_user

    for login, role in (("dr", "radiologist"), ("desk", "front_desk"), ("boss", "manager"), ("root", "admin")):
        add_user(app, login, role)
    yield app
    app.extensions["archivage"].archive.close()


def _signed_in(app, login, base_url="http://localhost"):
    client = app.test_client()
    response = client.post("/login", data={"login": login, "password": "correct horse battery"}, base_url=base_url)
    assert response.status_code == 302, response.status_code
    return client


def test_without_ohif_dir_there_is_no_ohif(app, client):
    """OHIF_DIR unset (the default): /ohif/ is a 404 for a signed-in radiologist too (bad implementation:
    the viewer served from some default folder, or an empty page)."""
    from tests.browser.conftest import add_user

    add_user(app, "dr", "radiologist")
    app.config["WTF_CSRF_ENABLED"] = False
    assert client.post("/login", data={"login": "dr", "password": "correct horse battery"}).status_code == 302
    for path in ("/ohif/", "/ohif/app-config.js", "/ohif/viewer"):
        assert client.get(path).status_code == 404, path
    assert not [r for r in app.url_map.iter_rules() if r.rule.startswith("/ohif")]


def test_only_the_study_viewers_roles_open_ohif(ohif_app):
    """Signed out: the login page, for the page and for every file; manager and admin (who do not open the
    study viewer): 403. Radiologist and front desk: the page."""
    anonymous = ohif_app.test_client()
    for path in ("/ohif/", "/ohif/viewer?StudyInstanceUIDs=1.2.3", "/ohif/app-config.js",
                 "/ohif/app.bundle.0f6159c501addfe9.js"):
        response = anonymous.get(path)
        assert response.status_code == 302 and "/login" in response.headers["Location"], path
    for login in ("boss", "root"):
        assert _signed_in(ohif_app, login).get("/ohif/").status_code == 403
    for login in ("dr", "desk"):
        assert _signed_in(ohif_app, login).get("/ohif/").status_code == 200


def test_the_page_is_rewritten_for_ohif_and_its_policy_scoped_to_it(ohif_app):
    """index.html under /ohif/: PUBLIC_URL, every root-absolute src/href, a nonce on each inline script (the
    one of this response's policy), no service-worker script. The relaxed policy (WebAssembly, workers,
    style elements) is OHIF's page's only: the home page keeps the strict one."""
    client = _signed_in(ohif_app, "dr")
    for path in ("/ohif/", "/ohif/viewer", "/ohif/index.html"):
        response = client.get(path)
        page = response.get_data(as_text=True)
        assert 'window.PUBLIC_URL="/ohif/"' in page and 'window.PUBLIC_URL="/"' not in page
        assert re.findall(r'(?:src|href)="(/[^"]*)"', page) == [
            "/ohif/manifest.json", "/ohif/assets/favicon.ico", "/ohif/app-config.js",
            "/ohif/app.bundle.0f6159c501addfe9.js", "/ohif/app.bundle.css"]
        policy = response.headers["Content-Security-Policy"]
        nonce = re.search(r"'nonce-([^']+)'", policy).group(1)
        scripts = re.findall(r"<script([^>]*)>", page)
        assert len(scripts) == 4 and "init-service-worker" not in page
        assert all(f'nonce="{nonce}"' in s for s in scripts if "src=" not in s)
        assert "'wasm-unsafe-eval'" in policy and "worker-src 'self' blob:" in policy
        assert "frame-ancestors 'none'" in policy and "object-src 'none'" in policy
        assert response.headers["Cache-Control"] == "no-store"
    home = client.get("/").headers["Content-Security-Policy"]
    assert "wasm-unsafe-eval" not in home
    assert "'unsafe-inline'" not in home.replace("style-src-attr 'unsafe-inline'", "")


def test_files_are_served_under_the_sub_path(ohif_app, dist):
    """The chunk loader's public path and the stylesheet's root URLs point under /ohif/ (bad implementation:
    chunks, workers and fonts fetched from the site's root, where they are 404); other files go out as
    stored, WebAssembly as application/wasm; a missing file is 404, not the page; nothing outside OHIF_DIR."""
    client = _signed_in(ohif_app, "dr")

    def get(path):
        with client.get(path) as response:  # a file sent from disk is closed with its response
            response.data  # noqa: B018 (read before closing)
            return response

    bundle = get("/ohif/app.bundle.0f6159c501addfe9.js")
    assert bundle.status_code == 200 and bundle.mimetype == "text/javascript"
    assert bundle.data == RUNTIME.replace(b'"/"', b'"/ohif/"')
    assert "default-src 'none'" in bundle.headers["Content-Security-Policy"]  # a worker's own policy
    assert get("/ohif/89.bundle.b327bf3664812958.js").data == b"console.log('a chunk');"
    css = get("/ohif/app.bundle.css").data
    assert css == b"@font-face{src:url(/ohif/a34f.woff2)}a{background:url(//cdn.example/x.png)}"
    wasm = get("/ohif/0ddf166f7a343eda.wasm")
    assert wasm.mimetype == "application/wasm" and wasm.data == b"\0asm\1\0\0\0"
    manifest = json.loads(get("/ohif/manifest.json").data)
    assert manifest["icons"][0]["src"] == "/ohif/assets/android-chrome-36x36.png"
    assert get("/ohif/nothing.bundle.js").status_code == 404
    for escape in ("/ohif/../secret.py", "/ohif/..%2fsecret.py", "/ohif/assets/..%2f..%2fsecret.py"):
        response = get(escape)
        assert response.status_code == 404 or b"SECRET" not in response.data, escape
    # On disk, the files stay as unpacked (fetch_ohif verified them).
    assert (dist / "app.bundle.0f6159c501addfe9.js").read_bytes() == RUNTIME


def test_app_config_is_ours_pointing_at_our_dicomweb(ohif_app):
    """The shipped app-config.js (a demo server elsewhere) is never served: ours has one data source, our
    /dicom-web and /wado on this origin, and OHIF's router under /ohif."""
    site = "https://pacs.example.fr"
    response = _signed_in(ohif_app, "desk", site).get("/ohif/app-config.js", base_url=site)
    body = response.get_data(as_text=True)
    assert response.mimetype == "text/javascript" and body.startswith("window.config = ")
    config = json.loads(body.removeprefix("window.config = ").rstrip().rstrip(";"))
    assert config["routerBasename"] == "/ohif" and config["defaultDataSourceName"] == "archivage"
    [source] = config["dataSources"]
    settings = source["configuration"]
    assert settings["qidoRoot"] == settings["wadoRoot"] == "https://pacs.example.fr/dicom-web"
    assert settings["wadoUriRoot"] == "https://pacs.example.fr/wado"
    assert "elsewhere" not in body


def test_an_ohif_dir_without_the_viewer_says_what_to_do(tmp_path):
    """OHIF_DIR set to a folder make ohif never filled: 503 with the command, not a blank page or a 500."""
    from tests.browser.conftest import add_user

    (tmp_path / "empty").mkdir()
    app = _app(tmp_path, OHIF_DIR=str(tmp_path / "empty"))
    try:
        add_user(app, "dr", "radiologist")
        response = _signed_in(app, "dr").get("/ohif/")
        assert response.status_code == 503 and "« make ohif »" in response.get_data(as_text=True)
    finally:
        app.extensions["archivage"].archive.close()


# -- tools/fetch_ohif.py --------------------------------------------------------------------------


def _tarball(path, members):
    """An npm-like tarball: (name, bytes) files, or (name, None, symlink target) links."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data, *link in members:
            info = tarfile.TarInfo(name)
            if link:
                info.type, info.linkname = tarfile.SYMTYPE, link[0]
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


GOOD = [("package/package.json", b"{}"), ("package/dist/index.html", INDEX.encode()),
        ("package/dist/app.bundle.js", RUNTIME), ("package/dist/assets/favicon.ico", b"icon")]


def test_fetch_unpacks_dist_once_and_skips_a_complete_copy(tmp_path, monkeypatch):
    """The package's dist/ only (not package.json), then nothing to do; a copy cut short (a file gone)
    is unpacked again (bad implementation: a partial folder taken as done)."""
    tarball = tmp_path / "app.tgz"
    monkeypatch.setattr(fetch_ohif, "INTEGRITY", _tarball(tarball, GOOD))
    dest = tmp_path / "cache" / "3.13.2"
    assert "3 files" in fetch_ohif.fetch(dest, tarball)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        ".fetched", "app.bundle.js", "assets/favicon.ico", "index.html"]
    assert fetch_ohif.is_complete(dest)
    assert "already" in fetch_ohif.fetch(dest, tmp_path / "not-read.tgz")
    (dest / "assets" / "favicon.ico").unlink()
    assert not fetch_ohif.is_complete(dest)
    assert "3 files" in fetch_ohif.fetch(dest, tarball)
    assert (dest / "assets" / "favicon.ico").read_bytes() == b"icon"


def test_fetch_refuses_a_tarball_that_is_not_the_pinned_one(tmp_path, capsys):
    """A file whose sha512 is not the pinned integrity (here: a well-formed package of other bytes): a clear
    error naming both digests, exit status 1, nothing unpacked."""
    tarball = tmp_path / "app.tgz"
    _tarball(tarball, GOOD)
    dest = tmp_path / "cache" / "3.13.2"
    assert fetch_ohif.main(["--dest", str(dest), "--tarball", str(tarball)]) == 1
    error = capsys.readouterr().err
    assert "integrity" in error and fetch_ohif.INTEGRITY in error and "nothing was unpacked" in error
    assert not dest.exists() and list((tmp_path / "cache").iterdir()) == []


def test_fetch_refuses_links_and_says_when_there_is_no_network(tmp_path, monkeypatch):
    """A tarball with a symbolic link out of dist/ is refused whole; a registry that cannot be reached is
    an error saying what to do (here: a closed local port), not a traceback."""
    from tests.helpers import free_port

    tarball = tmp_path / "app.tgz"
    monkeypatch.setattr(fetch_ohif, "INTEGRITY", _tarball(tarball, GOOD + [("package/dist/x", None, "/etc/passwd")]))
    dest = tmp_path / "cache" / "3.13.2"
    with pytest.raises(fetch_ohif.FetchError, match="neither a file nor a folder"):
        fetch_ohif.fetch(dest, tarball)
    assert not dest.exists() and list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setattr(fetch_ohif, "URL", f"http://127.0.0.1:{free_port()}/app.tgz")
    with pytest.raises(fetch_ohif.FetchError, match="No network"):
        fetch_ohif.fetch(dest)
    assert list((tmp_path / "cache").iterdir()) == []


def test_content_named_files_are_kept_by_the_browser_and_the_page_is_not(ohif_app):
    """OHIF's bundles named by their content may be kept by the radiologist's browser (17 MB not downloaded
    again on each visit), never by a proxy; the page, our app-config.js (it names our URLs) and files
    without a content hash stay no-store. Tried: a signed-out request for a content-named bundle (redirected
    to the login page, nothing kept), and a name with a hash-like part that is not 16 hex digits."""
    client = _signed_in(ohif_app, "dr")

    def headers(path, who=client):
        with who.get(path) as response:
            response.data  # noqa: B018 (read before closing)
            return response.status_code, response.headers

    for path in ("/ohif/app.bundle.0f6159c501addfe9.js", "/ohif/89.bundle.b327bf3664812958.js",
                 "/ohif/0ddf166f7a343eda.wasm"):
        status, kept = headers(path)
        assert status == 200 and kept["Cache-Control"] == "private, max-age=31536000, immutable", path
        assert "Pragma" not in kept and "Expires" not in kept, path
    for path in ("/ohif/", "/ohif/viewer", "/ohif/app-config.js", "/ohif/app.bundle.css", "/ohif/manifest.json"):
        status, page = headers(path)
        assert status == 200 and page["Cache-Control"] == "no-store" and page["Pragma"] == "no-cache", path
    status, outside = headers("/ohif/89.bundle.b327bf3664812958.js", ohif_app.test_client())
    assert status in (302, 401) and outside["Cache-Control"] == "no-store"
    assert not CONTENT_NAMED.search("app.bundle.0f6159c501addfe.js")
