"""Archive settings: defaults, ``instance/config.py`` and ``ARCHIVAGE_*`` environment variables."""

from __future__ import annotations

import json
import os
import runpy
import secrets
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

ENV_PREFIX = "ARCHIVAGE_"


def instance_path_from_env(default: Path) -> Path:
    """The instance folder: ``ARCHIVAGE_INSTANCE_PATH`` or *default*, made absolute."""
    return Path(os.environ.get(ENV_PREFIX + "INSTANCE_PATH") or default).resolve()


@dataclass(frozen=True)
class Settings:
    """What the archive needs to run; the back-office builds it from its Flask config."""

    instance_path: Path
    DATABASE_URL: str = ""
    STORAGE_URL: str = ""
    # The intermediate-archive tier (CNIL: 5 years after the last visit); another folder or volume,
    # or another bucket/prefix of the object store.
    ARCHIVE_TIER_STORAGE_URL: str = ""
    # S3-compatible storage (STORAGE_URL = s3://bucket/prefix): the endpoint of a MinIO or Ceph RGW
    # (empty: AWS), its region, "path" or "virtual" bucket addressing ("auto": boto3 decides), the
    # storage class of archive-tier objects (empty: the bucket's default). Credentials: from the
    # environment only (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE), never these files.
    S3_ENDPOINT_URL: str = ""
    S3_REGION: str = ""
    S3_ADDRESSING_STYLE: str = "auto"
    ARCHIVE_TIER_S3_STORAGE_CLASS: str = ""
    # Seconds between two attempts to upload journal entries while the object store is unreachable.
    S3_RETRY_SECONDS: float = 10.0
    # The local ingest journal of an s3:// store (relative: under the instance folder); a file://
    # store keeps its journal in its own folder (incoming/).
    STORAGE_JOURNAL_PATH: str = "journal"
    DICOM_AE_TITLE: str = "ARCHIVAGE"
    DICOM_HOST: str = "0.0.0.0"
    DICOM_PORT: int = 11112
    # Storage from AEs not registered as peers: refused (0x0124) unless opened; each refusal is
    # logged with the command that registers the AE (docs/configuration.md says why).
    DICOM_STORE_FROM_UNKNOWN_AES: bool = False
    # Query/retrieve from AEs not registered as peers: refused unless opened.
    DICOM_QR_FROM_UNKNOWN_AES: bool = False
    # Accept private and unknown SOP classes as storage (pynetdicom's unrestricted storage).
    DICOM_ACCEPT_UNKNOWN_SOP_CLASSES: bool = False
    # "keep_first": a different object under a known SOP Instance UID is refused with a warning;
    # "overwrite": it replaces the stored one.
    DICOM_DUPLICATE_POLICY: str = "keep_first"
    # Below this many free bytes on the storage volume (the journal's, for an s3:// store), C-STORE
    # answers 0xA700.
    STORAGE_MIN_FREE_BYTES: int = 1024**3
    # Associations at once, in all and from one calling address; more are refused with an
    # A-ASSOCIATE-RJ (transient, local limit exceeded). Connections still silent do not count.
    DICOM_MAX_ASSOCIATIONS: int = 40
    DICOM_MAX_ASSOCIATIONS_PER_ADDRESS: int = 10
    # Seconds a new connection may stay silent before its A-ASSOCIATE-RQ; then it is closed.
    DICOM_ACSE_TIMEOUT: float = 10
    # Seconds an association may stay idle (nothing received, no operation running) before it is
    # aborted; also how long DIMSE exchanges and outgoing associations wait for a peer.
    DICOM_NETWORK_TIMEOUT: int = 30
    # Largest dataset a C-STORE may carry (bytes; 0: no limit); larger ones answer 0xA700.
    DICOM_MAX_OBJECT_BYTES: int = 4 * 1024**3
    DICOM_MAX_FIND_RESULTS: int = 10000
    # C-FIND pending answers sent one PDU each, the command set encoded once per query
    # (archive_core/net/encoding.py PendingAnswers); false: pynetdicom's own path for every answer.
    DICOM_FAST_FIND_ANSWERS: bool = True
    # pynetdicom's DUL polls the socket and sleeps this long when idle (its default, 1 ms,
    # halves the message rate of one association).
    DICOM_DUL_LOOP_DELAY: float = 0.0
    # The largest PDU we accept, what we advertise to peers that send to us (0: unlimited). Bounded,
    # so that what an association holds in memory does not grow with the size of the objects.
    DICOM_MAX_PDU: int = 1024 * 1024
    # DICOM TLS: a second listening port (0: none), our certificate and key (PEM, also presented on
    # our associations to peers registered --tls), the CA that signs peers' certificates.
    DICOM_TLS_PORT: int = 0
    DICOM_TLS_CERT: str = ""
    DICOM_TLS_KEY: str = ""
    DICOM_TLS_CA: str = ""
    DICOM_TLS_REQUIRE_CLIENT_CERT: bool = True
    # SCP processes sharing the DICOM port(s): 1 serves everything in the archive process; N > 1
    # runs N worker processes (associations spread over the cores) and one indexer in the parent
    # (archive_core/net/workers.py).
    DICOM_WORKERS: int = 1
    INDEX_BATCH_SIZE: int = 200
    # The key that signs audit checkpoints and the log they are appended to: keep them outside the
    # database (ideally another volume); relative paths are under the instance folder.
    AUDIT_SIGNING_KEY_FILE: str = "audit-signing.key"
    AUDIT_CHECKPOINT_LOG: str = "audit-checkpoints.log"
    AUDIT_CHECKPOINT_MINUTES: int = 10
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def database_url(self) -> str:
        return self.DATABASE_URL or f"sqlite:///{self.instance_path / 'archivage.sqlite3'}"

    @property
    def storage_url(self) -> str:
        return self.STORAGE_URL or f"file://{self.instance_path / 'storage'}"

    @property
    def storage_journal_path(self) -> Path:
        return self.instance_path / Path(self.STORAGE_JOURNAL_PATH).expanduser()

    @property
    def archive_tier_storage_url(self) -> str:
        return self.ARCHIVE_TIER_STORAGE_URL or f"file://{self.instance_path / 'storage-archive'}"

    @property
    def audit_signing_key_file(self) -> Path:
        return self.instance_path / Path(self.AUDIT_SIGNING_KEY_FILE).expanduser()

    @property
    def audit_checkpoint_log(self) -> Path:
        return self.instance_path / Path(self.AUDIT_CHECKPOINT_LOG).expanduser()

    @classmethod
    def from_mapping(cls, instance_path: Path, values: Mapping[str, Any]) -> "Settings":
        known = {f.name for f in fields(cls)} - {"instance_path", "extra"}
        kwargs = {k: values[k] for k in known if k in values}
        extra = {k: v for k, v in values.items() if k not in known and k.isupper()}
        return cls(instance_path=Path(instance_path), extra=extra, **kwargs)

    @classmethod
    def load(cls, instance_path: Path | None = None) -> "Settings":
        """Read settings the way the back-office does, without Flask (for ``python -m archive_core``)."""
        path = instance_path or instance_path_from_env(Path.cwd() / "instance")
        return cls.from_mapping(path, read_settings(path))


