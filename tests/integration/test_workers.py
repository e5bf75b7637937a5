"""``DICOM_WORKERS=2``: two SCP worker processes on one port, one indexer, the same guarantees as one process.

Real peers: DCMTK ``storescu`` (several at once) and pynetdicom, against ``flask --app wsgi archive
serve``. Which worker serves an association is read from the kernel (``/proc``): the socket of
the association belongs to one worker process.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import subprocess
import threading
import time
import warnings
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from tests.helpers import (dataset_after_meta, encoded_dataset, free_port, make_ct, require_tool, store_until_refused,
                           tool_env)
from tests.servers import ArchiveProcess

pytestmark = pytest.mark.dcmtk


WORKERS = {"ARCHIVAGE_DICOM_WORKERS": "2", "ARCHIVAGE_DICOM_QR_FROM_UNKNOWN_AES": "true"}


def _rows(server: ArchiveProcess) -> dict[str, tuple[str, str]]:
    with sqlite3.connect(server.instance_path / "archivage.sqlite3") as db:
        return {uid: (key, checksum) for uid, key, checksum in
                db.execute("SELECT sop_instance_uid, storage_key, checksum_sha256 FROM instance")}


def _workers(server: ArchiveProcess) -> dict[int, int]:
    """Worker number -> pid of its latest start, from the parent's log."""
    return {int(n): int(pid) for n, pid in re.findall(r"SCP worker (\d+) started \(pid (\d+)\)", server.log())}


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink()
        except OSError:
            continue
        if str(target).startswith("socket:["):
            inodes.add(str(target)[8:-1])
    return inodes


def _serving_pid(server: ArchiveProcess, assoc) -> int:
    """The worker process that holds the server side of *assoc*'s TCP connection."""
    client_port = assoc.dul.socket.socket.getsockname()[1]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        inode = None
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local_port, remote_port = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
            if local_port == server.port and remote_port == client_port:
                inode = fields[9]
        for pid in _workers(server).values():
            if inode is not None and inode in _socket_inodes(pid):
                return pid
        time.sleep(0.05)
    raise AssertionError("no worker holds the association")


def _associate(port: int, ae_title: str = "CT1", *, get: bool = False, attempts: int = 1):
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    for model in (StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelMove,
                  StudyRootQueryRetrieveInformationModelGet):
        ae.add_requested_context(model)
    received: list = []
    handlers = [(evt.EVT_C_STORE, lambda event: received.append(event.dataset) or 0x0000)] if get else []
    for _ in range(attempts):
        with warnings.catch_warnings():
            # A refused connection's socket is dropped unclosed by pynetdicom (tests/servers.py _answers).
            warnings.simplefilter("ignore", ResourceWarning)
            assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVAGE", evt_handlers=handlers,
                                 ext_neg=[build_role(CTImageStorage, scp_role=True)] if get else None)
        if not assoc.is_rejected:
            break
        # pynetdicom leaves a rejected association's socket open (tests/servers.py says so too).
        leftover = getattr(getattr(assoc.dul, "socket", None), "socket", None)
        if leftover is not None:
            leftover.close()
        time.sleep(0.2)  # a released association is counted out when its connection closes, just after
    assert assoc.is_established
    assoc.received = received
    return assoc


def _one_association_per_worker(server: ArchiveProcess, **kwargs) -> dict[int, object]:
    """Associations opened until each worker serves one (kept open); the others are released at once."""
    by_pid: dict[int, object] = {}
    for _ in range(40):
        assoc = _associate(server.port, attempts=10, **kwargs)
        pid = _serving_pid(server, assoc)
        if pid in by_pid:
            assoc.release()
        else:
            by_pid[pid] = assoc
        if len(by_pid) == 2:
            return by_pid
    raise AssertionError("40 associations, all on one worker: the port is not shared")


@pytest.fixture
def workers_server(tmp_path):
    server = ArchiveProcess(tmp_path / "instance", env=WORKERS).start()
    yield server
    server.stop()


