"""DICOM TLS: the SCP's TLS port with DCMTK's TLS-enabled tools, and our associations to peers registered --tls.

Throw-away certificates are made with the ``openssl`` command for each test module: a practice CA,
the archive's certificate (also presented as our client certificate), a workstation's, and a
certificate from another CA.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydicom import dcmread
from sqlalchemy import select

from archive_core.db import write_session
from archive_core.index.models import Instance
from archive_core.peers import add_peer
from tests.helpers import archive_server, dcmtk, free_port, make_ct, require_tool, tool_env
from tests.servers import flask_cli

STUDY = "1.2.826.0.1.3680043.8.498.9201"
TIMEOUT_S = 60


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run([require_tool("openssl"), *args], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr


def _ca(folder: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt",
             "-days", "30", "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)


def _leaf(folder: Path, name: str, ca: str) -> None:
    (folder / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                                        "keyUsage=digitalSignature,keyEncipherment\n"
                                        "extendedKeyUsage=serverAuth,clientAuth\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={name}", cwd=folder)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "30", "-extfile", f"{name}.ext", cwd=folder)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("pki")
    _ca(folder, "practice-ca")
    _ca(folder, "other-ca")
    _leaf(folder, "archive", "practice-ca")
    _leaf(folder, "workstation", "practice-ca")
    _leaf(folder, "stranger", "other-ca")
    return SimpleNamespace(**{name.replace("-", "_").replace(".", "_"): folder / name for name in
                              ("practice-ca.crt", "archive.crt", "archive.key", "workstation.crt",
                               "workstation.key", "stranger.crt", "stranger.key")}, folder=folder)


def _tls_settings(pki, **more) -> dict:
    return {"DICOM_TLS_PORT": free_port(), "DICOM_TLS_CERT": str(pki.archive_crt),
            "DICOM_TLS_KEY": str(pki.archive_key), "DICOM_TLS_CA": str(pki.practice_ca_crt), **more}


@pytest.fixture
def tls_archive(instance_path, pki):
    """The archive with its TLS port; TLSWS (a workstation) registered at 127.0.0.1 with --tls."""
    with archive_server(instance_path, **_tls_settings(pki)) as (archive, running):
        with write_session(archive.sessions) as s:
            add_peer(s, "TLSWS", "127.0.0.1", 104, tls=True)
        yield archive, running


def _client_tls(pki, name: str = "workstation") -> list[str]:
    return ["+tls", str(pki.folder / f"{name}.key"), str(pki.folder / f"{name}.crt"), "+cf", str(pki.practice_ca_crt)]


def _echo_tls(port: int, pki, *tls: str) -> subprocess.CompletedProcess:
    return dcmtk("echoscu", "-aet", "TLSWS", "-aec", "ARCHIVAGE", *tls, "127.0.0.1", str(port), timeout=TIMEOUT_S)


def test_dcmtk_echo_store_and_find_over_tls_with_a_client_certificate(tls_archive, pki, tmp_path):
    """echoscu, storescu and findscu ``+tls key cert +cf ca`` on the TLS port, as a peer registered --tls."""
    archive, running = tls_archive
    assert running.tls_port and running.tls_port != running.port
    echo = _echo_tls(running.tls_port, pki, *_client_tls(pki))
    assert echo.returncode == 0, echo.stderr

    ds = make_ct(patient_id="PAT-TLS", study_uid=STUDY, series_uid=STUDY + ".1", sop_uid=STUDY + ".1.1")
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    store = dcmtk("storescu", "-aet", "TLSWS", "-aec", "ARCHIVAGE", *_client_tls(pki), "127.0.0.1",
                  str(running.tls_port), str(path), timeout=TIMEOUT_S)
    assert store.returncode == 0, store.stderr
    with archive.sessions() as s:
        assert list(s.scalars(select(Instance.sop_instance_uid))) == [STUDY + ".1.1"]

    out = tmp_path / "answers"
    out.mkdir()
    find = dcmtk("findscu", "-S", "-aet", "TLSWS", "-aec", "ARCHIVAGE", *_client_tls(pki), "-X", "-od", str(out),
                 "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "-k", "PatientID=PAT-TLS",
                 "127.0.0.1", str(running.tls_port), timeout=TIMEOUT_S)
    assert find.returncode == 0, find.stderr
    assert [dcmread(p).StudyInstanceUID for p in out.iterdir()] == [STUDY]


@pytest.mark.parametrize(
    "client, why",
    [
        (lambda pki: ["+tla", "+cf", str(pki.practice_ca_crt)], "no client certificate"),
        (lambda pki: _client_tls(pki, "stranger"), "a certificate from another CA"),
        (lambda pki: [], "plain TCP to the TLS port"),
    ],
    ids=["no client certificate", "wrong CA", "plain TCP"],
)
def test_a_client_without_a_certificate_of_the_practice_ca_gets_nothing(tls_archive, pki, client, why):
    """Bad input: {why}. The association never starts; the server keeps serving the others."""
    archive, running = tls_archive
    refused = _echo_tls(running.tls_port, pki, *client(pki))
    assert refused.returncode != 0, why
    assert _echo_tls(running.tls_port, pki, *_client_tls(pki)).returncode == 0


def test_a_silent_connection_to_the_tls_port_does_not_hold_up_other_clients(tls_archive, pki):
    """Bad input: a TCP connection that never starts its handshake. The handshake runs in the
    connection's own thread, so a real client is served at once."""
    archive, running = tls_archive
    with socket.create_connection(("127.0.0.1", running.tls_port)):
        started = time.monotonic()
        echo = _echo_tls(running.tls_port, pki, *_client_tls(pki))
        assert echo.returncode == 0, echo.stderr
        assert time.monotonic() - started < 10  # the network timeout (60 s) would otherwise be waited


