"""The archive as one object: settings, database, store and ingest wired together."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from archive_core.config import Settings
from archive_core.db import make_engine, session_factory
from archive_core.errors import StorageRefused, StorageUnavailable
from archive_core.index.ingest import Ingestor
from archive_core.storage import BlobStore, open_stores

log = logging.getLogger(__name__)


@dataclass
class Archive:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: BlobStore
    ingestor: Ingestor
    archive_store: BlobStore  # the intermediate-archive tier

    @classmethod
    def open(cls, settings: Settings) -> "Archive":
        """Wire the archive; raises :class:`StorageRefused` when an object store rejects our credentials
        or lacks its bucket. An unreachable one is only logged: the journal takes objects until it is back."""
        engine = make_engine(settings.database_url)
        sessions = session_factory(engine)
        store, archive_store = open_stores(settings)
        for s in (store, archive_store):
            try:
                s.check_access()
            except StorageRefused:
                engine.dispose()
                raise
            except StorageUnavailable as exc:
                log.warning("%s; received objects wait in the journal until it answers", exc)
        ingestor = Ingestor(
            store,
            sessions,
            duplicate_policy=settings.DICOM_DUPLICATE_POLICY,
            batch_size=settings.INDEX_BATCH_SIZE,
            max_object_bytes=settings.DICOM_MAX_OBJECT_BYTES,
            retry_seconds=settings.S3_RETRY_SECONDS,
        )
        return cls(settings, engine, sessions, store, ingestor, archive_store)

    def store_for(self, tier: str) -> BlobStore:
        """The store that holds files of *tier* (``Instance.tier``): reads go through here."""
        return self.archive_store if tier == "archive" else self.store

    def close(self) -> None:
        self.ingestor.stop()
        self.engine.dispose()
