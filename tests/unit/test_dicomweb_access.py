"""DICOMweb through the Flask test client: share-link access to one study, CORS, thumbnails."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from PIL import Image
from sqlalchemy import select

from archive_core.audit import AuditEvent
from tests.radiology_support import make_history
from tests.unit.test_radiology_web import _create_share, csrf, sign_in, users  # noqa: F401  (fixture)


@pytest.fixture
def history(facade):
    return make_history(facade.archive)


def _unlocked(app, users, history):  # noqa: F811
    """A referring doctor's browser that opened the share link of history.current with its code."""
    url, code = _create_share(app.test_client(), users, history)
    doctor = app.test_client()
    assert doctor.post(url, data={"csrf_token": csrf(doctor, url), "code": code}).status_code == 302
    return doctor


def _study_uids(answers):
    return {a["0020000D"]["Value"][0] for a in answers}


def test_share_link_reads_its_study_only(app, users, history, facade):  # noqa: F811
    """Tried: the whole archive's QIDO, another study's QIDO/WADO-RS/metadata/WADO-URI, a STOW."""
    doctor = _unlocked(app, users, history)
    # QIDO-RS at every level answers the shared study only, whatever the query asks.
    assert _study_uids(doctor.get("/dicom-web/studies").get_json()) == {history.current}
    assert doctor.get(f"/dicom-web/studies?StudyInstanceUID={history.other_patient}").get_json() == []
    assert doctor.get("/dicom-web/studies?PatientID=OTHER").get_json() == []
    assert _study_uids(doctor.get("/dicom-web/series").get_json()) == {history.current}
    assert _study_uids(doctor.get("/dicom-web/instances").get_json()) == {history.current}
    # WADO-RS of the shared study works.
    with facade.new_session() as s:
        series = facade.study_detail(s, history.current).series[0]
    metadata = doctor.get(f"/dicom-web/studies/{history.current}/metadata")
    assert metadata.status_code == 200 and len(metadata.get_json()) == 4
    sop = series.first_sop_uid
    retrieved = doctor.get(f"/dicom-web/studies/{history.current}/series/{series.series_uid}/instances/{sop}")
    assert retrieved.status_code == 200 and sop.encode() in retrieved.data
    # Another study (a prior of the same patient, another patient): 404 as if unknown.
    for other in (history.prior_ct_chest, history.other_patient):
        assert doctor.get(f"/dicom-web/studies/{other}/metadata").status_code == 404
        assert doctor.get(f"/dicom-web/studies/{other}").status_code == 404
        assert doctor.get(f"/dicom-web/studies/{other}/series").status_code == 404
    with facade.new_session() as s:
        other = facade.study_detail(s, history.other_patient).series[0]
    wado = (f"/wado?requestType=WADO&studyUID={history.other_patient}&seriesUID={other.series_uid}"
            f"&objectUID={other.first_sop_uid}")
    assert doctor.get(wado).status_code == 404
    # The instance of another study named under the shared study's URL is not found either.
    assert doctor.get(f"/dicom-web/studies/{history.current}/series/{other.series_uid}/instances/"
                      f"{other.first_sop_uid}").status_code == 404
    # A share link stores nothing.
    stow = doctor.post("/dicom-web/studies", data=b"x", content_type='multipart/related; type="application/dicom"')
    assert stow.status_code == 403
    with facade.new_session() as s:
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.action.like("dicomweb.%"))))
    assert events and {e.actor_kind for e in events} == {"share_link"}
    assert all(e.actor.startswith("share:") for e in events)
    assert any(e.study_uid == history.current for e in events)