def test_a_peer_registered_with_tls_is_rejected_on_the_plain_port(tls_archive, pki):
    """Bad input: TLSWS (registered --tls) over plain TCP on the ordinary port: rejected and audited."""
    archive, running = tls_archive
    plain = dcmtk("echoscu", "-aet", "TLSWS", "-aec", "ARCHIVAGE", "127.0.0.1", str(running.port), timeout=TIMEOUT_S)
    assert plain.returncode != 0 and "Calling AE Title Not Recognized" in plain.stderr + plain.stdout
    from archive_core.audit import AuditEvent

    with archive.sessions() as s:
        (event,) = s.scalars(select(AuditEvent).where(AuditEvent.action == "dicom.refused")).all()
    assert event.actor == "TLSWS"
    assert json.loads(event.detail)["remedy"] == "it must connect to the DICOM TLS port"


def _storescp_tls(pki, out: Path) -> tuple[int, subprocess.Popen]:
    """DCMTK storescp speaking TLS only, requiring a client certificate of the practice CA."""
    port = free_port()
    proc = subprocess.Popen([require_tool("storescp"), "-aet", "TLSDEST", "+B", "-od", str(out),
                             "+tls", str(pki.workstation_key), str(pki.workstation_crt), "+cf", str(pki.practice_ca_crt),
                             str(port)], env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, "storescp exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return port, proc
        except OSError:
            time.sleep(0.05)  # polling a port: no event to await
    raise TimeoutError("storescp did not start")


def _stored_bytes(archive, path: Path) -> bytes:
    from archive_core.part10 import dataset_offset

    data = path.read_bytes()
    return data[dataset_offset(data):]


def test_c_move_and_sends_to_a_peer_registered_with_tls_go_over_tls(tls_archive, pki, tmp_path):
    """A C-MOVE (sub-association) and a facade send (what send jobs and prefetch use) to a storescp
    that speaks only TLS and requires our certificate: the stored bytes arrive."""
    from archive_core.api import ArchiveFacade

    archive, running = tls_archive
    datasets = [make_ct(study_uid=STUDY, series_uid=STUDY + ".1", sop_uid=f"{STUDY}.1.{n}", InstanceNumber=n)
                for n in (1, 2)]
    store = dcmtk("storescu", "-aet", "TLSWS", "-aec", "ARCHIVAGE", *_client_tls(pki), "127.0.0.1",
                  str(running.tls_port), *[str(_saved(ds, tmp_path)) for ds in datasets], timeout=TIMEOUT_S)
    assert store.returncode == 0, store.stderr
    out = tmp_path / "received"
    out.mkdir()
    port, proc = _storescp_tls(pki, out)
    try:
        with write_session(archive.sessions) as s:
            add_peer(s, "TLSDEST", "127.0.0.1", port, tls=True)
            add_peer(s, "MOVER", "127.0.0.1", 104)
        # DCMTK 3.6.7's movescu has no TLS: the request comes in plain, its sub-association goes out in TLS.
        move = dcmtk("movescu", "-S", "-aet", "MOVER", "-aec", "ARCHIVAGE", "-aem", "TLSDEST",
                     "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}", "127.0.0.1",
                     str(running.port), timeout=TIMEOUT_S)
        assert move.returncode == 0, move.stderr
        received = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in out.iterdir()}
        assert set(received) == {ds.SOPInstanceUID for ds in datasets}
        with archive.sessions() as s:
            keys = dict(s.execute(select(Instance.sop_instance_uid, Instance.storage_key)).all())
        for uid, path in received.items():
            assert _stored_bytes(archive, path) == _stored_bytes(archive, archive.store.path_of(keys[uid]))

        for p in out.iterdir():
            p.unlink()
        result = ArchiveFacade(archive).retrieve_to_peer([STUDY], "TLSDEST")
        assert (result.completed, result.failed) == (2, 0)
        assert len(list(out.iterdir())) == 2
    finally:
        proc.terminate()
        proc.wait(TIMEOUT_S)