def read_settings(instance_path: Path) -> dict[str, Any]:
    """``instance/config.py`` overridden by ``ARCHIVAGE_*`` variables (values parsed as JSON when they parse)."""
    values: dict[str, Any] = {}
    config_file = instance_path / "config.py"
    if config_file.exists():
        values.update({k: v for k, v in runpy.run_path(str(config_file)).items() if k.isupper()})
    for key, raw in os.environ.items():
        if key.startswith(ENV_PREFIX) and key != ENV_PREFIX + "INSTANCE_PATH":
            try:
                values[key[len(ENV_PREFIX):]] = json.loads(raw)
            except ValueError:
                values[key[len(ENV_PREFIX):]] = raw
    return values


def private_files() -> None:
    """From now on this process creates files 0600 and folders 0700 (the instance is the service user's).

    Called once when each process role starts (web, archive, scheduler, PDF worker): patient data, the
    database and the render cache are never readable by other accounts of the machine.
    """
    os.umask(0o077)


def ensure_instance(instance_path: Path) -> None:
    """Create the instance folder (0700) and, on first run, a ``config.py`` holding a generated secret key.

    An instance made before files were private is tightened: the folder and the files directly in it
    (database, config) lose every group and other permission.
    """
    instance_path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path in (instance_path, *instance_path.iterdir()):
        try:
            mode = path.stat().st_mode & 0o777
            if mode & 0o077 and path.owner() == _current_user():
                path.chmod(mode & 0o700)
        except (OSError, KeyError):
            pass  # not ours, or gone: nothing to tighten
    config_file = instance_path / "config.py"
    if not config_file.exists():
        fd = os.open(config_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(
                "# Archivage instance settings (generated on first run; see docs/configuration.md).\n"
                f"SECRET_KEY = {secrets.token_hex(32)!r}\n"
            )


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name