def test_share_link_without_code_revoked_or_expired_is_401(app, users, history, facade):  # noqa: F811
    """Tried: the link's URL alone (no code), then the unlocked browser after revocation and after expiry."""
    from backoffice.radiology.models import ShareLink

    url, _code = _create_share(app.test_client(), users, history)
    stranger = app.test_client()
    stranger.get(url)
    assert stranger.get("/dicom-web/studies").status_code == 401
    doctor = _unlocked(app, users, history)
    assert doctor.get("/dicom-web/studies").status_code == 200
    with facade.new_session(write=True) as s:
        link = s.scalars(select(ShareLink).order_by(ShareLink.id.desc())).first()
        link.expires_at = link.created_at + timedelta(seconds=1)  # expired long ago (created in the test)
        link.created_at -= timedelta(days=30)
        link.expires_at -= timedelta(days=30)
        s.commit()
    assert doctor.get("/dicom-web/studies").status_code == 401
    assert doctor.get(f"/dicom-web/studies/{history.current}/metadata").status_code == 401
    doctor2 = _unlocked(app, users, history)
    with facade.new_session(write=True) as s:
        from backoffice.radiology import services

        link = s.scalars(select(ShareLink).order_by(ShareLink.id.desc())).first()
        services.revoke_share_link(s, link.id)
        s.commit()
    assert doctor2.get(f"/dicom-web/studies/{history.current}/metadata").status_code == 401


@pytest.fixture
def cors_app(app):
    app.config["DICOMWEB_CORS_ORIGINS"] = ["https://viewer.example.fr"]
    yield app
    app.config.pop("DICOMWEB_CORS_ORIGINS", None)


