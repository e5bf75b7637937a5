"""DICOMweb (PS3.18) for the web edge: the facade's QIDO-RS, WADO-RS and STOW-RS calls; the protocol
work itself is in :mod:`archive_core.dicomweb`."""

from __future__ import annotations

import io
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO, Callable

from sqlalchemy.orm import Session

from archive_core import dicomweb
from archive_core import stow as _stow
from archive_core.archive import Archive
from archive_core.errors import BlobMissing, InvalidQuery, NotFound
from archive_core.index.query import find, instances_to_retrieve

_INDEXER_START = threading.Lock()


def qido_search(session: Session, resource: str, params, *, base_url: str, study_uid: str | None,
                series_uid: str | None) -> tuple[list[dict[str, Any]], list[str]]:
    """See :meth:`archive_core.api.ArchiveFacade.qido_search`."""
    request = dicomweb.parse_qido(resource, params, study_uid=study_uid, series_uid=series_uid)
    rows = find(session, request.query, limit=request.limit, offset=request.offset)
    return [dicomweb.qido_answer(request, row, base_url) for row in rows], request.ignored


def stored_instances(session: Session, study_uid: str, series_uid: str | None, sop_instance_uid: str | None) -> list:
    """See :meth:`archive_core.api.ArchiveFacade.stored_instances`."""
    query = dicomweb.retrieve_query(study_uid, series_uid, sop_instance_uid)
    found = instances_to_retrieve(session, query)
    if not found:
        raise NotFound("no such study, series or instance")
    return found


def open_stored(archive: Archive, stored) -> "io.BufferedIOBase":
    """See :meth:`archive_core.api.ArchiveFacade.open_stored`."""
    store = archive.store_for(stored.tier)
    try:  # no exists() first: one look-up (an S3 HEAD, a stat) less per file, and no race between the two
        return store.open(stored.storage_key)
    except (FileNotFoundError, IsADirectoryError):
        raise BlobMissing(f"file of {stored.sop_instance_uid} missing in the {stored.tier} tier") from None


def local_file_sizes(archive: Archive, found: list) -> list[int] | None:
    """See :meth:`archive_core.api.ArchiveFacade.local_file_sizes`."""
    sizes = []
    for stored in found:
        store = archive.store_for(stored.tier)
        if not store.local_files:
            return None
        blob = store.stat(stored.storage_key)
        if blob is None:
            raise BlobMissing(f"file of {stored.sop_instance_uid} missing in the {stored.tier} tier")
        sizes.append(blob.size)
    return sizes


def instance_metadata(archive: Archive, found: list, *, base_url: str) -> list[dict[str, Any]]:
    """See :meth:`archive_core.api.ArchiveFacade.instance_metadata`."""
    answers = []
    for stored in found:
        with open_stored(archive, stored) as f:
            answers.append(dicomweb.metadata(f, stored, base_url))
    return answers


def bulk_value(archive: Archive, stored, tag: str) -> bytes:
    with open_stored(archive, stored) as f:
        return dicomweb.bulk_value(f, tag)


def instance_frames(archive: Archive, stored, frame_list: str, *, syntaxes: frozenset[str]) -> tuple[list[bytes], str]:
    """See :meth:`archive_core.api.ArchiveFacade.instance_frames`."""
    numbers = dicomweb.parse_frame_list(frame_list)
    with open_stored(archive, stored) as f:
        return dicomweb.frames(f, numbers, syntaxes=syntaxes)


def render_frame(render_instance: Callable[[str, Any], bytes], sop_instance_uid: str, frame: int, *,
                 window: tuple[float, float] | None, viewport: int | None, quality: int, fmt: str) -> bytes:
    """See :meth:`archive_core.api.ArchiveFacade.render_frame`; *render_instance* renders with RenderParams."""
    from archive_core.render import MAX_SIZE, RenderError, RenderParams

    try:
        params = RenderParams(frame=frame - 1, window_center=window[0] if window else None,
                              window_width=window[1] if window else None,
                              size=min(viewport or MAX_SIZE, MAX_SIZE), fmt=fmt, quality=quality)
        return render_instance(sop_instance_uid, params)
    except RenderError as exc:
        raise InvalidQuery(str(exc)) from None


def stow(archive: Archive, stream: BinaryIO, content_type: str, *, study_uid: str | None, actor: str,
         base_url: str) -> tuple[int, dict[str, Any], list[str]]:
    """See :meth:`archive_core.api.ArchiveFacade.stow`."""
    spool = archive.settings.instance_path / "spool"
    spool.mkdir(mode=0o700, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stow-", dir=spool) as directory:
        parts = _stow.spool_multipart(stream, content_type, Path(directory))
        with _INDEXER_START:
            if not archive.ingestor.running:
                archive.ingestor.start(replay=False)  # as ``archive import``: the journal is the server's
        result = _stow.stow(archive, parts, study_uid=study_uid, actor=actor)
    status = 200 if not result.failed else 202 if result.stored else 409
    return status, _stow.stow_response(result, base_url, study_uid), [f[3] for f in result.failed]


def converted_instance(archive: Archive, stored, target_ts: str) -> bytes:
    """See :meth:`archive_core.api.ArchiveFacade.converted_instance`."""
    from pydicom import dcmwrite

    from archive_core.net.conversion import convert

    with open_stored(archive, stored) as f:
        ds = convert(f.read(), stored.transfer_syntax_uid, target_ts)
    ds.file_meta.MediaStorageSOPClassUID = stored.sop_class_uid
    ds.file_meta.MediaStorageSOPInstanceUID = stored.sop_instance_uid
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()
