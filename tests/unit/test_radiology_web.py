"""Radiology over HTTP: priors API, paper reproduction, media zip, reports, study pages, viewer images, share links."""

from __future__ import annotations

import io
import re
import subprocess
import zipfile
from datetime import timedelta

import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from archive_core.audit import AuditEvent
from tests.helpers import make_ct, require_tool
from tests.radiology_support import make_history, store


@pytest.fixture
def history(facade):
    return make_history(facade.archive)


@pytest.fixture
def users(app, facade):
    from backoffice.auth.services import create_token, create_user

    out = {}
    with facade.new_session(write=True) as s:
        for role in ("radiologist", "front_desk", "manager"):
            user = create_user(s, f"u_{role}", role=role, password="correct horse battery")
            out[role] = (user.id, create_token(s, user.login))
        s.commit()
    return out


def bearer(users, role):
    return {"Authorization": f"Bearer {users[role][1]}"}


def sign_in(client, users, role):
    with client.session_transaction() as session:
        session["_user_id"] = str(users[role][0])
        session["_fresh"] = True


def csrf(client, path):
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token"[^>]*?value="([^"]+)"', html).group(1)


def audit_actions(facade, study_uid=None):
    with facade.new_session() as s:
        q = select(AuditEvent.action)
        if study_uid:
            q = q.where(AuditEvent.study_uid == study_uid)
        return list(s.scalars(q.order_by(AuditEvent.id)))


def pdf_text(tmp_path, pdf: bytes) -> str:
    path = tmp_path / "out.pdf"
    path.write_bytes(pdf)
    return subprocess.run([require_tool("pdftotext"), "-layout", str(path), "-"], capture_output=True, text=True,
                          timeout=60, check=True).stdout


def pdf_image_count(tmp_path, pdf: bytes) -> int:
    path = tmp_path / "img.pdf"
    path.write_bytes(pdf)
    out = subprocess.run([require_tool("pdfimages"), "-list", str(path)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return len([line for line in out.splitlines()[2:] if line.strip()])


# -- priors API ------------------------------------------------------------------------------------


def test_priors_api_newest_first_and_audited(client, users, history, facade):
    response = client.get(f"/api/v1/studies/{history.current}/priors", headers=bearer(users, "radiologist"))
    assert response.status_code == 200
    items = response.get_json()["items"]
    assert [i["study_uid"] for i in items] == [history.prior_us_abdomen, history.prior_ct_chest, history.prior_mr_chest]
    assert items[1] == {"study_uid": history.prior_ct_chest, "study_date": "2023-01-10", "modalities": ["CT"],
                        "description": "TDM THORAX", "body_parts": ["CHEST"], "relevant": True}
    assert [i["relevant"] for i in items] == [False, True, True]
    assert "study.priors" in audit_actions(facade, history.current)


def test_priors_api_pages_by_100(client, users, facade, monkeypatch):
    from backoffice.api import radiology

    history = make_history(facade.archive)
    monkeypatch.setattr(radiology, "PAGE_SIZE", 2)
    first = client.get(f"/api/v1/studies/{history.current}/priors", headers=bearer(users, "radiologist")).get_json()
    assert len(first["items"]) == 2 and first["next"].endswith("offset=2")
    second = client.get(first["next"], headers=bearer(users, "radiologist")).get_json()
    assert [i["study_uid"] for i in second["items"]] == [history.prior_mr_chest] and "next" not in second


@pytest.mark.parametrize("role, uid, status", [("front_desk", "current", 403), ("radiologist", None, 404)])
def test_priors_api_refusals(client, users, history, role, uid, status):
    study_uid = getattr(history, uid) if uid else "1.2.3.999"
    response = client.get(f"/api/v1/studies/{study_uid}/priors", headers=bearer(users, role))
    assert response.status_code == status and "error" in response.get_json()


# -- paper reproduction ----------------------------------------------------------------------------


def test_reproduction_without_report_nor_choice(client, users, history, facade, tmp_path):
    response = client.get(f"/api/v1/studies/{history.current}/reproduction.pdf", headers=bearer(users, "front_desk"))
    assert response.status_code == 200 and response.mimetype == "application/pdf"
    text = pdf_text(tmp_path, response.data)
    assert "à configurer" in text and "Compte rendu non signé / absent" in text
    assert "MARTIN Élise" in text and "TDM THORAX" in text and "01/03/2024" in text
    assert pdf_image_count(tmp_path, response.data) == 2  # first image of each of the two series
    assert audit_actions(facade, history.current).count("study.print") == 1


def test_reproduction_with_signed_report_key_images_and_practice(app, client, users, history, facade, tmp_path):
    from backoffice.radiology import services

    app.config.update(PRACTICE_NAME="Cabinet de radiologie du Parc", PRACTICE_ADDRESS="1 rue des Lilas, 75011 Paris")
    with facade.new_session(write=True) as s:
        services.save_draft(s, history.current, author="u_radiologist", findings="Pas de nodule.",
                            conclusion="Examen normal.")
        services.sign_report(s, history.current, signed_by="u_radiologist")
        series = facade.study_detail(s, history.current).series
        sops = [r.sop_instance_uid for r in facade.series_instances(s, series[0].series_uid)]
        for n in range(6):
            services.add_key_image(s, history.current, sops[n % 3], chosen_by="u_radiologist", frame=0,
                                   window_center=40 + n, window_width=400)
        s.commit()
    response = client.get(f"/api/v1/studies/{history.current}/reproduction.pdf?per_page=6",
                          headers=bearer(users, "radiologist"))
    text = pdf_text(tmp_path, response.data)
    assert "Cabinet de radiologie du Parc" in text and "1 rue des Lilas" in text
    assert "Examen normal." in text and "Signé par u_radiologist" in text and "non signé" not in text
    assert "F 45 / L 400" in text  # the window chosen for the sixth image
    assert pdf_image_count(tmp_path, response.data) == 6
    info = subprocess.run([require_tool("pdfinfo"), str(tmp_path / "img.pdf")], capture_output=True, text=True,
                          timeout=60, check=True).stdout
    assert re.search(r"Pages:\s+2\b", info)  # the report, then six images on one page
    assert re.search(r"Page size:\s+595\.\d* x 841\.\d* pts \(A4\)", info)


def test_reproduction_rejects_an_odd_layout(client, users, history):
    response = client.get(f"/api/v1/studies/{history.current}/reproduction.pdf?per_page=5",
                          headers=bearer(users, "radiologist"))
    assert response.status_code == 400


# -- media -----------------------------------------------------------------------------------------


def test_media_zip_holds_a_pdi_file_set(client, users, history, facade, tmp_path):
    response = client.get(f"/api/v1/studies/{history.current}/media.zip?prior={history.prior_mr_chest}",
                          headers=bearer(users, "front_desk"))
    assert response.status_code == 200
    with zipfile.ZipFile(io.BytesIO(response.data)) as zf:
        names = zf.namelist()
        zf.extractall(tmp_path / "cd")
    assert "DICOMDIR" in names and "README.TXT" in names and "INDEX.HTM" in names
    dicomdir = pydicom.dcmread(tmp_path / "cd" / "DICOMDIR")
    studies = {r.StudyInstanceUID for r in dicomdir.DirectoryRecordSequence if r.DirectoryRecordType == "STUDY"}
    assert studies == {history.current, history.prior_mr_chest}
    images = [r for r in dicomdir.DirectoryRecordSequence if r.DirectoryRecordType == "IMAGE"]
    assert len(images) == 5
    first = pydicom.dcmread(tmp_path.joinpath("cd", *images[0].ReferencedFileID))
    assert first.SOPInstanceUID == images[0].ReferencedSOPInstanceUIDInFile
    assert "study.media" in audit_actions(facade, history.current)


def test_media_zip_refuses_another_patients_study(client, users, history):
    response = client.get(f"/api/v1/studies/{history.current}/media.zip?prior={history.other_patient}",
                          headers=bearer(users, "front_desk"))
    assert response.status_code == 400


# -- reports ---------------------------------------------------------------------------------------


def test_report_draft_sign_then_amend_through_pages(client, users, history, facade):
    sign_in(client, users, "radiologist")
    page = f"/radiology/studies/{history.current}"
    token = csrf(client, page)
    first = {"csrf_token": token, "findings": "Nodule de 4 mm.", "conclusion": "À contrôler."}
    client.post(f"{page}/report", data=first)
    client.post(f"{page}/report/sign", data={"csrf_token": token})
    html = client.get(page).get_data(as_text=True)
    assert "Signé par u_radiologist" in html and "Nodule de 4 mm." in html
    # a new draft without a reason is refused; with one, it becomes version 2
    second = {**first, "findings": "Nodule de 5 mm."}
    client.post(f"{page}/report", data=second)
    assert "avenant doit en donner le motif" in client.get(page).get_data(as_text=True)
    client.post(f"{page}/report", data={**second, "amendment_reason": "erreur de mesure"})
    client.post(f"{page}/report/sign", data={"csrf_token": token})
    from backoffice.radiology import services

    with facade.new_session() as s:
        versions = services.reports_of(s, history.current)
        assert [(r.version, r.status, r.findings) for r in versions] == [
            (2, "signed", "Nodule de 5 mm."), (1, "signed", "Nodule de 4 mm.")]
        assert versions[0].amends_id == versions[1].id
    assert audit_actions(facade, history.current).count("report.sign") == 2


def test_a_report_error_handled_by_the_page_commits_nothing(client, users, history, facade, monkeypatch):
    """Bad case tried: the signing service has already changed the draft when it refuses (a domain
    error the page turns into a message and a redirect): the change must not be committed."""
    from backoffice.radiology import services

    sign_in(client, users, "radiologist")
    page = f"/radiology/studies/{history.current}"
    token = csrf(client, page)
    client.post(f"{page}/report", data={"csrf_token": token, "findings": "Nodule de 4 mm."})

    def half_done(session, study_uid, *, signed_by, **identity):
        services.current_draft(session, study_uid).findings = "écrit à moitié"
        session.flush()
        raise services.RadiologyError("refused after writing", code="empty_report")

    monkeypatch.setattr(services, "sign_report", half_done)
    answer = client.post(f"{page}/report/sign", data={"csrf_token": token}, follow_redirects=True)
    # the one handler's sentence (radiology/errors.py), in French, on the study page; never the English message
    body = answer.get_data(as_text=True)
    assert "un compte rendu vide ne se signe pas" in body and "refused after writing" not in body
    with facade.new_session() as s:
        assert [r.findings for r in services.reports_of(s, history.current)] == ["Nodule de 4 mm."]


def test_a_refusal_a_script_posted_is_answered_by_the_one_handler_in_json(client, users, history, facade):
    """Bad input tried: a 25th key image chosen from the viewer (its script posts with Accept: JSON), and an
    amendment without its reason from the report editor's autosave. Each is refused by the service; the
    radiology blueprint's one handler answers the status and the French sentence as JSON, and nothing of
    the refused action is kept."""
    from backoffice.radiology import services

    sign_in(client, users, "radiologist")
    page = f"/radiology/studies/{history.current}"
    token = csrf(client, page)
    with facade.new_session(write=True) as s:
        series = facade.study_detail(s, history.current).series
        sop = facade.series_instances(s, series[0].series_uid)[0].sop_instance_uid
        for n in range(services.MAX_KEY_IMAGES):
            services.add_key_image(s, history.current, sop, chosen_by="u_radiologist", window_center=float(n),
                                   window_width=400)
        s.commit()
    json_headers = {"Accept": "application/json"}
    refused = client.post(f"{page}/key-images", data={"csrf_token": token, "sop_instance_uid": sop, "wc": "999",
                                                      "ww": "400"}, headers=json_headers)
    assert refused.status_code == 409
    assert refused.get_json()["error"] == {"code": "conflict", "message": "24 images au plus"}
    with facade.new_session() as s:
        assert len(services.key_images(s, history.current)) == services.MAX_KEY_IMAGES

    client.post(f"{page}/report", data={"csrf_token": token, "findings": "RAS"})
    client.post(f"{page}/report/sign", data={"csrf_token": token})
    autosaved = client.post(f"{page}/report/autosave", data={"csrf_token": token, "findings": "changé"},
                            headers={**json_headers, "Accept-Language": "en"})
    assert autosaved.status_code == 409
    message = autosaved.get_json()["error"]["message"]
    assert "amendment" in message.lower() and "avenant" not in message  # the English page's sentence
    with facade.new_session() as s:
        assert [r.status for r in services.reports_of(s, history.current)] == ["signed"]


def test_every_radiology_refusal_has_a_sentence():
    """A code raised without a row would show only the general sentence: every code raised in
    backoffice/radiology has its row in radiology/errors.py."""
    import ast
    from pathlib import Path

    from backoffice.radiology.errors import ERRORS

    codes = set()
    for path in (Path(__file__).resolve().parents[2] / "backoffice" / "radiology").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                codes |= {kw.value.value for kw in node.exc.keywords
                          if kw.arg == "code" and isinstance(kw.value, ast.Constant)}
    assert len(codes) >= 8 and sorted(codes - set(ERRORS)) == []


def test_front_desk_cannot_write_reports(client, users, history):
    sign_in(client, users, "front_desk")
    page = f"/radiology/studies/{history.current}"
    token = csrf(client, f"/radiology/studies/{history.current}")
    assert client.post(f"{page}/report", data={"csrf_token": token, "findings": "x"}).status_code == 403


@pytest.mark.parametrize("statement", ["UPDATE radiology_report SET findings = 'changed'",
                                       "DELETE FROM radiology_report"])
def test_the_database_refuses_to_change_a_signed_report(database_url, statement):
    from sqlalchemy import create_engine, text

    from tests.helpers import migrate

    migrate(database_url)
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO radiology_report (study_uid, version, status, indication, technique, findings, conclusion,"
            " author, amendment_reason, created_at, updated_at) VALUES ('1.2.3', 1, 'signed', '', '', 'ok', 'ok',"
            " 'dr', '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
    with pytest.raises(Exception, match="(?i)signed report is frozen"):
        with engine.begin() as conn:
            conn.execute(text(statement))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT findings FROM radiology_report")).scalar_one() == "ok"
    engine.dispose()


def test_reports_received_over_dicom_are_shown(client, users, history, facade):
    pdf = make_ct(study_uid=history.current, patient_id=history.patient_id, modality="DOC")
    for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                    "SamplesPerPixel", "PhotometricInterpretation"):
        delattr(pdf, keyword)
    pdf.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    pdf.file_meta.MediaStorageSOPClassUID = pdf.SOPClassUID
    pdf.DocumentTitle = "Compte rendu scanner"
    pdf.MIMETypeOfEncapsulatedDocument = "application/pdf"
    pdf.EncapsulatedDocument = b"%PDF-1.4\n% test\n%%EOF\n\x00"
    sr = make_ct(study_uid=history.current, patient_id=history.patient_id, modality="SR", sop_uid=generate_uid())
    del sr.PixelData
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID
    sr.VerificationFlag = "VERIFIED"
    title, finding = Dataset(), Dataset()
    title.CodeMeaning, title.CodeValue, title.CodingSchemeDesignator = "Rapport d'imagerie", "18748-4", "LN"
    sr.ConceptNameCodeSequence = [title]
    finding.RelationshipType, finding.ValueType, finding.TextValue = "CONTAINS", "TEXT", "Lésion hépatique bénigne."
    concept = Dataset()
    concept.CodeMeaning, concept.CodeValue, concept.CodingSchemeDesignator = "Conclusion", "121077", "DCM"
    finding.ConceptNameCodeSequence = [concept]
    sr.ContentSequence = [finding]
    store(facade.archive, [pdf, sr])
    sign_in(client, users, "front_desk")
    html = client.get(f"/radiology/studies/{history.current}").get_data(as_text=True)
    assert "Compte rendu scanner" in html and "Conclusion : Lésion hépatique bénigne." in html
    link = re.search(r'href="(/radiology/documents/[^"]+\.pdf)"', html).group(1)
    response = client.get(link)
    assert response.mimetype == "application/pdf" and response.data.endswith(b"%%EOF")


# -- pages and images ------------------------------------------------------------------------------


def test_browser_finds_by_patient_and_pages_are_audited(client, users, history, facade):
    sign_in(client, users, "front_desk")
    html = client.get("/radiology/?patient=martin&modality=MR").get_data(as_text=True)
    assert history.prior_mr_chest in html and history.prior_ct_chest not in html
    assert "study.search" in audit_actions(facade)


def test_study_page_shows_series_priors_and_relevance(client, users, history, facade):
    sign_in(client, users, "radiologist")
    html = client.get(f"/radiology/studies/{history.current}").get_data(as_text=True)
    assert html.count('class="relevant"') == 2
    assert f"compare={history.prior_ct_chest}" in html
    assert html.count("/image?") >= 2  # thumbnails of both series
    assert "study.view" in audit_actions(facade, history.current)


def test_viewer_compares_only_the_same_patients_studies(client, users, history):
    sign_in(client, users, "radiologist")
    ok = client.get(f"/radiology/studies/{history.current}/viewer?compare={history.prior_ct_chest}")
    assert ok.status_code == 200 and ok.get_data(as_text=True).count('<section class="pane') == 2
    assert client.get(f"/radiology/studies/{history.current}/viewer?compare={history.other_patient}").status_code == 404


def test_viewer_presets_are_named_in_the_readers_language_not_by_code(client, users, history):
    """The preset list showed the core's codes ("1 lung", "2 mediastinum"); a reader sees names."""
    sign_in(client, users, "radiologist")
    url = f"/radiology/studies/{history.current}/viewer"
    options = re.findall(r'<option value="(\w+)"[^>]*>([^<]+)</option>', client.get(url).get_data(as_text=True))
    labels = {value: text.split(" (")[0] for value, text in options}
    assert labels["lung"] == "1 Poumon" and labels["mediastinum"] == "2 Médiastin" and labels["bone"] == "5 Os"
    assert not any(code in text for code, text in labels.items())
    client.post("/language", data={"lang": "en", "csrf_token": csrf(client, "/")})
    options = re.findall(r'<option value="(\w+)"[^>]*>([^<]+)</option>', client.get(url).get_data(as_text=True))
    assert {value: text.split(" (")[0] for value, text in options}["mediastinum"] == "2 Mediastinum"


def test_image_endpoint_renders_with_window_and_preset(client, users, history, facade):
    sign_in(client, users, "front_desk")
    with facade.new_session() as s:
        series = facade.study_detail(s, history.current).series[0]
    sops = client.get(f"/radiology/series/{series.series_uid}/instances.json").get_json()["items"]
    assert len(sops) == 3
    url = f"/radiology/instances/{sops[0]['sop_instance_uid']}/image"
    narrow = Image.open(io.BytesIO(client.get(url + "?wc=-1000&ww=10&size=32").data))
    lung = Image.open(io.BytesIO(client.get(url + "?preset=lung&size=32").data))
    assert narrow.size == (32, 32) and narrow.getextrema() == (0, 255)
    assert lung.getextrema() != narrow.getextrema()
    assert client.get(url + "?preset=nope").status_code == 400
    assert client.get("/radiology/instances/1.2.3/image").status_code == 404


# -- share links -----------------------------------------------------------------------------------


def _create_share(client, users, history):
    sign_in(client, users, "radiologist")
    page = f"/radiology/studies/{history.current}"
    client.post(f"{page}/share", data={"csrf_token": csrf(client, page), "recipient": "Dr Referent", "days": 7})
    html = client.get(page).get_data(as_text=True)
    url = re.search(r"<code>(http[^<]+)</code>", html).group(1)
    code = re.search(r'class="share-code">(\d{6})<', html).group(1)
    return url.replace("http://localhost", ""), code


def test_share_link_shows_the_signed_report_and_works_on_a_second_device(app, users, history, facade):
    """The doctor's link: the patient's name, the signed report and the images once the code is typed, and the
    same code on a second device for the life of the link. Bad input tried: no code, a wrong code, a stranger
    guessing codes until the link locks (brute-force bound), an image of another patient's study."""
    from backoffice.radiology import services

    client = app.test_client()
    sign_in(client, users, "radiologist")
    page = f"/radiology/studies/{history.current}"
    token = csrf(client, page)
    client.post(f"{page}/report", data={"csrf_token": token, "findings": "Nodule apical droit de 6 mm.",
                                        "conclusion": "Contrôle à 3 mois."})
    client.post(f"{page}/report/sign", data={"csrf_token": token})
    url, code = _create_share(client, users, history)
    assert history.patient_id not in url and "MARTIN" not in url.upper()
    doctor = app.test_client()
    assert doctor.get(url + "/viewer").status_code == 302  # no code yet
    token = csrf(doctor, url)
    wrong = "000000" if code != "000000" else "111111"
    answer = doctor.post(url, data={"csrf_token": token, "code": wrong}, follow_redirects=True)
    assert "Code incorrect" in answer.get_data(as_text=True)
    assert doctor.post(url, data={"csrf_token": token, "code": code}).status_code == 302
    shared = doctor.get(url).get_data(as_text=True)
    assert "MARTIN" in shared  # the patient's name
    assert "Nodule apical droit de 6 mm." in shared and "Contrôle à 3 mois." in shared  # the signed report
    images = re.findall(r'src="(/share/[^"]+/image[^"]*)"', shared)
    assert images and doctor.get(images[0].replace("&amp;", "&")).mimetype == "image/jpeg"  # and its images
    viewer = doctor.get(url + "/viewer")
    assert viewer.status_code == 200 and "MARTIN" in viewer.get_data(as_text=True)
    with facade.new_session() as s:
        series = facade.study_detail(s, history.current).series[0]
        other_sop = facade.study_detail(s, history.other_patient).series[0].first_sop_uid
    items = doctor.get(f"{url}/series/{series.series_uid}/instances.json").get_json()["items"]
    assert doctor.get(f"{url}/instances/{items[0]['sop_instance_uid']}/image?size=16").mimetype == "image/png"
    assert doctor.get(f"{url}/instances/{other_sop}/image").status_code == 404  # only the shared study
    # The doctor's second device: the same code opens the link again.
    tablet = app.test_client()
    tablet.post(url, data={"csrf_token": csrf(tablet, url), "code": code})
    assert "Nodule apical droit de 6 mm." in tablet.get(url).get_data(as_text=True)
    # A stranger guessing: each wrong code counts; at the limit the link is locked for everyone.
    stranger = app.test_client()
    guesses = [c for c in (f"{n:06d}" for n in range(1, 20)) if c != code][:services.SHARE_MAX_FAILED_CODES]
    for guess in guesses:
        last = stranger.post(url, data={"csrf_token": csrf(stranger, url), "code": guess})
    assert last.status_code == 410 and "bloqué" in last.get_data(as_text=True)
    assert stranger.get(url).status_code == 410
    assert tablet.get(url).status_code == 410
    actions = audit_actions(facade, history.current)
    assert "share.create" in actions and "share.open" in actions and "share.bad_code" in actions


def test_revoked_and_expired_links_are_gone(app, users, history, facade):
    from backoffice.radiology import services
    from backoffice.radiology.models import ShareLink

    client = app.test_client()
    url, code = _create_share(client, users, history)
    doctor = app.test_client()
    doctor.post(url, data={"csrf_token": csrf(doctor, url), "code": code})
    assert doctor.get(url + "/viewer").status_code == 200
    with facade.new_session(write=True) as s:
        link_id = s.scalar(select(ShareLink.id))
    page = f"/radiology/studies/{history.current}"
    client.post(f"/radiology/shares/{link_id}/revoke", data={"csrf_token": csrf(client, page)})
    assert doctor.get(url + "/viewer").status_code == 410
    assert doctor.get(url).status_code == 410
    with facade.new_session(write=True) as s:
        new = services.create_share_link(s, history.current, created_by="dr", days=1,
                                         now=services.utcnow() - timedelta(days=2))
        s.commit()
    assert app.test_client().get(f"/share/{new.token}").status_code == 410
    assert app.test_client().get("/share/not-a-token").status_code == 410


def test_viewer_scrolls_through_the_frames_of_a_multiframe_object(client, users, facade):
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    store(facade.archive, [ds])
    sign_in(client, users, "radiologist")
    items = client.get(f"/radiology/series/{ds.SeriesInstanceUID}/instances.json").get_json()["items"]
    assert [(i["sop_instance_uid"], i["frame"]) for i in items] == [(ds.SOPInstanceUID, 0), (ds.SOPInstanceUID, 1)]
    second = Image.open(io.BytesIO(client.get(f"/radiology/instances/{ds.SOPInstanceUID}/image?frame=1").data))
    assert second.mode == "RGB" and second.getpixel((50, 5)) == (0, 255, 255)


def test_media_command_writes_a_mounted_folder(runner, history, facade, tmp_path):
    result = runner.invoke(args=["radiology", "media", str(tmp_path / "usb"), history.current, history.prior_ct_chest])
    assert result.exit_code == 0, result.output
    assert "5 objects written" in result.output
    assert (tmp_path / "usb" / "DICOMDIR").exists() and (tmp_path / "usb" / "README.TXT").exists()
    refused = runner.invoke(args=["radiology", "media", str(tmp_path / "other"), history.current,
                                  history.other_patient])
    assert refused.exit_code != 0 and "same patient" in refused.output
    assert "study.media" in audit_actions(facade, history.current)


def test_reports_and_key_images_through_the_api(client, users, history, facade):
    url = f"/api/v1/studies/{history.current}"
    rad = bearer(users, "radiologist")
    created = client.put(f"{url}/reports/draft", json={"findings": "RAS", "conclusion": "Normal"}, headers=rad)
    assert created.status_code == 201 and created.get_json()["status"] == "draft"
    assert client.put(f"{url}/reports/draft", json={"conclusion": "Normal."}, headers=rad).status_code == 200
    signed = client.post(f"{url}/reports/sign", headers=rad)
    assert signed.status_code == 200 and signed.get_json()["signed_by"] == "u_radiologist"
    assert client.post(f"{url}/reports/sign", headers=rad).status_code == 409  # nothing left to sign
    assert client.put(f"{url}/reports/draft", json={"conclusion": "x"}, headers=rad).status_code == 409  # no reason
    versions = client.get(f"{url}/reports", headers=bearer(users, "front_desk")).get_json()["items"]
    assert [(v["version"], v["status"], v["conclusion"]) for v in versions] == [(1, "signed", "Normal.")]
    assert client.put(f"{url}/reports/draft", json={}, headers=bearer(users, "front_desk")).status_code == 403

    with facade.new_session() as s:
        sop = facade.study_detail(s, history.current).series[1].first_sop_uid
        other = facade.study_detail(s, history.other_patient).series[0].first_sop_uid
    chosen = client.post(f"{url}/key-images", json={"sop_instance_uid": sop, "window_center": -600,
                                                    "window_width": 1500}, headers=bearer(users, "front_desk"))
    assert chosen.status_code == 201 and chosen.get_json()["position"] == 1
    assert client.post(f"{url}/key-images", json={"sop_instance_uid": other}, headers=rad).status_code == 400
