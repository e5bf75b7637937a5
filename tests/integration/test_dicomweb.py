"""DICOMweb through a client nobody here wrote (``dicomweb-client``) against a real ``flask web`` process.

Images go in by C-STORE (pynetdicom) into the archive; the web process serves the same instance.
"""

from __future__ import annotations

import json
import os
from io import BytesIO
from pathlib import Path

import pytest
import requests
from pydicom import dcmread
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from tests.helpers import archive_server, associate_ct_modality, free_port, make_ct
from tests.servers import web_process


STOW_LIMIT = 300_000


@pytest.fixture
def web(tmp_path):
    """An archive holding two studies (stored by C-STORE), and ``flask --app wsgi web`` on it."""
    from archive_core.db import make_engine, session_factory
    from backoffice.auth.services import create_token, create_user

    instance = tmp_path / "instance"
    instance.mkdir()
    study_a, study_b, series_a = generate_uid(), generate_uid(), generate_uid()
    datasets = [
        make_ct(patient_id="PAT001", patient_name="Dupont^Jean", study_uid=study_a, series_uid=series_a,
                study_date="20240115", InstanceNumber=1),
        make_ct(patient_id="PAT001", patient_name="Dupont^Jean", study_uid=study_a, series_uid=series_a,
                study_date="20240115", InstanceNumber=2),
        make_ct(patient_id="PAT002", patient_name="Martin^Éloïse", study_uid=study_b, study_date="20230610",
                modality="MR"),
    ]
    stored: dict[str, bytes] = {}
    with archive_server(instance) as (archive, running):
        assoc = associate_ct_modality(running.port)
        for ds in datasets:
            assert assoc.send_c_store(ds).Status == 0
        assoc.release()
        assert archive.ingestor.wait_indexed()
        from archive_core.tiers import read_instance

        for ds in datasets:
            stored[ds.SOPInstanceUID] = read_instance(archive, ds.SOPInstanceUID)
        database_url = archive.settings.database_url
    engine = make_engine(database_url)
    with session_factory(engine)() as s:
        create_user(s, "dr", role="radiologist", password="correct horse battery")
        create_user(s, "desk", role="front_desk", password="correct horse battery")
        token = create_token(s, "dr")
        desk_token = create_token(s, "desk")
        from backoffice.radiology.services import create_share_link

        share = create_share_link(s, study_a, created_by="dr", days=7)
        s.commit()
    engine.dispose()
    port = free_port()
    # dicomweb-client sends a Host header without the port: the public URL is set, as behind a proxy.
    env = {**os.environ, "ARCHIVAGE_INSTANCE_PATH": str(instance), "ARCHIVAGE_STORAGE_MIN_FREE_BYTES": "0",
           "ARCHIVAGE_DICOMWEB_BASE_URL": f"http://127.0.0.1:{port}/dicom-web",
           "ARCHIVAGE_DICOMWEB_MAX_STOW_BYTES": str(STOW_LIMIT),
           "ARCHIVAGE_DICOMWEB_CORS_ORIGINS": '["https://viewer.example.fr"]',
           "TCP_NODELAY": "1"}
    with web_process(env, tmp_path / "web.log", port=port) as base:
        url = f"{base}/dicom-web"
        client = DICOMwebClient(url, headers={"Authorization": f"Bearer {token}"})
        yield {"client": client, "url": url, "token": token, "desk_token": desk_token, "datasets": datasets,
               "stored": stored, "share": (share.token, share.code), "study_a": study_a, "study_b": study_b, "series_a": series_a, "instance": instance}


def _values(answers, tag):
    return sorted(a[tag]["Value"][0] if "Value" in a.get(tag, {}) else None for a in answers)


