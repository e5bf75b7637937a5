"""Shared test helpers: free ports, external tools, datasets made on the fly."""

from __future__ import annotations

import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI") == "true"
# ``pytestmark = STORAGE_BACKENDS``: every test of the module that stores objects runs on a local folder
# and on an S3-compatible server (moto, started by the tests; tests/conftest.py ``storage_overrides``).
STORAGE_BACKENDS = pytest.mark.storage_backends
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_tool(name: str) -> str:
    """The path of an external program; a missing one fails in CI and skips elsewhere."""
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is required in CI (install it in .ci/run)")
        pytest.skip(f"{name} not installed")
    return path


def tool_env() -> dict[str, str]:
    """Environment for DCMTK tools: Nagle off (40 ms per exchange on loopback otherwise)."""
    return {**os.environ, "TCP_NODELAY": "1"}


def qr_identifier(level: str, **keys) -> Dataset:
    """A query/retrieve identifier; wildcard values are not valid CS/DA/UI values, which pydicom warns about."""
    import warnings

    ds = Dataset()
    ds.QueryRetrieveLevel = level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
    return ds


def dcmtk(tool: str, *args: str, timeout: float = 120):
    """Run a DCMTK tool (Nagle off) and return its CompletedProcess (text output)."""
    import subprocess

    return subprocess.run([require_tool(tool), *args], env=tool_env(), capture_output=True, text=True,
                          timeout=timeout)


