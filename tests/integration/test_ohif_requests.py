"""The requests OHIF v3's DICOMweb data source makes (extensions/default/src/DicomWebDataSource), replayed
against a real ``flask web`` process, from another origin with a bearer token as docs/radiology.md
configures it. OHIF itself is not vendored: these are its requests, byte for byte where it matters
(query parameters as its ``mapParams`` builds them, its Accept headers, its CORS preflight).
"""

from __future__ import annotations

import re

import requests

from tests.integration.test_dicomweb import web  # noqa: F401  (the archive + web process fixture)

OHIF_ORIGIN = "https://viewer.example.fr"  # in the fixture's DICOMWEB_CORS_ORIGINS
# mapParams: Study Description, Modality, Referring Physician's Name, Patient's Birth Date
STUDY_LIST_FIELDS = "00081030,00080060,00080090,00100030"
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def _string(item, tag):
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def _parts(response) -> list[bytes]:
    boundary = re.search(r'boundary="?([^";]+)"?', response.headers["Content-Type"]).group(1).encode()
    parts = []
    for chunk in response.content.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.partition(b"\r\n\r\n")
        parts.append(body[:-2] if body.endswith(b"\r\n") else body)
    return parts


def test_ohif_study_list_series_metadata_and_frames(web):  # noqa: F811
    """Bad implementations this catches: a study list that refuses OHIF's includefield/fuzzymatching or its
    StudyDate range, a preflight without Authorization allowed, metadata without the image attributes
    or BulkDataURIs OHIF follows, frames that are not the stored pixel bytes."""
    headers = {"Authorization": f"Bearer {web['token']}", "Origin": OHIF_ORIGIN}
    url = web["url"]

    # The browser's preflight before a request carrying Authorization.
    preflight = requests.options(f"{url}/studies", headers={
        "Origin": OHIF_ORIGIN, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code in (200, 204)
    assert preflight.headers["Access-Control-Allow-Origin"] == OHIF_ORIGIN
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()

    # Study list: "dup" typed in the patient name filter, a date range, OHIF's defaults.
    studies = requests.get(f"{url}/studies", headers={**headers, "Accept": "application/dicom+json"}, params={
        "PatientName": "*dup*", "StudyDate": "19700102-20240131", "limit": 101, "offset": 0,
        "fuzzymatching": "false", "includefield": STUDY_LIST_FIELDS})
    assert studies.status_code == 200, studies.text
    assert studies.headers["Access-Control-Allow-Origin"] == OHIF_ORIGIN
    assert "Modality" in studies.headers["Warning"]  # a series attribute: left out of a study answer, and said
    [study] = studies.json()
    assert _string(study, "0020000D") == web["study_a"]
    assert _string(study, "00080020") == "20240115"
    assert _string(study, "00100010") == {"Alphabetic": "Dupont^Jean"}
    assert _string(study, "00100020") == "PAT001"
    assert _string(study, "00100030") == "19700101"  # asked for by includefield
    assert int(_string(study, "00201208")) == 2
    modalities = study.get("00080061", study.get("00080060", {})).get("Value")  # OHIF's getModalities
    assert modalities == ["CT"]
    # The MR study of another patient is not in that list; an empty name filter lists both (OHIF's first page).
    everyone = requests.get(f"{url}/studies", headers=headers, params={
        "limit": 101, "offset": 0, "fuzzymatching": "false", "includefield": STUDY_LIST_FIELDS}).json()
    assert {_string(s, "0020000D") for s in everyone} == {web["study_a"], web["study_b"]}

    # Opening the study: its series (seriesInStudy), then each series' metadata (lazy load).
    series = requests.get(f"{url}/studies/{web['study_a']}/series", headers=headers,
                          params={"includefield": "0008103E,00080021"})
    assert series.status_code == 200
    [one] = series.json()
    assert _string(one, "0020000E") == web["series_a"] and _string(one, "00080060") == "CT"
    assert int(_string(one, "00201209")) == 2
    metadata = requests.get(f"{url}/studies/{web['study_a']}/series/{web['series_a']}/metadata",
                            headers={**headers, "Accept": "application/dicom+json"})
    assert metadata.status_code == 200
    instances = metadata.json()
    assert len(instances) == 2
    for item in instances:
        for tag in ("00080016", "00080018", "00280010", "00280011", "00280100", "00280004", "00200013"):
            assert tag in item, tag
        # Pixel data by reference on our public URL, never inline.
        assert item["7FE00010"]["BulkDataURI"].startswith(url + "/studies/")

    # Frames, as Cornerstone's WADO-RS loader in OHIF asks for them: the stored pixel bytes.
    by_uid = {ds.SOPInstanceUID: ds for ds in web["datasets"]}
    for item in instances:
        sop = _string(item, "00080018")
        frames = requests.get(f"{url}/studies/{web['study_a']}/series/{web['series_a']}/instances/{sop}/frames/1",
                              headers={**headers, "Accept": FRAME_ACCEPT})
        assert frames.status_code == 200
        assert frames.headers["Access-Control-Allow-Origin"] == OHIF_ORIGIN
        assert _parts(frames) == [by_uid[sop].PixelData]