def test_qido_searches_match_like_c_find(web):
    """Studies by person name (wildcard, accents folded), date range, modality, UID list; series and
    instances at every level; includefield, limit/offset; the JSON model's PN and number forms."""
    client = web["client"]
    everything = client.search_for_studies()
    assert _values(everything, "0020000D") == sorted([web["study_a"], web["study_b"]])
    one = client.search_for_studies(search_filters={"PatientName": "martin^elo*"}, fuzzymatching=False)
    assert [a["0020000D"]["Value"][0] for a in one] == [web["study_b"]]
    assert one[0]["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Martin^Éloïse"}]}
    assert one[0]["00201208"] == {"vr": "IS", "Value": [1]}
    by_date = client.search_for_studies(search_filters={"StudyDate": "20240101-"})
    assert [a["0020000D"]["Value"][0] for a in by_date] == [web["study_a"]]
    by_modality = client.search_for_studies(search_filters={"ModalitiesInStudy": "MR"})
    assert [a["0020000D"]["Value"][0] for a in by_modality] == [web["study_b"]]
    uid_list = client.search_for_studies(search_filters={"StudyInstanceUID": f"{web['study_a']},{web['study_b']}"})
    assert len(uid_list) == 2
    assert len(client.search_for_studies(limit=1)) == 1
    assert len(client.search_for_studies(limit=1, offset=1)) == 1
    assert client.search_for_studies(limit=1)[0] != client.search_for_studies(limit=1, offset=1)[0]
    # includefield: an attribute not answered by default.
    with_field = client.search_for_studies(fields=["StudyDescription"], search_filters={"PatientID": "PAT001"})
    assert "00081030" in with_field[0] and "00081030" not in everything[0]

    series = client.search_for_series(web["study_a"])
    assert [s["0020000E"]["Value"][0] for s in series] == [web["series_a"]]
    assert series[0]["00201209"]["Value"] == [2]
    all_series = client.search_for_series(search_filters={"Modality": "MR"})
    assert len(all_series) == 1 and all_series[0]["0020000D"]["Value"] == [web["study_b"]]  # study attrs too
    instances = client.search_for_instances(web["study_a"], web["series_a"])
    assert sorted(i["00080018"]["Value"][0] for i in instances) == sorted(
        d.SOPInstanceUID for d in web["datasets"][:2])
    assert len(client.search_for_instances()) == 3
    assert len(client.search_for_instances(search_filters={"InstanceNumber": "2"})) == 1
    assert client.search_for_studies(search_filters={"PatientName": "nobody*"}) == []
    # includefield=all and a match key given by its tag, as some viewers send them.
    response = requests.get(f"{web['url']}/studies?includefield=all&00100020=PAT002",
                            headers={"Authorization": f"Bearer {web['token']}"})
    [only] = response.json()
    assert response.headers["Content-Type"] == "application/dicom+json"
    assert only["00081030"] == {"vr": "LO"} and only["00080061"]["Value"] == ["MR"]  # description empty, modalities
    assert only["00100020"]["Value"] == ["PAT002"]


@pytest.mark.parametrize("query", ["StudyDate=2024-13-45", "limit=-1", "limit=ten", "fuzzymatching=maybe",
                                   "NoSuchAttribute=1", "includefield=NoSuchAttribute", "SOPInstanceUID=1.2"])
def test_qido_invalid_parameters_are_400(web, query):
    """Bad input: a malformed date, bad limit, unknown attributes, an instance key in a study search."""
    response = requests.get(f"{web['url']}/studies?{query}", headers={"Authorization": f"Bearer {web['token']}"})
    assert response.status_code == 400
    assert response.json()["error"]["message"]


def test_access_needs_a_token_of_a_reading_role(web):
    """No credentials: 401 (no redirect to a login page); a wrong token 401; a front-desk token 403."""
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        response = requests.get(f"{web['url']}/studies", headers=headers, allow_redirects=False)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    response = requests.get(f"{web['url']}/studies", headers={"Authorization": f"Bearer {web['desk_token']}"})
    assert response.status_code == 403