def test_cors_for_the_configured_viewer_origin_only(cors_app, users, history):  # noqa: F811
    """Tried: a preflight without credentials, a foreign origin, the setting left empty, a page outside
    DICOMweb."""
    client = cors_app.test_client()
    viewer = {"Origin": "https://viewer.example.fr"}
    preflight = client.options("/dicom-web/studies", headers={
        **viewer, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 200  # no credentials needed for a preflight
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://viewer.example.fr"
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    # A retrieval resumed from another origin: it may send Range/If-Range and read what answers them.
    assert {"Range", "If-Range"} <= {h.strip() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"ETag", "Content-Range", "Accept-Ranges"} <= {
        h.strip() for h in preflight.headers["Access-Control-Expose-Headers"].split(",")}
    assert "GET" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Access-Control-Allow-Credentials" not in preflight.headers  # cookies never cross origins
    answer = client.get("/dicom-web/studies", headers={**viewer, "Authorization": f"Bearer {users['radiologist'][1]}"})
    assert answer.status_code == 200 and answer.headers["Access-Control-Allow-Origin"] == "https://viewer.example.fr"
    # A 401 is readable by the viewer too; /wado is covered.
    assert client.get("/dicom-web/studies", headers=viewer).headers["Access-Control-Allow-Origin"]
    assert client.options("/wado", headers=viewer).headers["Access-Control-Allow-Origin"]
    # Another origin gets no CORS header at all, nor do other pages.
    other = client.options("/dicom-web/studies", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Access-Control-Allow-Origin" not in client.get("/api/v1/studies", headers=viewer).headers
    cors_app.config["DICOMWEB_CORS_ORIGINS"] = []
    assert "Access-Control-Allow-Origin" not in client.options("/dicom-web/studies", headers=viewer).headers


def test_thumbnails_of_study_series_and_instance(client, users, history, facade):  # noqa: F811
    """Tried: an unknown study, a bad viewport; the middle slice stands for a stack (not its first)."""
    auth = {"Authorization": f"Bearer {users['radiologist'][1]}"}
    with facade.new_session() as s:
        detail = facade.study_detail(s, history.current)
        axial = next(se for se in detail.series
                     if se.series_uid and len(facade.series_instances(s, se.series_uid)) == 3)
        sops = [i.sop_instance_uid for i in sorted(facade.series_instances(s, axial.series_uid),
                                                    key=lambda i: i.instance_number or 0)]
    base = f"/dicom-web/studies/{history.current}/series/{axial.series_uid}"
    middle = client.get(f"{base}/instances/{sops[1]}/rendered?viewport=16,16", headers=auth).data
    first = client.get(f"{base}/instances/{sops[0]}/rendered?viewport=16,16", headers=auth).data
    assert middle != first  # the slices differ, so the choice shows
    series_thumb = client.get(f"{base}/thumbnail?viewport=16,16", headers=auth)
    assert series_thumb.status_code == 200 and series_thumb.mimetype == "image/jpeg"
    assert series_thumb.data == middle
    assert client.get(f"{base}/instances/{sops[0]}/thumbnail?viewport=16,16", headers=auth).data == first
    study_thumb = client.get(f"/dicom-web/studies/{history.current}/thumbnail", headers=auth)
    assert study_thumb.status_code == 200
    assert max(Image.open(io.BytesIO(study_thumb.data)).size) <= 128
    png = client.get(f"{base}/thumbnail?viewport=16,16", headers={**auth, "Accept": "image/png"})
    assert png.mimetype == "image/png" and Image.open(io.BytesIO(png.data)).size == (16, 16)
    assert client.get("/dicom-web/studies/1.2.3.999/thumbnail", headers=auth).status_code == 404
    assert client.get(f"{base}/thumbnail?viewport=0,0", headers=auth).status_code == 400
    assert client.get(f"{base}/thumbnail").status_code == 401


def test_share_link_with_priors_reads_the_patients_earlier_studies(app, users, history, facade):  # noqa: F811
    """The radiologist ticks "with earlier studies": the same patient's priors open too; another patient's
    study stays 404 (tried by QIDO with its PatientID and by WADO-RS)."""
    import re

    from tests.unit.test_radiology_web import sign_in

    radiologist = app.test_client()
    sign_in(radiologist, users, "radiologist")
    page = f"/radiology/studies/{history.current}"
    assert "Avec les examens antérieurs" in radiologist.get(page).get_data(as_text=True)
    radiologist.post(f"{page}/share", data={"csrf_token": csrf(radiologist, page), "recipient": "Dr R", "days": 7,
                                            "include_priors": "y"})
    html = radiologist.get(page).get_data(as_text=True)
    url = re.search(r"<code>(http[^<]+)</code>", html).group(1).replace("http://localhost", "")
    code = re.search(r'class="share-code">(\d{6})<', html).group(1)
    doctor = app.test_client()
    doctor.post(url, data={"csrf_token": csrf(doctor, url), "code": code})
    expected = {history.current, history.prior_ct_chest, history.prior_mr_chest, history.prior_us_abdomen}
    assert _study_uids(doctor.get("/dicom-web/studies").get_json()) == expected
    assert doctor.get("/dicom-web/studies?PatientID=OTHER").get_json() == []
    assert doctor.get(f"/dicom-web/studies/{history.prior_ct_chest}/metadata").status_code == 200
    assert doctor.get(f"/dicom-web/studies/{history.other_patient}/metadata").status_code == 404


def test_a_bearer_tokens_revocation_role_change_expiry_and_disabled_account_apply_on_the_next_request(
        app, users, history, facade):  # noqa: F811
    """DICOMweb reads the token on every request (nothing is kept between requests). Tried: the same
    radiologist token right after each change: a role moved to the front desk (403, which reads only
    signed in), moved back (200), the account disabled (401), enabled, a token that expired a
    second ago (401), a revoked token (401), and a token nobody issued (401)."""
    from backoffice.auth.models import ApiToken, hash_token
    from backoffice.auth.services import create_token, revoke_token, set_active, set_role

    client = app.test_client()
    token = users["radiologist"][1]
    url = f"/dicom-web/studies?StudyInstanceUID={history.current}"

    def status(value=token):
        return client.get(url, headers={"Authorization": f"Bearer {value}"}).status_code

    def change(apply):
        with facade.new_session(write=True) as s:
            apply(s)
            s.commit()

    assert status() == 200
    change(lambda s: set_role(s, "u_radiologist", "front_desk"))
    assert status() == 403
    change(lambda s: set_role(s, "u_radiologist", "radiologist"))
    assert status() == 200
    change(lambda s: set_active(s, "u_radiologist", False))
    assert status() == 401
    change(lambda s: set_active(s, "u_radiologist", True))
    assert status() == 200
    expired = []
    change(lambda s: expired.append(create_token(s, "u_radiologist", lifetime=timedelta(seconds=-1))))
    assert status(expired[0]) == 401
    with facade.new_session() as s:
        token_id = s.scalar(select(ApiToken.id).where(ApiToken.token_sha256 == hash_token(token)))
    change(lambda s: revoke_token(s, token_id))
    assert status() == 401
    assert status("not-a-token-anyone-issued") == 401
    assert facade.audit_flush(timeout=10)  # searches are audited off the answer path
    with facade.new_session() as s:
        refused = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "dicomweb.search")))
    # Each answered search is audited as its user; a refusal (401/403) is answered before any audit.
    assert [e.actor for e in refused] == ["u_radiologist"] * 3