def test_a_send_to_a_tls_peer_that_only_speaks_plain_tcp_fails_rather_than_going_in_clear(tls_archive, pki,
                                                                                            tmp_path):
    """Bad input: a peer registered --tls whose port speaks plain DICOM. Nothing is sent in clear."""
    from archive_core.api import ArchiveFacade

    archive, running = tls_archive
    ds = make_ct(study_uid=STUDY, series_uid=STUDY + ".1", sop_uid=f"{STUDY}.1.1")
    store = dcmtk("storescu", "-aet", "TLSWS", "-aec", "ARCHIVAGE", *_client_tls(pki), "127.0.0.1",
                  str(running.tls_port), str(_saved(ds, tmp_path)), timeout=TIMEOUT_S)
    assert store.returncode == 0, store.stderr
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen([require_tool("storescp"), "-aet", "PLAIN", "-od", str(out), str(port)], env=tool_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)  # polling a port: no event to await
        with write_session(archive.sessions) as s:
            add_peer(s, "PLAIN", "127.0.0.1", port, tls=True)
        result = ArchiveFacade(archive).retrieve_to_peer([STUDY], "PLAIN")
        assert (result.completed, result.failed) == (0, 1)
        sent = ArchiveFacade(archive).send_studies("PLAIN", [STUDY])
        assert sent.message.startswith("DICOM TLS with PLAIN failed")  # what the send job page shows
        with write_session(archive.sessions) as s:
            add_peer(s, "MOVER", "127.0.0.1", 104)
        move = dcmtk("movescu", "-S", "-aet", "MOVER", "-aec", "ARCHIVAGE", "-aem", "PLAIN", "-k",
                     "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}", "127.0.0.1", str(running.port),
                     timeout=TIMEOUT_S)
        assert move.returncode != 0
        assert "MoveDestinationUnknown" in move.stderr + move.stdout, move.stderr  # 0xA801
        assert list(out.iterdir()) == []
    finally:
        proc.terminate()
        proc.wait(TIMEOUT_S)


def _saved(ds, folder: Path) -> Path:
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"ARCHIVAGE_DICOM_TLS_PORT": "0"}, None),  # no TLS port: serves as before (control)
        ({"ARCHIVAGE_DICOM_TLS_PORT": "11113"}, "DICOM_TLS_PORT needs DICOM_TLS_CERT and DICOM_TLS_KEY"),
        ({"ARCHIVAGE_DICOM_TLS_PORT": "11113", "ARCHIVAGE_DICOM_TLS_CERT": "/nonexistent.crt",
          "ARCHIVAGE_DICOM_TLS_KEY": "/nonexistent.key", "ARCHIVAGE_DICOM_TLS_CA": "/nonexistent-ca.crt"},
         "cannot load the DICOM TLS certificate, key or CA"),
    ],
    ids=["off", "no certificate", "missing files"],
)
def test_archive_serve_refuses_to_start_on_tls_settings_that_cannot_work(tmp_path, pki, settings, message):
    """Bad input: a TLS port without a certificate, or certificate files that do not exist: ``archive
    serve`` exits at once with the reason instead of listening without TLS."""
    instance = tmp_path / "instance"
    instance.mkdir()
    assert flask_cli(instance, "db", "upgrade").returncode == 0
    env = {"ARCHIVAGE_DICOM_PORT": str(free_port()), **settings}
    if message is None:
        with pytest.raises(subprocess.TimeoutExpired):  # still serving after 5 s: started
            flask_cli(instance, "archive", "serve", env=env, timeout=5)
        return
    done = flask_cli(instance, "archive", "serve", env=env, timeout=TIMEOUT_S)
    assert done.returncode != 0
    assert message in done.stderr