def test_wado_rs_returns_the_stored_bytes(web):
    """retrieve_instance / retrieve_study: the objects as sent by C-STORE, same syntax and values;
    the instance part is byte-identical to the file the archive stored."""
    client = web["client"]
    first = web["datasets"][0]
    got = client.retrieve_instance(web["study_a"], web["series_a"], first.SOPInstanceUID)
    assert got.SOPInstanceUID == first.SOPInstanceUID
    assert got.PixelData == first.PixelData and got.PatientName == first.PatientName
    raw = requests.get(f"{web['url']}/studies/{web['study_a']}/series/{web['series_a']}/instances/"
                       f"{first.SOPInstanceUID}", headers={"Authorization": f"Bearer {web['token']}",
                                                            "Accept": 'multipart/related; type="application/dicom"'})
    boundary = raw.headers["Content-Type"].split("boundary=")[1]
    part = raw.content.split(f"--{boundary}".encode())[1]
    body = part.split(b"\r\n\r\n", 1)[1][: -len(b"\r\n")]
    assert raw.headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    assert body == web["stored"][first.SOPInstanceUID]  # the stored file, byte for byte
    study = client.retrieve_study(web["study_a"])
    assert sorted(d.SOPInstanceUID for d in study) == sorted(d.SOPInstanceUID for d in web["datasets"][:2])


def test_wado_rs_metadata_has_bulk_data_uris(web):
    """retrieve_instance_metadata: the attributes as JSON, the pixel data only as a BulkDataURI that answers."""
    client = web["client"]
    first = web["datasets"][0]
    meta = client.retrieve_instance_metadata(web["study_a"], web["series_a"], first.SOPInstanceUID)
    assert meta["00100020"]["Value"] == ["PAT001"]
    assert "InlineBinary" not in meta["7FE00010"]
    uri = meta["7FE00010"]["BulkDataURI"]
    bulk = client.retrieve_bulkdata(uri)
    assert bulk == [first.PixelData]
    series_meta = client.retrieve_series_metadata(web["study_a"], web["series_a"])
    assert len(series_meta) == 2


def test_wado_rs_unknown_uids_are_404_and_bad_accept_406(web):
    """Bad input: an unknown study, a malformed UID, an Accept of a syntax we cannot convert to."""
    auth = {"Authorization": f"Bearer {web['token']}"}
    assert requests.get(f"{web['url']}/studies/1.2.3.4.5", headers=auth).status_code == 404
    assert requests.get(f"{web['url']}/studies/not-a-uid/metadata", headers=auth).status_code == 400
    jpeg = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    response = requests.get(f"{web['url']}/studies/{web['study_a']}", headers={**auth, "Accept": jpeg})
    assert response.status_code == 406


def test_wado_rs_converts_to_implicit_vr_keeping_uids(web):
    """A requested uncompressed syntax other than the stored one: converted, every UID kept."""
    auth = {"Authorization": f"Bearer {web['token']}"}
    implicit = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2'
    first = web["datasets"][0]
    raw = requests.get(f"{web['url']}/studies/{web['study_a']}/series/{web['series_a']}/instances/"
                       f"{first.SOPInstanceUID}", headers={**auth, "Accept": implicit})
    assert raw.status_code == 200
    boundary = raw.headers["Content-Type"].split("boundary=")[1]
    head, body = raw.content.split(f"--{boundary}".encode())[1].split(b"\r\n\r\n", 1)
    assert b"transfer-syntax=1.2.840.10008.1.2\r\n" in head + b"\r\n"
    got = dcmread(BytesIO(body[: -len(b"\r\n")]))
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert got.SOPInstanceUID == first.SOPInstanceUID and got.StudyInstanceUID == first.StudyInstanceUID
    assert got.PixelData == first.PixelData


