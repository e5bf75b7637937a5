"""What goes out is what is stored: send jobs from the web process, C-GET, C-MOVE, Orthanc, DCMTK receivers.

Objects come from pydicom's test files, one per stored transfer syntax (explicit and implicit VR
little endian, explicit big endian, JPEG baseline (lossy), JPEG lossless made by dcmcjpeg, JPEG
2000 lossy and lossless, RLE). Each received dataset is compared byte for byte with the stored one
when the receiver accepted the stored syntax, else by decoded pixels and every UID.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
import warnings
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from tests.helpers import free_port, require_tool, tool_env
from tests.servers import archive_env, flask_cli
from tests.servers import web_process as started_web

SOURCES = {  # pydicom test file -> what it stands for
    "CT_small.dcm": "explicit VR little endian",
    "MR_small_implicit.dcm": "implicit VR little endian",
    "MR_small_bigendian.dcm": "explicit VR big endian",
    "SC_rgb_jpeg_dcmtk.dcm": "JPEG baseline (lossy)",
    "JPEG2000.dcm": "JPEG 2000 (lossy)",
    "MR_small_jp2klossless.dcm": "JPEG 2000 lossless",
    "MR_small_RLE.dcm": "RLE lossless",
}
LOSSY = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.91"}
UID_KEYWORDS = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")


def _read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(path)


def dataset_bytes(path: Path) -> bytes:
    from archive_core.part10 import dataset_offset

    data = Path(path).read_bytes()
    return data[dataset_offset(data):]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """One file per stored syntax, in one study of patient OUT-1, each with UIDs of its own."""
    folder = tmp_path_factory.mktemp("corpus")
    study_uid = generate_uid()
    sources = {name: Path(get_testdata_file(name)) for name in SOURCES}
    dcmcjpeg = require_tool("dcmcjpeg")
    lossless = folder / "jpeg_lossless_source.dcm"
    subprocess.run([dcmcjpeg, "+e1", str(sources["CT_small.dcm"]), str(lossless)], check=True, env=tool_env())
    sources["dcmcjpeg +e1 (JPEG lossless)"] = lossless
    files = []
    for n, (name, source) in enumerate(sources.items()):
        ds = _read(source)
        ds.PatientID, ds.PatientName, ds.StudyInstanceUID = "OUT-1", "Sortie^Test", study_uid
        ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out = folder / f"{n:02d}.dcm"
        ds.save_as(out)  # in the file's own transfer syntax (pixel data untouched)
        files.append(out)
    syntaxes = {str(_read(f).file_meta.TransferSyntaxUID) for f in files}
    assert {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.70"} <= syntaxes
    return {"study_uid": study_uid, "files": files}


def stored_paths(facade_or_archive, study_uid):
    """SOP Instance UID -> (stored file, stored transfer syntax), from the archive's own index."""
    from archive_core.index.query import STUDY_ROOT, Query, instances_to_retrieve

    archive = getattr(facade_or_archive, "archive", facade_or_archive)
    with archive.sessions() as s:
        rows = instances_to_retrieve(s, Query(root=STUDY_ROOT, level="STUDY", conditions={"StudyInstanceUID": [study_uid]}))
    return {r.sop_instance_uid: (archive.store_for(r.tier).path_of(r.storage_key), r.transfer_syntax_uid) for r in rows}


def pixels(path_or_ds):
    ds = path_or_ds if not isinstance(path_or_ds, (str, Path)) else _read(path_or_ds)
    return ds.pixel_array