def test_a_send_to_a_tls_peer_with_an_unreadable_ca_fails_with_the_reason(instance_path):
    """Bad input: DICOM_TLS_CA names a file that does not exist (no TLS port, so the server starts);
    a send to a --tls peer is reported failed with the reason, and nothing is attempted in clear."""
    from archive_core.api import ArchiveFacade
    from tests.helpers import associate_ct_modality

    with archive_server(instance_path, DICOM_TLS_CA="/nonexistent/practice-ca.crt") as (archive, running):
        assoc = associate_ct_modality(running.port)
        assert assoc.send_c_store(make_ct(study_uid=STUDY)).Status == 0x0000
        assoc.release()
        with write_session(archive.sessions) as s:
            add_peer(s, "TLSDEST", "127.0.0.1", free_port(), tls=True)
        sent = ArchiveFacade(archive).send_studies("TLSDEST", [STUDY])
    assert (sent.sent, sent.failed) == (0, 1)
    assert sent.message.startswith("cannot load the DICOM TLS certificate, key or CA")


@pytest.mark.parametrize("version, accepted", [("-tls1_1", False), ("-tls1_2", True)])
def test_the_tls_port_speaks_tls_1_2_or_later(tls_archive, pki, version, accepted):
    """Bad input: a client offering only TLS 1.1 (``openssl s_client``, its own floor lowered) gets a
    protocol-version alert; TLS 1.2 with the practice's certificate completes the handshake."""
    archive, running = tls_archive
    done = subprocess.run([require_tool("openssl"), "s_client", "-connect", f"127.0.0.1:{running.tls_port}", version,
                           "-cipher", "DEFAULT@SECLEVEL=0", "-cert", str(pki.workstation_crt), "-key",
                           str(pki.workstation_key), "-CAfile", str(pki.practice_ca_crt)],
                          input="", capture_output=True, text=True, timeout=TIMEOUT_S)
    if accepted:
        assert "Verify return code: 0 (ok)" in done.stdout and "TLSv1.2" in done.stdout, done.stdout + done.stderr
    else:
        assert "alert protocol version" in done.stderr, done.stdout + done.stderr


def test_client_certificates_can_be_made_optional(instance_path, pki):
    """DICOM_TLS_REQUIRE_CLIENT_CERT false: a client without a certificate is served; one presenting a
    certificate from another CA (bad input) is still refused."""
    with archive_server(instance_path, **_tls_settings(pki, DICOM_TLS_REQUIRE_CLIENT_CERT=False)) as (archive, running):
        with write_session(archive.sessions) as s:
            add_peer(s, "TLSWS", "127.0.0.1", 104, tls=True)
        anonymous = _echo_tls(running.tls_port, pki, "+tla", "+cf", str(pki.practice_ca_crt))
        assert anonymous.returncode == 0, anonymous.stderr
        assert _echo_tls(running.tls_port, pki, *_client_tls(pki, "stranger")).returncode != 0


def test_a_storage_commitment_report_to_a_tls_modality_goes_over_tls(tls_archive, pki):
    """A pynetdicom modality registered --tls stores and asks for commitment over the TLS port, then
    leaves: the report comes on a new association to its own SCP, which speaks only TLS and requires
    the practice's certificate."""
    import queue
    import ssl

    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import CTImageStorage, StorageCommitmentPushModel

    archive, running = tls_archive
    reports: queue.Queue = queue.Queue()

    def on_report(event):
        reports.put((event.event_type, str(event.event_information.TransactionUID)))
        return 0x0000, None

    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(pki.workstation_crt, pki.workstation_key)
    server_side.load_verify_locations(pki.practice_ca_crt)
    server_side.verify_mode = ssl.CERT_REQUIRED
    listener = AE(ae_title="TLSWS")
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    port = free_port()
    server = listener.start_server(("127.0.0.1", port), block=False, ssl_context=server_side,
                                   evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    try:
        with write_session(archive.sessions) as s:
            add_peer(s, "TLSWS", "127.0.0.1", port, tls=True)
        client_side = ssl.create_default_context(cafile=pki.practice_ca_crt)
        client_side.load_cert_chain(pki.workstation_crt, pki.workstation_key)
        modality = AE(ae_title="TLSWS")
        modality.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
        modality.add_requested_context(StorageCommitmentPushModel)
        assoc = modality.associate("127.0.0.1", running.tls_port, ae_title="ARCHIVAGE",
                                   tls_args=(client_side, "127.0.0.1"))
        assert assoc.is_established
        image = make_ct()
        assert assoc.send_c_store(image).Status == 0x0000
        request = Dataset()
        request.TransactionUID = transaction = generate_uid()
        item = Dataset()
        item.ReferencedSOPClassUID = image.SOPClassUID
        item.ReferencedSOPInstanceUID = image.SOPInstanceUID
        request.ReferencedSOPSequence = [item]
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
        assert status.Status == 0x0000
        assoc.release()
        assert reports.get(timeout=30) == (1, transaction)
    finally:
        server.shutdown()