def test_every_request_is_audited_once(web):
    """One audit event per request (a study retrieval of two instances is one event), with the caller."""
    from archive_core.audit import AuditEvent
    from archive_core.config import Settings
    from archive_core.db import make_engine, session_factory
    from sqlalchemy import select

    client = web["client"]
    client.search_for_studies()
    client.retrieve_study(web["study_a"])
    engine = make_engine(Settings(instance_path=web["instance"]).database_url)
    with session_factory(engine)() as s:
        events = s.execute(select(AuditEvent.action, AuditEvent.actor, AuditEvent.study_uid)
                           .where(AuditEvent.action.like("dicomweb.%")).order_by(AuditEvent.id)).all()
    engine.dispose()
    assert [(e.action, e.actor) for e in events] == [("dicomweb.search", "dr"), ("dicomweb.retrieve", "dr")]
    assert events[1].study_uid == web["study_a"]


def test_searches_are_answered_while_the_trail_is_locked_and_audited_before_the_web_process_stops(web):
    """QIDO-RS searches are audited as C-FIND queries are: written by a writer thread after the answer,
    and the web process writes what is still queued when it is stopped. Tried: the database held by
    another writer (an open BEGIN IMMEDIATE, as a long purge would) while the radiologist searches five
    times, then SIGTERM to the web process and the lock released half a second later."""
    import signal
    import sqlite3
    import time

    from archive_core.config import Settings
    from tests.helpers import pid_started_with_port

    path = Settings(instance_path=web["instance"]).database_url.removeprefix("sqlite:///")
    headers = {"Authorization": f"Bearer {web['token']}", "Accept": "application/dicom+json"}
    lock = sqlite3.connect(path, isolation_level=None, timeout=30)
    lock.execute("BEGIN IMMEDIATE")
    try:
        for _ in range(5):
            # An audit written before the answer would wait here for the lock (30 s) and then fail.
            answer = requests.get(f"{web['url']}/studies?PatientID=PAT001", headers=headers, timeout=10)
            assert answer.status_code == 200 and len(answer.json()) == 1
        assert lock.execute("SELECT count(*) FROM audit_event WHERE action = 'dicomweb.search'").fetchone() == (0,)
        pid = pid_started_with_port(int(web["url"].split(":")[2].split("/")[0]))
        os.kill(pid, signal.SIGTERM)
        time.sleep(0.5)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline, "the web process did not stop"
        time.sleep(0.05)  # a process's exit has no event to wait on from here
    reader = sqlite3.connect(path)
    searches = reader.execute("SELECT actor, detail FROM audit_event WHERE action = 'dicomweb.search'").fetchall()
    reader.close()
    assert [actor for actor, _ in searches] == ["dr"] * 5
    assert all(json.loads(detail)["matches"] == 1 for _, detail in searches)


def test_wado_rs_frames_and_rendered(web):
    """retrieve_instance_frames gives the native pixel bytes; a frame the image lacks is 404;
    /rendered answers PNG/JPEG at the image's size and the window parameter changes the pixels."""
    from PIL import Image

    client = web["client"]
    first = web["datasets"][0]
    uids = (web["study_a"], web["series_a"], first.SOPInstanceUID)
    assert client.retrieve_instance_frames(*uids, frame_numbers=[1]) == [first.PixelData]
    auth = {"Authorization": f"Bearer {web['token']}"}
    base = f"{web['url']}/studies/{uids[0]}/series/{uids[1]}/instances/{uids[2]}"
    assert requests.get(f"{base}/frames/2", headers=auth).status_code == 404  # a one-frame image
    assert requests.get(f"{base}/frames/0,x", headers=auth).status_code == 400
    png = client.retrieve_instance_rendered(*uids, media_types=("image/png",))
    image = Image.open(BytesIO(png))
    assert image.format == "PNG" and image.size == (16, 16)
    narrow = client.retrieve_instance_rendered(*uids, media_types=("image/png",), params={"window": "100,50"})
    assert Image.open(BytesIO(narrow)).tobytes() != image.tobytes()
    jpeg = requests.get(f"{base}/rendered", headers={**auth, "Accept": "image/jpeg"})
    assert jpeg.headers["Content-Type"] == "image/jpeg" and Image.open(BytesIO(jpeg.content)).format == "JPEG"
    assert requests.get(f"{base}/rendered?window=abc", headers=auth).status_code == 400


