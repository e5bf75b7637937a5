"""Shared benchmark plumbing: ports, synthetic DICOM sets, the DICOM servers under test, DCMTK tools."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

REPO = Path(__file__).resolve().parent.parent
LOCALHOST = "127.0.0.1"
ARCHIVE_AE = "ARCHIVAGE"
ORTHANC_AE = "ORTHANC"
BENCH_AE = "BENCH"
MB = 1_000_000  # decimal megabyte, for throughput and memory alike

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
ECHO_TIMEOUT_S = 10.0
MIGRATE_TIMEOUT_S = 120.0
RSS_SAMPLE_PERIOD_S = 0.05


# --- ports and processes -------------------------------------------------------------------


def report_ms(name: str, samples: list[float]) -> None:
    """One line: the measure's name, its count, p50 and p95 in milliseconds."""
    import statistics

    samples = sorted(samples)
    p95 = samples[min(len(samples) - 1, int(len(samples) * 0.95))]
    print(f"{name:48s} n={len(samples):4d}  p50={statistics.median(samples):7.1f} ms  p95={p95:7.1f} ms")


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports free on 127.0.0.1 (held open together so they differ)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((LOCALHOST, 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port() -> int:
    """Return one TCP port free on 127.0.0.1."""
    return free_ports(1)[0]


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate the process group we started ``process`` in, escalating to SIGKILL."""
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_TIMEOUT_S)
    # Children (e.g. a forked worker) may outlive their parent: sweep the group in every case.
    _signal_group(process, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_TIMEOUT_S)


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)  # pgid == pid: every process is started in its own session


def process_tree(root_pid: int) -> list[int]:
    """Return ``root_pid`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name (field 2) may contain spaces and parentheses: split after its ')'.
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, pending = [], [root_pid]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def cpu_seconds(root_pid: int) -> float:
    """User + system CPU time of ``root_pid`` and its live descendants (SCP worker processes)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in process_tree(root_pid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / ticks


def vm_hwm_bytes(pid: int) -> int:
    """Return the RSS high-water mark of one process (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakRss:
    """Samples the VmHWM of a process tree in a thread; ``bytes`` sums each process's peak.

    Sampling (rather than reading once at the end) catches children that exit before then.
    ``startup_bytes`` is the same sum on entry: what the server needed before the measured work.
    """

    def __init__(self, root_pid: int) -> None:
        self._root_pid = root_pid
        self._peaks: dict[int, int] = {}
        self.startup_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)

    def __enter__(self) -> PeakRss:
        self._sample()
        self.startup_bytes = self.bytes
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=STOP_TIMEOUT_S)
        self._sample()

    @property
    def bytes(self) -> int:
        return sum(self._peaks.values())

    def _run(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_PERIOD_S):
            self._sample()

    def _sample(self) -> None:
        for pid in process_tree(self._root_pid):
            self._peaks[pid] = max(self._peaks.get(pid, 0), vm_hwm_bytes(pid))


# --- DCMTK ---------------------------------------------------------------------------------


def dcmtk_tool(name: str) -> str:
    """Return the path of a DCMTK program.

    pynetdicom installs look-alike ``storescu``/``echoscu``/``storescp`` scripts into the
    virtualenv's ``bin``, so directories that belong to a virtualenv are skipped.
    """
    path_dirs = [
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if entry and not Path(entry).parent.joinpath("pyvenv.cfg").exists()
    ]
    found = shutil.which(name, path=os.pathsep.join(path_dirs))
    if found is None:
        raise RuntimeError(f"DCMTK's {name} not found on PATH (apt install dcmtk)")
    return found


def dcmtk_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return an environment with TCP_NODELAY=1, which DCMTK (and Orthanc) read at connect time."""
    return {**(os.environ if base is None else base), "TCP_NODELAY": "1"}


def run_dcmtk(name: str, args: Sequence[str], *, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK program to completion and return its result (not checked)."""
    return subprocess.run(
        [dcmtk_tool(name), *args],
        env=dcmtk_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def echo(port: int, called_ae: str) -> bool:
    """Return whether a C-ECHO to ``called_ae`` on 127.0.0.1:``port`` succeeds."""
    timeouts = ["-to", "2", "-ta", "2", "-td", "2"]
    try:
        result = run_dcmtk(
            "echoscu",
            [*timeouts, "-aet", BENCH_AE, "-aec", called_ae, LOCALHOST, str(port)],
            timeout_s=ECHO_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


# --- servers under test --------------------------------------------------------------------


@dataclass
class Server:
    """A DICOM server process we started, listening on 127.0.0.1:``port``."""

    name: str
    port: int
    ae_title: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, message: str) -> RuntimeError:
        return RuntimeError(f"{self.name}: {message}\n--- {self.log_path} (tail) ---\n{self.log_tail()}")


@contextmanager
def running_server(
    name: str,
    argv: Sequence[str],
    *,
    port: int,
    ae_title: str,
    workdir: Path,
    env: Mapping[str, str],
    cwd: Path | None = None,
) -> Iterator[Server]:
    """Start ``argv`` in its own session, wait until it answers C-ECHO, and stop it on exit."""
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            server = Server(name, port, ae_title, process, log_path)
            wait_for_echo(server, timeout_s=START_TIMEOUT_S)
            yield server
        finally:
            stop_process(process)


def wait_for_echo(server: Server, *, timeout_s: float) -> None:
    """Poll C-ECHO until the server answers; fail early if it exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise server.fail(f"exited with status {server.process.returncode} before answering C-ECHO")
        if echo(server.port, server.ae_title):
            return
        time.sleep(0.2)
    raise server.fail(f"no C-ECHO answer on port {server.port} within {timeout_s:.0f} s")


def archivage_env(instance_path: Path, port: int) -> dict[str, str]:
    """Environment for our commands: inherited ARCHIVAGE_* settings are dropped so a benchmark
    can never reach a real database or storage configured in the caller's shell."""
    base = {key: value for key, value in os.environ.items() if not key.startswith("ARCHIVAGE_")}
    return dcmtk_env(base) | {
        "ARCHIVAGE_INSTANCE_PATH": str(instance_path),
        "ARCHIVAGE_DICOM_HOST": LOCALHOST,
        "ARCHIVAGE_DICOM_PORT": str(port),
        "ARCHIVAGE_DICOM_AE_TITLE": ARCHIVE_AE,
        # The benchmark's storing AE is not registered (query/retrieve registers BENCH, bench/_qr.py).
        "ARCHIVAGE_DICOM_STORE_FROM_UNKNOWN_AES": "true",
    }


def flask_command(*args: str) -> list[str]:
    return [str(REPO / ".venv" / "bin" / "flask"), "--app", "wsgi", *args]


@contextmanager
def archivage_server(
    workdir: Path, *, workers: int = 1, settings: Mapping[str, str] | None = None, migrate: bool = True,
    name: str = "archivage",
) -> Iterator[Server]:
    """Run ``flask --app wsgi archive serve`` on a fresh, migrated instance under ``workdir``
    (``workers`` > 1: with that many SCP worker processes, DICOM_WORKERS). *settings*: more
    ``ARCHIVAGE_*`` variables (a shared database, an object store) and the store's credentials;
    ``migrate=False`` for a second node of a database another node migrated."""
    instance_path = workdir / "instance"
    instance_path.mkdir()
    port = free_port()
    env = archivage_env(instance_path, port) | {"ARCHIVAGE_DICOM_WORKERS": str(workers)} | dict(settings or {})
    if migrate:
        done = subprocess.run(
            flask_command("db", "upgrade"),
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=MIGRATE_TIMEOUT_S,
        )
        if done.returncode != 0:
            raise RuntimeError(f"db upgrade failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    with running_server(
        name,
        flask_command("archive", "serve"),
        port=port,
        ae_title=ARCHIVE_AE,
        workdir=workdir,
        env=env,
        cwd=REPO,
    ) as server:
        yield server


def orthanc_config(workdir: Path, dicom_port: int, http_port: int) -> dict[str, object]:
    return {
        "Name": "archivage-bench",
        "StorageDirectory": str(workdir / "orthanc-storage"),
        "IndexDirectory": str(workdir / "orthanc-index"),
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "DicomAet": ORTHANC_AE,
        "DicomCheckCalledAet": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],  # keep Debian's default plugins out of the measurement
    }


def orthanc_binary() -> str:
    """Return Debian's Orthanc binary (in /usr/sbin, which is not on every user's PATH)."""
    found = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError("Orthanc not found (apt install orthanc)")
    return found


@contextmanager
def orthanc_server(workdir: Path) -> Iterator[Server]:
    """Run Debian's ``Orthanc`` with a throw-away configuration and empty storage under ``workdir``."""
    dicom_port, http_port = free_ports(2)
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(orthanc_config(workdir, dicom_port, http_port), indent=2))
    with running_server(
        "orthanc",
        [orthanc_binary(), str(config_path)],
        port=dicom_port,
        ae_title=ORTHANC_AE,
        workdir=workdir,
        env=dcmtk_env(),
    ) as server:
        yield server


@contextmanager
def storescp_server(workdir: Path) -> Iterator[Server]:
    """Run DCMTK's ``storescp --ignore`` (receives and discards): the network/toolkit baseline."""
    port = free_port()
    with running_server(
        "storescp",
        [dcmtk_tool("storescp"), "--ignore", "-aet", ARCHIVE_AE, str(port)],
        port=port,
        ae_title=ARCHIVE_AE,
        workdir=workdir,
        env=dcmtk_env(),
    ) as server:
        yield server


SERVERS = {"archivage": archivage_server, "orthanc": orthanc_server, "storescp": storescp_server}


# --- shared engines: PostgreSQL and an S3-compatible server (several nodes) ---------------------


def _pg_program(name: str) -> str:
    found = shutil.which(name) or next((str(p) for p in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                                                                  reverse=True)), None)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} not found (apt install postgresql)")
    return found


@dataclass
class Postgres:
    """A throw-away PostgreSQL server: ``url`` for SQLAlchemy; ``reset()`` empties its database."""

    url: str
    dsn: str

    def reset(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")


@contextmanager
def postgres_server() -> Iterator[Postgres]:
    """initdb + pg_ctl on 127.0.0.1 and a free port (fsync on: a production-like commit cost)."""
    import psycopg

    # Its own folder: as root, initdb runs as the postgres account, which cannot enter ours.
    data = Path(tempfile.mkdtemp(prefix="archivage-bench-pg-"))
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    if as_root:
        shutil.chown(data, "postgres", "postgres")
    port = free_port()
    subprocess.run([*prefix, _pg_program("initdb"), "-D", str(data / "db"), "-U", "postgres", "-A", "trust",
                    "-E", "UTF8", "--locale=C.UTF-8"], check=True, capture_output=True)
    subprocess.run([*prefix, _pg_program("pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-w", "-o",
                    f"-h {LOCALHOST} -p {port} -k {data} -c max_connections=200", "start"],
                   check=True, capture_output=True)
    try:
        with psycopg.connect(f"host={LOCALHOST} port={port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE archivage_bench")
        yield Postgres(f"postgresql+psycopg://postgres@{LOCALHOST}:{port}/archivage_bench",
                       f"host={LOCALHOST} port={port} user=postgres dbname=archivage_bench")
    finally:
        subprocess.run([*prefix, _pg_program("pg_ctl"), "-D", str(data / "db"), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@dataclass
class ObjectStore:
    """moto's S3 server: ``settings(bucket)`` are the ARCHIVAGE_* variables and credentials of a node."""

    url: str
    process: subprocess.Popen[bytes]
    credentials = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def create_bucket(self, name: str) -> str:
        import boto3

        boto3.session.Session().client("s3", endpoint_url=self.url, **_boto_credentials(self.credentials)
                                        ).create_bucket(Bucket=name)
        return name

    def settings(self, bucket: str) -> dict[str, str]:
        return {**self.credentials, "ARCHIVAGE_STORAGE_URL": f"s3://{bucket}/objects",
                "ARCHIVAGE_ARCHIVE_TIER_STORAGE_URL": f"s3://{bucket}/archive-tier",
                "ARCHIVAGE_S3_ENDPOINT_URL": self.url, "ARCHIVAGE_S3_ADDRESSING_STYLE": "path"}


def _boto_credentials(env: Mapping[str, str]) -> dict[str, str]:
    return {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
            "region_name": env["AWS_DEFAULT_REGION"]}


@contextmanager
def s3_server(workdir: Path) -> Iterator[ObjectStore]:
    """moto in server mode (``python -m moto.server``): a real HTTP S3 endpoint, in memory, single process.

    Not a production store: its figures say what our side costs per object, not what MinIO would."""
    port = free_port()
    log_path = workdir / "moto.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([str(REPO / ".venv" / "bin" / "python"), "-m", "moto.server", "-H", LOCALHOST,
                                    "-p", str(port)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=dcmtk_env())
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with suppress(OSError), socket.create_connection((LOCALHOST, port), timeout=1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto did not start:\n{log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        yield ObjectStore(f"http://{LOCALHOST}:{port}", process)
    finally:
        stop_process(process)


# --- sending -------------------------------------------------------------------------------


def split(files: Sequence[Path], parts: int) -> list[list[Path]]:
    """Split ``files`` round-robin into ``parts`` non-empty lists."""
    return [chunk for chunk in (list(files[i::parts]) for i in range(parts)) if chunk]


def storescu_argv(server: Server, command_file: Path) -> list[str]:
    # storescu's -pdu only sets what *it* receives; what it sends is bounded by the server's
    # maximum PDU, so each server is measured with its own default.
    return [
        dcmtk_tool("storescu"),
        "-aet", BENCH_AE,
        "-aec", server.ae_title,
        "-to", "10",
        "-ta", "30",
        LOCALHOST, str(server.port),
        f"@{command_file}",
    ]  # fmt: skip


def store(
    server: Server | Sequence[Server], files: Sequence[Path], *, associations: int, workdir: Path, timeout_s: float,
) -> float:
    """Send ``files`` with ``associations`` concurrent storescu processes, one association each;
    given several servers (the nodes of a cluster), association N goes to server N modulo their number.

    Returns the seconds from the first storescu start to the last exit. Raises if any storescu
    fails (storescu halts and exits non-zero on an unsuccessful C-STORE).
    """
    servers = [server] if isinstance(server, Server) else list(server)
    argvs, targets = [], []
    for index, chunk in enumerate(split(files, associations)):
        # A command file keeps large sets under the argv limit (DCMTK expands @file arguments).
        command_file = workdir / f"storescu-{index}.args"
        command_file.write_text("".join(f'"{path}"\n' for path in chunk))
        targets.append(servers[index % len(servers)])
        argvs.append(storescu_argv(targets[-1], command_file))
    with ExitStack() as stack:
        started = time.perf_counter()
        processes = [stack.enter_context(_storescu(argv, workdir, index)) for index, argv in enumerate(argvs)]
        deadline = started + timeout_s
        for process, target in zip(processes, targets):
            _wait(process, deadline, target)
        elapsed_s = time.perf_counter() - started
    return elapsed_s


@dataclass(frozen=True)
class _Storescu:
    process: subprocess.Popen[bytes]
    log_path: Path


@contextmanager
def _storescu(argv: list[str], workdir: Path, index: int) -> Iterator[_Storescu]:
    log_path = workdir / f"storescu-{index}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            env=dcmtk_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield _Storescu(process, log_path)
        finally:
            stop_process(process)


def _wait(storescu: _Storescu, deadline: float, server: Server) -> None:
    try:
        status = storescu.process.wait(timeout=max(0.0, deadline - time.perf_counter()))
    except subprocess.TimeoutExpired:
        raise server.fail(f"storescu did not finish in time (log: {storescu.log_path})") from None
    if status != 0:
        output = storescu.log_path.read_text(errors="replace")[-2000:]
        raise server.fail(f"storescu exited with status {status}:\n{output}")


# --- synthetic data ------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSetSpec:
    """What to generate: ``count`` single-frame 16-bit MONOCHROME2 images of one series."""

    label: str
    count: int
    rows: int
    columns: int
    sop_class_uid: UID = CTImageStorage
    seed: int = 0


@dataclass(frozen=True)
class ImageSet:
    spec: ImageSetSpec
    files: tuple[Path, ...]

    @property
    def total_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.files)


def generate_image_set(spec: ImageSetSpec, directory: Path) -> ImageSet:
    """Write ``spec.count`` Part 10 files (explicit VR little endian) of one study/series."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    series = _SeriesIds(study_uid=generate_uid(), series_uid=generate_uid(), frame_uid=generate_uid())
    phantom = _phantom(spec.rows, spec.columns)
    files = []
    for index in range(spec.count):
        noise = rng.integers(0, 64, size=phantom.shape, dtype=np.uint16)
        dataset = _image(spec, series, index, phantom + noise)
        path = directory / f"{index:06d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        files.append(path)
    return ImageSet(spec, tuple(files))


@dataclass(frozen=True)
class _SeriesIds:
    study_uid: str
    series_uid: str
    frame_uid: str


def _phantom(rows: int, columns: int) -> np.ndarray:
    """A disc of soft tissue (~40 HU) in air: CT-like structure under the noise."""
    y, x = np.ogrid[:rows, :columns]
    inside = (y - rows / 2) ** 2 + (x - columns / 2) ** 2 < (0.4 * min(rows, columns)) ** 2
    return np.where(inside, 1064, 24).astype(np.uint16)  # stored values; intercept -1024


def _image(spec: ImageSetSpec, ids: _SeriesIds, index: int, pixels: np.ndarray) -> Dataset:
    sop_instance_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = spec.sop_class_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds.SOPClassUID = spec.sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260105"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "093000"
    ds.AccessionNumber = f"BENCH{spec.seed:04d}"
    ds.Modality = "CT"
    ds.Manufacturer = "Archivage bench"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"Bench {spec.label}"
    ds.SeriesDescription = f"{spec.rows}x{spec.columns} synthetic"
    ds.PatientName = f"BENCH^SET{spec.seed}"
    ds.PatientID = f"BENCH-{spec.seed:04d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = ids.study_uid
    ds.SeriesInstanceUID = ids.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.FrameOfReferenceUID = ids.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [-250.0, -250.0, -1.25 * index]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SliceLocation = -1.25 * index
    ds.SliceThickness = 1.25
    ds.PixelSpacing = [500.0 / spec.rows, 500.0 / spec.columns]
    ds.KVP = 120
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    return ds