def test_four_storescu_at_once_are_indexed_at_release_and_retrievable(workers_server, tmp_path):
    """Four DCMTK storescu processes at once (one association each) into two workers: when each
    exits (its association released) everything it sent is indexed; C-FIND, C-GET and C-MOVE then
    work on each worker. An empty implementation (one process only, or an index lagging behind the
    release) fails the counts read right after the release."""
    server = workers_server
    batches, sent = [], {}
    for b in range(4):
        folder = tmp_path / f"batch{b}"
        folder.mkdir()
        study, series = generate_uid(), generate_uid()
        for n in range(15):
            ds = make_ct(patient_id=f"PAT{b}", study_uid=study, series_uid=series, InstanceNumber=n + 1)
            ds.save_as(folder / f"{n}.dcm", enforce_file_format=True)
            sent[ds.SOPInstanceUID] = (study, encoded_dataset(ds))
        batches.append((folder, study))
    procs = [subprocess.Popen([require_tool("storescu"), "-aet", f"CT{b}", "-aec", "ARCHIVAGE", "+sd",
                               "127.0.0.1", str(server.port), str(folder)], env=tool_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for b, (folder, _) in enumerate(batches)]
    released: dict[int, set] = {}
    for b, proc in enumerate(procs):
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        # Read as soon as this storescu is done: its release answer waited for the index.
        released[b] = set(_rows(server))
    for b, (_, study) in enumerate(batches):
        mine = {uid for uid, (st, _) in sent.items() if st == study}
        assert mine <= released[b], f"batch {b}: {len(mine - released[b])} not indexed at release"
    rows = _rows(server)
    for uid, (_, data) in sent.items():
        key, checksum = rows[uid]
        assert hashlib.sha256(data).hexdigest() == checksum
        assert dataset_after_meta((server.instance_path / "storage" / "objects" / key).read_bytes()) == data

    # Query and retrieve on each worker.
    destination, moved = _move_destination()
    try:
        assert server.cli("peers", "add", "DEST", "127.0.0.1", str(destination.port)).returncode == 0
        study = batches[0][1]
        for pid, assoc in _one_association_per_worker(server, get=True).items():
            query = make_query(study)
            answers = [i for s, i in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
                       if s and s.Status in (0xFF00, 0xFF01)]
            assert [str(a.StudyInstanceUID) for a in answers] == [study], f"C-FIND on worker {pid}"
            assoc.received.clear()
            statuses = [s.Status for s, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)]
            assert statuses[-1] == 0x0000 and len(assoc.received) == 15, f"C-GET on worker {pid}"
            got = {str(ds.SOPInstanceUID): encoded_dataset(ds) for ds in assoc.received}
            assert all(got[uid] == data for uid, (st, data) in sent.items() if st == study)
            moved.clear()
            statuses = [s.Status for s, _ in assoc.send_c_move(query, "DEST",
                                                                StudyRootQueryRetrieveInformationModelMove)]
            assert statuses[-1] == 0x0000 and len(moved) == 15, f"C-MOVE on worker {pid}"
            assoc.release()
    finally:
        destination.stop()
    fsck = server.cli("archive", "fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert "checked 60 instances, 0 problems" in fsck.stdout


def make_query(study: str):
    from pydicom.dataset import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    return query


class _Destination:
    def __init__(self, server, port):
        self.server, self.port = server, port

    def stop(self):
        self.server.shutdown()


def _move_destination():
    moved: list = []
    ae = AE(ae_title="DEST")
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, lambda event: moved.append(event.request) or 0x0000)])
    return _Destination(server, port), moved


def test_release_waits_for_the_index_on_both_workers(workers_server):
    """pynetdicom stores on one association per worker, both open at once; right after each release
    the database holds every object of that association (no sleep, no polling)."""
    server = workers_server
    for pid, assoc in _one_association_per_worker(server).items():
        study, series = generate_uid(), generate_uid()
        uids = []
        for n in range(20):
            ds = make_ct(study_uid=study, series_uid=series, InstanceNumber=n + 1)
            assert assoc.send_c_store(ds).Status == 0x0000
            uids.append(ds.SOPInstanceUID)
        assoc.release()
        assert set(uids) <= set(_rows(server)), f"worker {pid} released before indexing"


def test_duplicate_with_other_content_is_refused_across_workers(workers_server):
    """The duplicate check is the indexer's, shared by the workers: a different object under a SOP
    Instance UID acknowledged on the other worker (still pending or indexed) is refused 0xA900-class,
    as with one process (policy keep_first)."""
    server = workers_server
    (first, second) = _one_association_per_worker(server).values()
    ds = make_ct()
    assert first.send_c_store(ds).Status == 0x0000
    other = make_ct(sop_uid=ds.SOPInstanceUID, study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID,
                    InstanceNumber=99)
    status = second.send_c_store(other).Status
    assert status != 0x0000
    first.release()
    second.release()
    rows = _rows(server)
    assert rows[ds.SOPInstanceUID][1] == hashlib.sha256(encoded_dataset(ds)).hexdigest()