def test_qido_says_which_keys_it_ignored(web):
    """A match key the index does not hold (BitsAllocated) is not silently applied: a Warning header names it."""
    response = requests.get(f"{web['url']}/instances?BitsAllocated=8",
                            headers={"Authorization": f"Bearer {web['token']}"})
    assert response.status_code == 200 and len(response.json()) == 3
    assert "BitsAllocated" in response.headers["Warning"]


def _c_find_studies(instance, **keys):
    """C-FIND (pynetdicom) at the STUDY level against the archive's DICOM server on the same instance."""
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    from tests.helpers import qr_identifier

    with archive_server(instance, DICOM_QR_FROM_UNKNOWN_AES=True) as (_archive, running):
        ae = AE(ae_title="VIEWER")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", running.port, ae_title="ARCHIVAGE")
        assert assoc.is_established
        responses = list(assoc.send_c_find(qr_identifier("STUDY", StudyInstanceUID="", **keys),
                                           StudyRootQueryRetrieveInformationModelFind))
        assoc.release()
    assert responses[-1][0].Status == 0x0000
    answers = [ident for status, ident in responses[:-1]]
    return sorted(str(a.StudyInstanceUID) for a in answers)


def _count_instances(web):
    return len(web["client"].search_for_instances())


def test_stow_rs_stores_through_the_c_store_path(web):
    """store_instances: a new study is stored, answered in ReferencedSOPSequence, and C-FIND finds it;
    a second object naming an existing study under another patient is refused with its FailureReason
    (the C-STORE identity rule), and the response is 202."""
    client = web["client"]
    new_study = generate_uid()
    fresh = [make_ct(patient_id="PAT777", patient_name="Nouveau^Patient", study_uid=new_study, study_date="20240301")]
    answer = client.store_instances(fresh)
    assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == [fresh[0].SOPInstanceUID]
    assert "FailedSOPSequence" not in answer
    assert _c_find_studies(web["instance"], PatientID="PAT777") == [new_study]
    stored = client.retrieve_instance(new_study, fresh[0].SeriesInstanceUID, fresh[0].SOPInstanceUID)
    assert stored.PixelData == fresh[0].PixelData

    intruder = make_ct(patient_id="PAT999", study_uid=web["study_a"])  # study A belongs to PAT001
    another = make_ct(patient_id="PAT778", study_uid=generate_uid())
    body, content_type = _multipart([intruder, another])
    response = requests.post(f"{web['url']}/studies", data=body, headers={
        "Authorization": f"Bearer {web['token']}", "Content-Type": content_type})
    assert response.status_code == 202
    failed = response.json()["00081198"]["Value"]
    assert [f["00081155"]["Value"][0] for f in failed] == [intruder.SOPInstanceUID]
    assert failed[0]["00081197"]["Value"][0] != 0
    assert "another Patient ID" in response.headers["Warning"]
    assert _c_find_studies(web["instance"], PatientID="PAT999") == []
    refusals = [detail for action, detail in _audit(web) if action == "dicom.store.refused"]
    assert [(d["via"], d["sop_instance_uid"]) for d in refusals] == [("STOW-RS", intruder.SOPInstanceUID)]


def _audit(web):
    """(action, detail) of every audit event, oldest first."""
    from sqlalchemy import select

    from archive_core.audit import AuditEvent
    from archive_core.config import Settings
    from archive_core.db import make_engine, session_factory

    engine = make_engine(Settings(instance_path=web["instance"]).database_url)
    with session_factory(engine)() as s:
        events = s.execute(select(AuditEvent.action, AuditEvent.detail).order_by(AuditEvent.id)).all()
    engine.dispose()
    return [(e.action, json.loads(e.detail or "{}")) for e in events]