def move_to_storescp(archive_port: int, study_uid: str, dest_port: int, received: Path) -> dict[str, bytes]:
    """C-MOVE (DCMTK movescu, as WORKSTATION) of *study_uid* from the archive on *archive_port* to a DCMTK
    storescp (AE DEST on *dest_port*, started here, ``+B``: files as they came over the wire, in the new
    folder *received*): SOP Instance UID -> dataset bytes of what arrived. DEST must be a registered peer."""
    import subprocess
    import time

    from pydicom import dcmread

    from archive_core.part10 import dataset_offset

    received.mkdir()
    storescp = subprocess.Popen([require_tool("storescp"), "-aet", "DEST", "+B", "-od", str(received),
                                 str(dest_port)], env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while dcmtk("echoscu", "-aec", "DEST", "127.0.0.1", str(dest_port), timeout=10).returncode != 0:
            assert time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.1)  # polling a port that is not open yet: there is no event to wait on
        move = dcmtk("movescu", "-S", "-aet", "WORKSTATION", "-aec", "ARCHIVAGE", "-aem", "DEST",
                     "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
                     "127.0.0.1", str(archive_port))
        assert move.returncode == 0, move.stdout + move.stderr
    finally:
        storescp.terminate()
        storescp.wait(30)
    got = {}
    for path in received.iterdir():
        data = path.read_bytes()
        got[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = data[dataset_offset(data):]
    return got


def worklist_find(port: int, identifier: Dataset, aet: str) -> tuple[list[int], list[Dataset]]:
    """A Modality Worklist C-FIND from AE *aet* (pynetdicom, as a modality would): every status the
    archive answered, and the identifiers of the pending answers."""
    from pynetdicom.sop_class import ModalityWorklistInformationFind

    ae = AE(ae_title=aet)
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVAGE")
    assert assoc.is_established
    statuses, answers = [], []
    try:
        for status, ds in assoc.send_c_find(identifier, ModalityWorklistInformationFind):
            statuses.append(int(status.Status))
            if ds is not None:
                answers.append(ds)
    finally:
        assoc.release()
    return statuses, answers


@contextmanager
def answering_store_scp(ae_title: str, answers: dict[str, tuple[int, str]]):
    """A workstation (pynetdicom storage SCP) that answers each SOP Instance UID in *answers* with its
    (status, Error Comment) and stores the others (0x0000); yields its port."""
    from pynetdicom import AllStoragePresentationContexts, evt

    def on_store(event):
        status, comment = answers.get(str(event.request.AffectedSOPInstanceUID), (0x0000, ""))
        answer = Dataset()
        answer.Status = status
        if comment:
            answer.ErrorComment = comment
        return answer

    ae = AE(ae_title=ae_title)
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield port
    finally:
        server.shutdown()


def store_until_refused(assoc, datasets, sent: dict[str, bytes], on_success) -> None:
    """C-STORE *datasets* on *assoc*, noting each one's bytes in *sent*, until the association dies or
    an answer has no status; *on_success(uid)* after each 0x0000 (a test kills the archive from there)."""
    for ds in datasets:
        sent[ds.SOPInstanceUID] = encoded_dataset(ds)
        try:
            status = assoc.send_c_store(ds)
        except (RuntimeError, OSError):
            break
        if not assoc.is_established or "Status" not in status:
            break
        if status.Status == 0x0000:
            on_success(ds.SOPInstanceUID)


def encoded_dataset(ds: Dataset) -> bytes:
    """*ds* encoded as explicit VR little endian, without file meta (what goes over the wire)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


def dataset_after_meta(stored: bytes) -> bytes:
    """The dataset of a Part 10 file's bytes: after the preamble, "DICM" and the file meta group (read
    from its group length here, not with the archive's own parser)."""
    group_length = int.from_bytes(stored[140:144], "little")
    return stored[144 + group_length:]


_migrated_templates: dict[str, str] = {}


def migrate(database_url: str) -> None:
    """``db upgrade`` (all heads) on a new, empty database, as a fixture needs it before the test.

    The first call of the session (per engine and server) runs the migrations on a template; each later
    one copies that template: a SQLite file copied into place, a PostgreSQL database re-created from the
    template database (``CREATE DATABASE ... TEMPLATE``). Same tables, triggers and seeds, without the
    0.5-2 s the 25 migrations take each time. The migrations' own tests (an upgrade from an older
    revision, the models' drift) call ``backoffice.migrate.upgrade`` themselves."""
    from sqlalchemy.engine import make_url

    from backoffice.migrate import upgrade

    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        target = Path(url.database)
        if target.exists():  # not new: run the real thing
            upgrade(database_url)
            return
        template = _migrated_templates.get("sqlite")
        if template is None:
            import atexit
            import tempfile

            folder = tempfile.mkdtemp(prefix="archivage-template-")
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            template = str(Path(folder) / "migrated.sqlite3")
            upgrade(f"sqlite:///{template}")
            # The migrations' engine is disposed: its last connection checkpointed and removed the WAL.
            assert not Path(template + "-wal").exists(), "template still has a write-ahead log"
            _migrated_templates["sqlite"] = template
        shutil.copyfile(template, target)
        return
    _copy_postgres_template(url)


def _copy_postgres_template(url) -> None:
    """Re-create *url*'s database from a migrated template database on the same server."""
    import psycopg

    from backoffice.migrate import upgrade

    server = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    key = url.set(database="postgres").render_as_string(hide_password=False)
    name, template = url.database, "archivage_migrated_template"
    with psycopg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False)) as conn:
        tables = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
        if tables.fetchone()[0]:  # not new: run the real thing
            upgrade(url.render_as_string(hide_password=False))
            return
    with psycopg.connect(server, autocommit=True) as conn:
        if _migrated_templates.get(key) is None:
            conn.execute(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{template}"')
            upgrade(url.set(database=template).render_as_string(hide_password=False))
            _migrated_templates[key] = template
        # WITH (FORCE): ends the connections a previous test's children may have left (PostgreSQL 13+).
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')


def migration_drift(tmp_path: Path, *names: str) -> list:
    """What differs between the tables ``db upgrade`` (all heads) creates on a new SQLite database and
    the models on the one Base (every back-office model imported), kept to the differences whose
    description names one of *names* (table names or their prefixes): [] when they match."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import backoffice.models  # noqa: F401  (every model on the one Base)
    from archive_core.api import Base
    from archive_core.db import make_engine
    from backoffice.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'm.sqlite3'}"
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    return [d for d in diff if any(name in repr(d) for name in names)]


def peak_rss(pid: int) -> int:
    """VmHWM of *pid* in bytes (the highest resident set size it reached)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc")


def pid_started_with_port(port: int) -> int:
    """The process whose command line has ``--port PORT`` (a web process a test started)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--port" in argv and argv[argv.index(b"--port") + 1:][:1] == [str(port).encode()]:
                return int(entry.name)
    raise AssertionError(f"no process started with --port {port}")


def associate_ct_modality(port: int, ae_title: str = "MODALITY"):
    """An established association of a CT modality (Verification, CT Image Storage) with our SCP."""
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVAGE")
    assert assoc.is_established
    return assoc


def make_ct(
    *,
    patient_id: str = "PAT001",
    patient_name: str = "Dupont^Jean",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    study_date: str = "20240115",
    modality: str = "CT",
    rows: int = 16,
    charset: str | None = None,
    **extra,
) -> Dataset:
    """A small, valid CT image dataset with file meta (explicit VR little endian)."""
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.StudyDate = study_date
    ds.StudyTime = "101532.25"
    ds.AccessionNumber = "ACC1"
    ds.StudyID = "1"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(256)) * (rows * rows * 2 // 256) + b"\x00" * (rows * rows * 2 % 256)
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


@contextmanager
def archive_server(instance_path: Path, **overrides):
    """A migrated archive whose settings carry *overrides*, and its DICOM server on a free port."""
    from archive_core.archive import Archive
    from archive_core.config import Settings
    from archive_core.net.server import start_server

    # Storage from unknown AEs opened as in the ``settings`` fixture (tests/conftest.py).
    settings = Settings(instance_path=instance_path,
                        **{"STORAGE_MIN_FREE_BYTES": 0, "DICOM_STORE_FROM_UNKNOWN_AES": True, **overrides})
    migrate(settings.database_url)
    archive = Archive.open(settings)
    running = start_server(archive, host="127.0.0.1", port=0)
    try:
        yield archive, running
    finally:
        running.stop()
        archive.close()
