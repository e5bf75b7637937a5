"""The archive as one object: settings, database, store and ingest wired together."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from archive_core.config import Settings
from archive_core.db import make_engine, session_factory
from archive_core.index.ingest import Ingestor
from archive_core.storage import open_store
from archive_core.storage.filesystem import FilesystemStore

log = logging.getLogger(__name__)


@dataclass
class Archive:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: FilesystemStore
    ingestor: Ingestor
    archive_store: FilesystemStore  # the intermediate-archive tier

    @classmethod
    def open(cls, settings: Settings) -> "Archive":
        engine = make_engine(settings.database_url)
        sessions = session_factory(engine)
        store = open_store(settings.storage_url, min_free_bytes=settings.STORAGE_MIN_FREE_BYTES)
        assert isinstance(store, FilesystemStore)
        ingestor = Ingestor(
            store,
            sessions,
            duplicate_policy=settings.DICOM_DUPLICATE_POLICY,
            batch_size=settings.INDEX_BATCH_SIZE,
            max_object_bytes=settings.DICOM_MAX_OBJECT_BYTES,
        )
        archive_store = open_store(settings.archive_tier_storage_url)
        assert isinstance(archive_store, FilesystemStore)
        return cls(settings, engine, sessions, store, ingestor, archive_store)

    def store_for(self, tier: str) -> FilesystemStore:
        """The store that holds files of *tier* (``Instance.tier``): reads go through here."""
        return self.archive_store if tier == "archive" else self.store

    def close(self) -> None:
        self.ingestor.stop()
        self.engine.dispose()