def _multipart(datasets, boundary="b0undary"):
    parts = []
    for ds in datasets:
        out = BytesIO()
        ds.save_as(out, enforce_file_format=True)
        parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + out.getvalue() + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def test_stow_rs_bad_requests_store_nothing(web):
    """Bad input: a body cut before its closing boundary (400), JSON instead of multipart (415), a body over
    DICOMWEB_MAX_STOW_BYTES (413), a part that is no DICOM file (409, FailedSOPSequence), an object of another
    study than the URL's (409), the large body again sent chunked (413): the archive holds the same
    instances afterwards."""
    auth = {"Authorization": f"Bearer {web['token']}"}
    before = _count_instances(web)
    body, content_type = _multipart([make_ct(patient_id="PAT555")])
    cut = body[: -len(b"--b0undary--\r\n")]
    response = requests.post(f"{web['url']}/studies", data=cut, headers={**auth, "Content-Type": content_type})
    assert response.status_code == 400 and "boundary" in response.json()["error"]["message"]
    response = requests.post(f"{web['url']}/studies", json={"a": 1}, headers=auth)
    assert response.status_code == 415
    big, big_type = _multipart([make_ct(patient_id="PAT556", rows=512)])
    assert len(big) > STOW_LIMIT
    response = requests.post(f"{web['url']}/studies", data=big, headers={**auth, "Content-Type": big_type})
    assert response.status_code == 413
    junk = b"--x\r\nContent-Type: application/dicom\r\n\r\nnot dicom at all\r\n--x--\r\n"
    response = requests.post(f"{web['url']}/studies", data=junk,
                             headers={**auth,
                                      "Content-Type": 'multipart/related; type="application/dicom"; boundary=x'})
    assert response.status_code == 409 and response.json()["00081198"]["Value"][0]["00081197"]["Value"][0] == 0xC000
    response = requests.post(f"{web['url']}/studies/{web['study_b']}", data=body,
                             headers={**auth, "Content-Type": content_type})
    assert response.status_code == 409
    chunked = requests.post(f"{web['url']}/studies", data=iter([big]), headers={**auth, "Content-Type": big_type})
    assert chunked.status_code == 413  # sent chunked, without a Content-Length: the limit holds all the same
    assert _count_instances(web) == before
    assert _c_find_studies(web["instance"], PatientID="PAT55*") == []


def test_wado_uri_for_older_viewers(web):
    """GET /wado: the stored file byte for byte (contentType=application/dicom), a JPEG by default;
    bad input: a missing objectUID (400), another requestType (400), an unknown object (404), no token (401)."""
    first = web["datasets"][0]
    auth = {"Authorization": f"Bearer {web['token']}"}
    wado = web["url"].replace("/dicom-web", "/wado")
    uids = {"requestType": "WADO", "studyUID": web["study_a"], "seriesUID": web["series_a"],
            "objectUID": first.SOPInstanceUID}
    response = requests.get(wado, params={**uids, "contentType": "application/dicom"}, headers=auth)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/dicom"
    assert response.content == web["stored"][first.SOPInstanceUID]
    jpeg = requests.get(wado, params=uids, headers=auth)
    assert jpeg.headers["Content-Type"] == "image/jpeg" and jpeg.content[:2] == b"\xff\xd8"
    assert requests.get(wado, params={**uids, "objectUID": ""}, headers=auth).status_code == 400
    assert requests.get(wado, params={**uids, "requestType": "OTHER"}, headers=auth).status_code == 400
    assert requests.get(wado, params={**uids, "objectUID": "1.2.3.4"}, headers=auth).status_code == 404
    assert requests.get(wado, params=uids).status_code == 401