def assert_same_object(received: Path, stored: Path, stored_ts: str) -> str:
    """Byte-identical when received in the stored syntax; else same UIDs, same pixels, lossy history kept.

    Returns "as stored" or "converted" for the caller's tallies.
    """
    got, original = _read(received), _read(stored)
    for keyword in UID_KEYWORDS:
        assert got.get(keyword) == original.get(keyword), keyword
    if str(got.file_meta.TransferSyntaxUID) == stored_ts:
        assert dataset_bytes(received) == dataset_bytes(stored)
        return "as stored"
    assert str(got.file_meta.TransferSyntaxUID) in {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
    if "PixelData" in original:
        if original.get("PhotometricInterpretation", "").startswith("YBR") and stored_ts in LOSSY:
            # decoded to RGB on both sides (pydicom converts YBR to RGB when it decompresses)
            assert np.abs(pixels(got).astype(int) - pixels(original).astype(int)).max() <= 2
        else:
            assert np.array_equal(pixels(got), pixels(original))
    if stored_ts in LOSSY:
        assert got.LossyImageCompression == "01"
        assert got.get("LossyImageCompressionMethod") and got.get("LossyImageCompressionRatio")
        for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if keyword in original:  # what the stored object said is kept
                assert got[keyword].value == original[keyword].value
    return "converted"


def storescp(tmp_path, ae_title, *options):
    """DCMTK storescp with *options* (transfer syntax restrictions), bit-preserving, into a folder."""
    out = tmp_path / f"received-{ae_title}"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen([require_tool("storescp"), "--aetitle", ae_title, "+B", *options, "-od", str(out), str(port)],
                            env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_port(port)
    return proc, port, out


def _wait_port(port, timeout=20):
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


def _by_uid(folder: Path) -> dict[str, Path]:
    return {str(_read(p).SOPInstanceUID): p for p in folder.iterdir() if p.is_file()}


# -- a send job started from the web app's own process ----------------------------------------------


def _http(method, url, token, body=None):
    request = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


@pytest.fixture
def web_process(tmp_path, corpus):
    """``flask --app wsgi web`` as a child process (no DICOM server in it), with the corpus imported."""
    instance = tmp_path / "instance-web"
    instance.mkdir()
    assert flask_cli(instance, "db", "upgrade").returncode == 0
    done = flask_cli(instance, "archive", "import", str(corpus["files"][0].parent))
    assert done.returncode == 0, done.stderr
    done = flask_cli(instance, "users", "create", "dr", "--role", "radiologist", "--password-stdin",
                     input="correct horse battery staple\n")
    assert done.returncode == 0, done.stderr
    token = flask_cli(instance, "tokens", "create", "dr").stdout.strip().splitlines()[-1]
    with started_web({**os.environ, **archive_env(instance)}, tmp_path / "web.log") as url:
        yield {"instance": instance, "url": url, "token": token}


def _web_send(web, ae_title, host_port, study_uid, timeout=60):
    done = flask_cli(web["instance"], "peers", "add", ae_title, "127.0.0.1", str(host_port))
    assert done.returncode == 0, done.stderr
    status, job = _http("POST", f"{web['url']}/api/v1/studies/{study_uid}/send", web["token"], {"peer": ae_title})
    assert status == 202 and job["status"] in {"queued", "running"}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _status, job = _http("GET", f"{web['url']}/api/v1/send-jobs/{job['id']}", web["token"])
        if job["status"] in {"done", "failed"}:
            return job
        time.sleep(0.2)
    raise TimeoutError(job)


def test_send_job_from_the_web_process_delivers_the_stored_bytes(tmp_path, corpus, web_process):
    """Bad case tried: the web process sending through the code the DICOM server patches (the
    reported 476-byte objects holding two UIDs). storescp accepts every syntax: each object must
    arrive in its stored syntax with its dataset byte for byte as stored, and the job be done."""
    from archive_core.archive import Archive
    from archive_core.config import Settings

    proc, port, out = storescp(tmp_path, "WS1", "+xa")
    try:
        job = _web_send(web_process, "WS1", port, corpus["study_uid"])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    archive = Archive.open(Settings(instance_path=web_process["instance"], STORAGE_MIN_FREE_BYTES=0))
    try:
        stored = stored_paths(archive, corpus["study_uid"])
    finally:
        archive.close()
    assert job == {"id": job["id"], "peer": "WS1", "status": "done", "total": len(stored), "sent": len(stored),
                   "failed": 0, "message": "", "failures": []}
    received = _by_uid(out)
    assert set(received) == set(stored)
    for uid, (path, ts) in stored.items():
        assert assert_same_object(received[uid], path, ts) == "as stored", ts


def test_send_job_to_a_peer_that_is_down_fails_with_each_instance_listed(tmp_path, corpus, web_process):
    """Bad case tried: a workstation switched off. The job is failed, nothing counts as sent, and
    every instance is listed with no status (nothing answered) and the reason."""
    job = _web_send(web_process, "DOWN", free_port(), corpus["study_uid"])
    assert (job["status"], job["sent"], job["failed"]) == ("failed", 0, len(corpus["files"]))
    assert "unreachable" in job["message"]
    assert {f["status"] for f in job["failures"]} == {None}
    assert len({f["sop_instance_uid"] for f in job["failures"]}) == len(corpus["files"])


# -- receivers that accept only some syntaxes: conversions keep every UID -----------------------------


@pytest.fixture
def corpus_archive(facade, corpus):
    from tests.radiology_support import store

    store(facade.archive, [_read(f) for f in corpus["files"]])
    return stored_paths(facade, corpus["study_uid"])


@pytest.mark.parametrize("options, expected_syntax", [
    (["+xi"], "1.2.840.10008.1.2"),      # implicit VR little endian only
    (["+xe"], None),                      # prefers explicit little endian; also accepts the others uncompressed
])
def test_uncompressed_only_receiver_gets_every_object_with_its_uids(tmp_path, facade, corpus, corpus_archive,
                                                                     options, expected_syntax):
    """Bad cases tried: decompression making new SOP Instance UIDs (pydicom's default), a lossy
    object losing its lossy history, a big endian object refused (0xB000). The receiver accepts no
    compressed syntax: every object arrives, with every UID and the same pixels."""
    from archive_core.peers import add_peer
    from backoffice.radiology.sending import create_send_job, run_send_job

    proc, port, out = storescp(tmp_path, "PLAIN", *options)
    try:
        with facade.new_session(write=True) as s:
            add_peer(s, "PLAIN", "127.0.0.1", port)
            job_id = create_send_job(s, "PLAIN", [corpus["study_uid"]], requested_by="dr").id
            s.commit()
        job = run_send_job(facade, job_id)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert (job.status, job.sent, job.failed) == ("done", len(corpus_archive), 0)
    received = _by_uid(out)
    assert set(received) == set(corpus_archive)
    kinds = {assert_same_object(received[uid], path, ts) for uid, (path, ts) in corpus_archive.items()}
    assert "converted" in kinds
    if expected_syntax:
        assert {str(_read(p).file_meta.TransferSyntaxUID) for p in received.values()} == {expected_syntax}


# -- C-GET and C-MOVE from DCMTK, several syntaxes in one context ------------------------------------


@pytest.fixture
def qr_archive(tmp_path, corpus):
    """An in-process archive SCP holding the corpus, with GETSCU and MOVESCU registered."""
    from archive_core.peers import add_peer
    from tests.helpers import archive_server
    from tests.radiology_support import store

    (tmp_path / "instance-qr").mkdir()
    with archive_server(tmp_path / "instance-qr", DICOM_QR_FROM_UNKNOWN_AES=True) as (archive, running):
        store(archive, [_read(f) for f in corpus["files"]])
        yield archive, running, stored_paths(archive, corpus["study_uid"]), add_peer


def test_getscu_proposing_several_syntaxes_gets_explicit_objects_unchanged(tmp_path, corpus, qr_archive):
    """Bad case tried: the archive accepting Implicit VR in every multi-syntax context (explicit
    objects converted, big endian failing 0xB000). getscu proposes explicit LE, explicit BE and
    implicit in one context per storage class: explicit LE objects come back byte for byte, the
    others converted with their UIDs and pixels; every object arrives."""
    archive, running, stored, _add = qr_archive
    out = tmp_path / "got"
    out.mkdir()
    done = subprocess.run([require_tool("getscu"), "-S", "-aet", "GETSCU", "-aec", "ARCHIVAGE", "+B", "-od", str(out),
                           "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={corpus['study_uid']}",
                           "127.0.0.1", str(running.port)], env=tool_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    received = _by_uid(out)
    assert set(received) == set(stored)
    kinds = {}
    for uid, (path, ts) in stored.items():
        kinds[ts] = assert_same_object(received[uid], path, ts)
    assert kinds["1.2.840.10008.1.2.1"] == "as stored"
    assert str(_read(received[next(u for u, (_p, t) in stored.items() if t == "1.2.840.10008.1.2")])
               .file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.1"  # explicit chosen, not implicit


def test_movescu_to_storescp_sends_each_object_in_its_stored_syntax(tmp_path, corpus, qr_archive):
    """Bad case tried: C-MOVE sub-operations encoded through a process-wide patch (empty objects
    elsewhere). The sub-association proposes each stored syntax: a receiver accepting them all gets
    every object byte for byte."""
    archive, running, stored, add_peer = qr_archive
    proc, port, out = storescp(tmp_path, "DEST", "+xa")
    try:
        with archive.sessions() as s:
            add_peer(s, "DEST", "127.0.0.1", port)
            s.commit()
        done = subprocess.run([require_tool("movescu"), "-S", "-aet", "MOVESCU", "-aec", "ARCHIVAGE", "-aem", "DEST",
                               "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={corpus['study_uid']}",
                               "127.0.0.1", str(running.port)], env=tool_env(), capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    received = _by_uid(out)
    assert set(received) == set(stored)
    for uid, (path, ts) in stored.items():
        assert assert_same_object(received[uid], path, ts) == "as stored", ts


def test_c_get_with_a_context_per_syntax_returns_compressed_objects_as_stored(tmp_path, corpus, qr_archive):
    """Bad case tried: compressed objects decompressed on C-GET though the requestor accepts their
    syntax. A pynetdicom requestor proposes, per storage class, the corpus's stored syntaxes each in
    a context of its own plus one uncompressed context: every object comes back as stored."""
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet
    from pydicom.dataset import Dataset

    archive, running, stored, _add = qr_archive
    received = {}

    def on_store(event):
        received[str(event.request.AffectedSOPInstanceUID)] = (str(event.context.transfer_syntax),
                                                               event.request.DataSet.getvalue())
        return 0x0000

    pairs = {(str(_read(f).SOPClassUID), str(_read(f).file_meta.TransferSyntaxUID)) for f in corpus["files"]}
    ae = AE(ae_title="GETTER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for sop_class in sorted({c for c, _ts in pairs}):
        for ts in sorted(ts for c, ts in pairs if c == sop_class):
            ae.add_requested_context(sop_class, ts)
        ae.add_requested_context(sop_class, ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])
        roles.append(build_role(sop_class, scp_role=True))
    assoc = ae.associate("127.0.0.1", running.port, ae_title="ARCHIVAGE", ext_neg=roles,
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel, identifier.StudyInstanceUID = "STUDY", corpus["study_uid"]
    try:
        statuses = [status.Status for status, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
                    if status]
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000
    assert set(received) == set(stored)
    for uid, (path, ts) in stored.items():
        assert received[uid] == (ts, dataset_bytes(path)), ts


def test_storage_scp_never_picks_implicit_when_explicit_is_proposed(tmp_path, qr_archive):
    """Bad case tried: one context proposing implicit first then explicit (pynetdicom's default
    order) was accepted as Implicit VR. The archive accepts explicit VR and stores the object so."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    from tests.helpers import make_ct

    archive, running, _stored, _add = qr_archive
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"])
    assoc = ae.associate("127.0.0.1", running.port, ae_title="ARCHIVAGE")
    assert assoc.is_established
    try:
        assert [str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts] == ["1.2.840.10008.1.2.1"]
        ds = make_ct(patient_id="PAT-EXPLICIT")
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    from archive_core.index.models import Instance

    with archive.sessions() as s:
        assert s.query(Instance.transfer_syntax_uid).filter_by(sop_instance_uid=ds.SOPInstanceUID).scalar() \
            == "1.2.840.10008.1.2.1"


# -- Orthanc, both ways ---------------------------------------------------------------------------


@pytest.fixture
def orthanc_and_archive(tmp_path):
    """Our SCP (in this process) and Orthanc, each registered with the other."""
    from archive_core.peers import add_peer
    from tests.helpers import archive_server
    from tests.servers import OrthancProcess

    (tmp_path / "instance-o").mkdir()
    with archive_server(tmp_path / "instance-o") as (archive, running):
        orthanc = OrthancProcess(tmp_path / "orthanc", modalities={"ARCHIVAGE": ("127.0.0.1", running.port)})
        try:
            with archive.sessions() as s:
                add_peer(s, "ORTHANC", "127.0.0.1", orthanc.dicom_port)
                s.commit()
            yield archive, running, orthanc
        finally:
            orthanc.stop()


def _orthanc_files(orthanc) -> dict[str, bytes]:
    """SOP Instance UID -> the file Orthanc stored."""
    files = {}
    for instance_id in orthanc.rest("GET", "/instances"):
        tags = orthanc.rest("GET", f"/instances/{instance_id}/simplified-tags")
        files[tags["SOPInstanceUID"]] = orthanc.rest("GET", f"/instances/{instance_id}/file", raw=True)
    return files


def test_round_trip_through_orthanc_keeps_every_object(tmp_path, corpus, orthanc_and_archive):
    """Bad cases tried: objects changed on the way in (implicit chosen) or out (empty, decompressed,
    new UIDs). Orthanc C-STOREs the corpus into us (we store each in the syntax Orthanc sent, every
    element equal to Orthanc's), forgets it, then C-MOVEs it back from us: each object arrives in
    its stored syntax and Orthanc then holds, byte for byte, the dataset we stored.

    Orthanc (DCMTK) re-encodes what it sends (explicit sequence lengths, no trailing padding, OB
    for encapsulated pixel data), so the way in is compared value by value, the way out byte for byte.
    """
    archive, running, orthanc = orthanc_and_archive
    originals = {}
    for path in corpus["files"]:
        answer = orthanc.rest("POST", "/instances", path.read_bytes())
        originals[str(_read(path).SOPInstanceUID)] = orthanc.rest("GET", f"/instances/{answer['ID']}/file", raw=True)
    ids = orthanc.rest("GET", "/instances")
    orthanc.rest("POST", "/modalities/ARCHIVAGE/store", {"Resources": ids, "Synchronous": True})
    stored = stored_paths(archive, corpus["study_uid"])
    assert set(stored) == set(originals)
    for uid, (path, ts) in stored.items():  # in: stored as Orthanc sent it
        original = _read(BytesIO(originals[uid]))
        assert ts == str(original.file_meta.TransferSyntaxUID)
        got = _read(path)
        assert same_values(got, original), ts
    for study in orthanc.rest("GET", "/studies"):
        orthanc.rest("DELETE", f"/studies/{study}")
    assert orthanc.rest("GET", "/instances") == []
    orthanc.rest("POST", "/modalities/ARCHIVAGE/move", {
        "Level": "Study", "Resources": [{"StudyInstanceUID": corpus["study_uid"]}], "TargetAet": "ORTHANC",
        "Synchronous": True})
    back = _orthanc_files(orthanc)
    assert set(back) == set(originals)
    for uid, data in back.items():  # out: C-MOVE sends each one as stored
        path, ts = stored[uid]
        assert str(_read(BytesIO(data)).file_meta.TransferSyntaxUID) == ts
        assert dataset_bytes_of(data) == dataset_bytes(path), ts


def same_values(a, b) -> bool:
    """Every element of *a* and *b* has the same value (not VR: DCMTK writes encapsulated pixel
    data as OB where a file had OW), Data Set Trailing Padding aside."""
    return [(e.tag, e.value) for e in a if e.tag != 0xFFFCFFFC] == [(e.tag, e.value) for e in b if e.tag != 0xFFFCFFFC]


def dataset_bytes_of(data: bytes) -> bytes:
    """The dataset of a file Orthanc stored, without Data Set Trailing Padding (FFFC,FFFC).

    The padding is for files only (PS3.10 7.2): DCMTK, inside Orthanc, leaves it out of what it sends.
    """
    import struct

    from archive_core.part10 import dataset_offset

    dataset = data[dataset_offset(data):]
    at = dataset.rfind(b"\xfc\xff\xfc\xff")
    if at >= 0:
        explicit = dataset[at + 4:at + 6] == b"OB"
        length = struct.unpack_from("<I", dataset, at + (8 if explicit else 4))[0]
        if at + (12 if explicit else 8) + length == len(dataset):
            return dataset[:at]
    return dataset


def test_send_job_and_retrieve_to_peer_deliver_to_orthanc_as_stored(tmp_path, corpus, orthanc_and_archive):
    """Bad case tried: the reported send to Orthanc where every object was refused ("required tags
    missing") and the job showed no reason. The send path of jobs and the facade's retrieve-to-peer
    both deliver every object to Orthanc in its stored syntax with every value (Orthanc re-encodes
    what it stores; the storescp tests compare bytes)."""
    from archive_core.api import ArchiveFacade
    from tests.radiology_support import store

    archive, running, orthanc = orthanc_and_archive
    store(archive, [_read(f) for f in corpus["files"]])
    stored = stored_paths(archive, corpus["study_uid"])
    result = ArchiveFacade(archive).send_studies("ORTHANC", [corpus["study_uid"]])
    assert (result.completed, result.failed, result.warning, result.failures) == (len(stored), 0, 0, [])
    for uid, data in _orthanc_files(orthanc).items():
        path, ts = stored[uid]
        got = _read(BytesIO(data))
        assert str(got.file_meta.TransferSyntaxUID) == ts and same_values(got, _read(path)), ts
    for study in orthanc.rest("GET", "/studies"):
        orthanc.rest("DELETE", f"/studies/{study}")
    retrieved = ArchiveFacade(archive).retrieve_to_peer([corpus["study_uid"]], "ORTHANC")
    assert (retrieved.completed, retrieved.failed) == (len(stored), 0)
    assert set(_orthanc_files(orthanc)) == set(stored)


def _run_job(facade, peer, port, study_uid):
    from archive_core.peers import add_peer
    from backoffice.radiology.models import SendJob
    from backoffice.radiology.sending import create_send_job, job_json, run_send_job

    with facade.new_session(write=True) as s:
        add_peer(s, peer, "127.0.0.1", port)
        job_id = create_send_job(s, peer, [study_uid], requested_by="dr").id
        s.commit()
    run_send_job(facade, job_id)
    with facade.new_session() as s:
        return job_json(s, s.get(SendJob, job_id))


def test_orthanc_refusing_us_fails_the_job_with_each_instance_listed(tmp_path, facade, corpus, corpus_archive):
    """Bad case tried: a receiver refusing everything while the job said done. This Orthanc takes
    stores from its own modalities only and we are not one (it aborts the association at the first
    C-STORE): the job is failed, sent 0, with the reason, and every instance listed with no status
    (nothing was answered)."""
    from tests.servers import OrthancProcess

    orthanc = OrthancProcess(tmp_path / "orthanc-refusing", DicomAlwaysAllowStore=False)
    try:
        body = _run_job(facade, "ORTHANC", orthanc.dicom_port, corpus["study_uid"])
        assert orthanc.rest("GET", "/instances") == []
    finally:
        orthanc.stop()
    assert (body["status"], body["sent"], body["failed"]) == ("failed", 0, len(corpus_archive))
    assert body["message"] == "association lost"
    assert {f["sop_instance_uid"] for f in body["failures"]} == set(corpus_archive)
    assert {f["status"] for f in body["failures"]} == {None}


def test_statuses_and_comments_of_a_peer_are_kept_per_instance(tmp_path, facade, corpus, corpus_archive):
    """Bad cases tried: a refusal (0xA700 "disk full") and a warning (0xB000 "coerced") counted as
    sent. A workstation (pynetdicom storage SCP) refuses one object, warns on another, stores the
    rest: the job is failed, sent counts only the successes, and both answers are kept with the
    peer's own status and Error Comment."""
    from tests.helpers import answering_store_scp

    uids = sorted(corpus_archive)
    answers = {uids[0]: (0xA700, "disque plein"), uids[1]: (0xB000, "elements coerced")}
    with answering_store_scp("WS9", answers) as port:
        body = _run_job(facade, "WS9", port, corpus["study_uid"])
    assert (body["status"], body["sent"], body["failed"]) == ("failed", len(uids) - 2, 2)
    assert sorted((f["sop_instance_uid"], f["status"], f["comment"]) for f in body["failures"]) == sorted(
        (uid, status, comment) for uid, (status, comment) in answers.items())