def test_association_limit_counts_both_workers(tmp_path):
    """DICOM_MAX_ASSOCIATIONS=2 with two workers: a third association is rejected (transient, local
    limit) wherever it lands, and admitted again once one is released. Per worker counting would
    admit up to four."""
    server = ArchiveProcess(tmp_path / "instance",
                            env={**WORKERS, "ARCHIVAGE_DICOM_MAX_ASSOCIATIONS": "2"}).start()
    try:
        opened = list(_one_association_per_worker(server).values())
        for _ in range(4):  # whichever worker takes it
            refused = subprocess.run([require_tool("echoscu"), "-aet", "CT9", "-aec", "ARCHIVAGE", "127.0.0.1",
                                      str(server.port)], env=tool_env(), capture_output=True, text=True, timeout=60)
            assert refused.returncode != 0
            assert "Local Limit Exceeded" in refused.stdout + refused.stderr, refused.stdout + refused.stderr
        opened.pop().release()
        again = _associate(server.port, attempts=10)
        assert again.send_c_echo().Status == 0x0000
        again.release()
        opened[0].release()
    finally:
        server.stop()


def test_kill_9_of_a_worker_mid_stream_loses_nothing_acknowledged(tmp_path):
    """Two associations stream at once, one per worker; the worker of the first is killed with
    kill -9 after 60 acknowledgements. The parent replays that worker's journal and starts it again;
    the other association goes on undisturbed. Every acknowledged instance is then indexed with its
    checksum and its bytes, before and after a restart of the whole server (its journal replayed
    too), and fsck is clean. The parent itself killed -9 takes its workers with it."""
    server = ArchiveProcess(tmp_path / "instance", env=WORKERS).start()
    try:
        victim_assoc, other_assoc = _one_association_per_worker(server).values()
        victim = _serving_pid(server, victim_assoc)
        sent: dict[str, bytes] = {}
        acked: dict[str, list[str]] = {"victim": [], "other": []}

        def stream(name, assoc, count, kill_after=None):
            raw_socket = assoc.dul.socket.socket
            study, series = generate_uid(), generate_uid()

            def acknowledged(uid: str) -> None:
                acked[name].append(uid)
                if kill_after and len(acked[name]) == kill_after:
                    subprocess.run(["kill", "-9", str(victim)], check=True)

            store_until_refused(assoc, (make_ct(study_uid=study, series_uid=series, InstanceNumber=n + 1)
                                        for n in range(count)), sent, acknowledged)
            if assoc.is_established:
                assoc.release()
            else:
                assoc.abort()
                raw_socket.close()

        other = threading.Thread(target=stream, args=("other", other_assoc, 150))
        other.start()
        stream("victim", victim_assoc, 300, kill_after=60)
        other.join(120)
        assert 60 <= len(acked["victim"]) < 300, "the kill did not land in the middle of the stream"
        assert len(acked["other"]) == 150, "the other worker's association was disturbed"

        deadline = time.monotonic() + 60
        while "restarted" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "restarted" in server.log(), server.log()[-3000:]
        assert server.proc.poll() is None

        def check():
            rows = _rows(server)
            for uid in acked["victim"] + acked["other"]:
                assert uid in rows, "an acknowledged instance was lost"
                key, checksum = rows[uid]
                assert hashlib.sha256(sent[uid]).hexdigest() == checksum
                stored = (server.instance_path / "storage" / "objects" / key).read_bytes()
                assert dataset_after_meta(stored) == sent[uid]

        check()
        new_assoc = _associate(server.port)
        assert new_assoc.send_c_echo().Status == 0x0000
        new_assoc.release()

        workers = list(_workers(server).values())
        server.kill()
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() and "zombie" not in _status(pid) for pid in workers):
            assert time.monotonic() < deadline, "workers outlived their parent"
            time.sleep(0.1)
        server.start()
        check()
        assert not any((server.instance_path / "storage" / "incoming").rglob("*.dcm"))
        fsck = server.cli("archive", "fsck")
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    finally:
        server.stop()
    assert server.proc.returncode == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in _workers(server).values()), "a worker outlived stop"


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"