def test_wado_uri_serves_byte_ranges_of_the_stored_file(web):
    """A viewer or a resumed download asks for part of the file: ``Range: bytes=0-131`` is the preamble
    and "DICM" (206, Content-Range), a suffix range is the file's end; bad input: a range past the end
    and a reversed range are 416 with ``Content-Range: bytes */<length>``, and a malformed Range header
    is ignored (the whole file, 200) as RFC 9110 says."""
    first = web["datasets"][0]
    stored = web["stored"][first.SOPInstanceUID]
    wado = web["url"].replace("/dicom-web", "/wado")
    params = {"requestType": "WADO", "studyUID": web["study_a"], "seriesUID": web["series_a"],
              "objectUID": first.SOPInstanceUID, "contentType": "application/dicom"}

    def get(range_header=None):
        headers = {"Authorization": f"Bearer {web['token']}"}
        if range_header:
            headers["Range"] = range_header
        return requests.get(wado, params=params, headers=headers)

    whole = get()
    assert whole.status_code == 200 and whole.headers["Accept-Ranges"] == "bytes"
    assert int(whole.headers["Content-Length"]) == len(stored) and whole.content == stored
    head = get("bytes=0-131")
    assert head.status_code == 206 and head.content == stored[:132] and head.content.endswith(b"DICM")
    assert head.headers["Content-Range"] == f"bytes 0-131/{len(stored)}"
    tail = get("bytes=-100")
    assert tail.status_code == 206 and tail.content == stored[-100:]
    middle = get(f"bytes=1000-{len(stored) - 1}")
    assert middle.status_code == 206 and middle.content == stored[1000:]
    for bad in (f"bytes={len(stored) + 10}-", "bytes=500-100"):
        refused = get(bad)
        assert refused.status_code == 416, bad
        assert refused.headers["Content-Range"] == f"bytes */{len(stored)}"
    assert get("lines=1-2").content == stored

def test_compressed_objects_frames_and_conversion(web):
    """An RLE Lossless CT stored by C-STORE: WADO-RS gives it back in RLE, unchanged; frames asked as
    explicit VR little endian octet-streams are decoded to the original pixels; with transfer-syntax=*
    they are the stored RLE frame; asked in implicit VR, the instance is decompressed keeping its UIDs."""
    from pydicom.encaps import generate_frames
    from pydicom.uid import RLELossless

    from archive_core.tiers import read_instance

    ds = make_ct(patient_id="PAT300", study_uid=generate_uid())
    native = ds.PixelData
    ds.compress(RLELossless)
    with archive_server(web["instance"]) as (archive, running):
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, RLELossless)
        assoc = ae.associate("127.0.0.1", running.port, ae_title="ARCHIVAGE")
        assert assoc.is_established and assoc.send_c_store(ds).Status == 0
        assoc.release()
        assert archive.ingestor.wait_indexed()
        stored = read_instance(archive, ds.SOPInstanceUID)
    auth = {"Authorization": f"Bearer {web['token']}"}
    base = f"{web['url']}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"

    def parts(response):
        boundary = response.headers["Content-Type"].split("boundary=")[1]
        return [p.split(b"\r\n\r\n", 1) for p in response.content.split(f"--{boundary}".encode())[1:-1]]

    whole = requests.get(base, headers=auth)
    # Sent from the stored file with its exact length (tests/integration/test_wado_multipart.py: memory).
    assert int(whole.headers["Content-Length"]) == len(whole.content)
    [(head, body)] = parts(whole)
    assert b"transfer-syntax=" + RLELossless.encode() in head and body[:-2] == stored
    octet = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
    [(head, body)] = parts(requests.get(f"{base}/frames/1", headers={**auth, "Accept": octet}))
    assert body[:-2] == native
    anything = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    [(head, body)] = parts(requests.get(f"{base}/frames/1", headers={**auth, "Accept": anything}))
    assert body[:-2] == next(generate_frames(ds.PixelData, number_of_frames=1))
    implicit = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2'
    [(head, body)] = parts(requests.get(base, headers={**auth, "Accept": implicit}))
    converted = dcmread(BytesIO(body[:-2]))
    assert converted.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert converted.SOPInstanceUID == ds.SOPInstanceUID and converted.PixelData == native