def test_a_search_is_audited_off_the_answer_path_and_before_the_next_retrieval(app, users, history, facade,  # noqa: F811
                                                                              monkeypatch):
    """A QIDO-RS search is audited as a C-FIND is: queued, written by the audit writer after the answer.
    Tried: the writer held back (each batch written a quarter of a second late) while the same radiologist
    searches, then at once reads the study's metadata: the search is answered before its record is
    written, and the trail still has the search before the metadata read (the in-line record of the
    read first waits for what this process queued)."""
    import threading

    client = app.test_client()
    headers = {"Authorization": f"Bearer {users['radiologist'][1]}"}
    queue = facade._audit_queue
    write = queue._write
    held = threading.Event()

    def late(events):
        held.wait(10)
        write(events)

    monkeypatch.setattr(queue, "_write", late)

    def actions():
        with facade.new_session() as s:
            return list(s.scalars(select(AuditEvent.action).where(AuditEvent.action.like("dicomweb.%"))
                                  .order_by(AuditEvent.id)))

    search = client.get(f"/dicom-web/studies?StudyInstanceUID={history.current}", headers=headers)
    assert search.status_code == 200 and len(search.get_json()) == 1
    assert actions() == []  # answered, its record still queued
    assert not facade.audit_flush(timeout=0.2)
    threading.Timer(0.25, held.set).start()
    metadata = client.get(f"/dicom-web/studies/{history.current}/metadata", headers=headers)
    assert metadata.status_code == 200
    assert actions() == ["dicomweb.search", "dicomweb.metadata"]
    assert facade.audit_flush(timeout=0)


def test_a_share_link_does_not_open_ohif(app, users, history, tmp_path):  # noqa: F811
    """A share link opens its study in our viewer only (DESIGN.md: its one study, read-only). Tried: the
    referring doctor's unlocked browser asks for OHIF's page, its viewer route for the shared study, its
    config and a bundle: each is the login page, as for a stranger (bad implementation: OHIF served to any
    browser with a session, whose study list would then show whatever its QIDO-RS may read)."""
    from backoffice.radiology import ohif

    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text('<!doctype html><script>window.PUBLIC_URL="/"</script><div id="root"></div>')
    (dist / "app.bundle.0f6159c501addfe9.js").write_text("var x = 1;")
    app.config["OHIF_DIR"] = str(dist)
    ohif.init_app(app)  # before the app's first request, as create_app does when OHIF_DIR is set
    doctor = _unlocked(app, users, history)
    assert doctor.get(f"/dicom-web/studies/{history.current}/metadata").status_code == 200  # the link works
    for path in ("/ohif/", f"/ohif/viewer?StudyInstanceUIDs={history.current}", "/ohif/app-config.js",
                 "/ohif/app.bundle.0f6159c501addfe9.js"):
        response = doctor.get(path)
        assert response.status_code == 302 and "/login" in response.headers["Location"], path
    # The same files open to a radiologist: the refusal above is the share link's, not a broken route.
    radiologist = app.test_client()
    sign_in(radiologist, users, "radiologist")
    for path in ("/ohif/", "/ohif/app.bundle.0f6159c501addfe9.js"):
        response = radiologist.get(path)
        response.close()  # a file's response holds it open until closed
        assert response.status_code == 200, path