def test_orthanc_dicomweb_plugin_queries_and_retrieves_from_us(web, tmp_path):
    """Orthanc's DICOMweb plugin (Debian orthanc-dicomweb) with us as a remote DICOMweb server: its QIDO
    finds our studies by patient, and its retrieve pulls a study over WADO-RS into Orthanc, byte-identical
    in pixel data and UIDs."""
    from tests.helpers import require_tool
    from tests.servers import OrthancProcess

    plugin = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
    if not os.path.exists(plugin):
        require_tool("orthanc-dicomweb-plugin")  # fails in CI, skips elsewhere (as every missing tool)
    orthanc = OrthancProcess(tmp_path / "orthanc", Plugins=[plugin], DicomWeb={
        "Enable": True, "Servers": {"archivage": {"Url": web["url"] + "/",
                                                  "HttpHeaders": {"Authorization": f"Bearer {web['token']}"}}}})
    try:
        found = orthanc.rest("POST", "/dicom-web/servers/archivage/qido",
                             {"Uri": "/studies", "Arguments": {"PatientID": "PAT001"}})
        # Orthanc hands the answer back in its own JSON form: {"0020000D": {"Name", "Type", "Value": "..."}}.
        assert [s["0020000D"]["Value"] for s in found] == [web["study_a"]]
        orthanc.rest("POST", "/dicom-web/servers/archivage/retrieve",
                     {"Resources": [{"Study": web["study_a"]}]})
        instances = orthanc.rest("GET", "/instances?expand")
        uids = sorted(i["MainDicomTags"]["SOPInstanceUID"] for i in instances)
        assert uids == sorted(d.SOPInstanceUID for d in web["datasets"][:2])
        first = web["datasets"][0]
        orthanc_id = next(i["ID"] for i in instances if i["MainDicomTags"]["SOPInstanceUID"] == first.SOPInstanceUID)
        copy = dcmread(BytesIO(orthanc.rest("GET", f"/instances/{orthanc_id}/file", raw=True)))
        assert copy.PixelData == first.PixelData and copy.StudyInstanceUID == web["study_a"]
    finally:
        orthanc.stop()


def test_share_link_cors_and_thumbnail_through_the_web_process(web):
    """A doctor's browser (a requests session) unlocks a share link with its code, then reads study A
    over DICOMweb and nothing of study B; a viewer origin set by environment gets CORS, another none."""
    import re

    token, code = web["share"]
    base = web["url"].removesuffix("/dicom-web")
    browser = requests.Session()
    assert browser.get(f"{web['url']}/studies").status_code == 401  # the link's token is not enough
    page = browser.get(f"{base}/share/{token}").text
    csrf_token = re.search(r'name="csrf_token"[^>]*?value="([^"]+)"', page).group(1)
    browser.post(f"{base}/share/{token}", data={"csrf_token": csrf_token, "code": code})
    studies = browser.get(f"{web['url']}/studies").json()
    assert [a["0020000D"]["Value"][0] for a in studies] == [web["study_a"]]
    assert browser.get(f"{web['url']}/studies/{web['study_b']}/metadata").status_code == 404
    thumbnail = browser.get(f"{web['url']}/studies/{web['study_a']}/thumbnail")
    assert thumbnail.status_code == 200 and thumbnail.headers["Content-Type"] == "image/jpeg"
    viewer = {"Origin": "https://viewer.example.fr", "Access-Control-Request-Method": "GET"}
    preflight = requests.options(f"{web['url']}/studies", headers=viewer)
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://viewer.example.fr"
    other = requests.options(f"{web['url']}/studies", headers={**viewer, "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
