"""Sending studies to a registered DICOM peer (C-STORE over one association): the workstation push
of the radiology pages and retrieve-to-peer, which is audited per study."""

from __future__ import annotations

from archive_core import audit as _audit
from archive_core.api.types import RetrieveResult
from archive_core.archive import Archive
from archive_core.db import write_session
from archive_core.errors import NotFound
from archive_core.index.query import STUDY_ROOT, Query, instances_to_retrieve


def _peer_and_instances(archive: Archive, ae_title: str, study_uids: list[str]):
    from archive_core.peers import get_peer

    with archive.sessions() as s:
        peer = get_peer(s, ae_title)
        query = Query(root=STUDY_ROOT, level="STUDY", conditions={"StudyInstanceUID": list(study_uids)})
        instances = instances_to_retrieve(s, query) if study_uids else []
    return peer, instances


def push(archive: Archive, peer, instances, *, progress=None, cancelled=lambda: False):
    """Send *instances* to *peer* (:class:`archive_core.net.push.SendResult`); TLS as the peer is registered."""
    from archive_core.net import tls
    from archive_core.net.push import all_failed, send_instances

    settings = archive.settings
    try:
        tls_args = tls.tls_args(settings, peer)
    except tls.TLSConfigError as exc:  # nothing goes out in clear to a --tls peer
        return all_failed(instances, str(exc))
    return send_instances(
        lambda inst: archive.store_for(inst.tier).open(inst.storage_key), instances,
        host=peer.host, port=peer.port, called_ae=peer.ae_title, calling_ae=settings.DICOM_AE_TITLE,
        loop_delay=settings.DICOM_DUL_LOOP_DELAY, timeout=settings.DICOM_NETWORK_TIMEOUT,
        progress=progress, cancelled=cancelled, tls_args=tls_args,
    )


def send_studies(archive: Archive, peer_ae_title: str, study_uids: list[str], *, progress=None,
                 cancelled=lambda: False):
    """See :meth:`archive_core.api.ArchiveFacade.send_studies`."""
    peer, instances = _peer_and_instances(archive, peer_ae_title, study_uids)
    return push(archive, peer, instances, progress=progress, cancelled=cancelled)


def retrieve_to_peer(archive: Archive, study_uids: list[str], ae_title: str, *, actor: str,
                     actor_kind: str) -> RetrieveResult:
    """See :meth:`archive_core.api.ArchiveFacade.retrieve_to_peer` (owns its transactions)."""
    peer, instances = _peer_and_instances(archive, ae_title, study_uids)
    if not instances:
        raise NotFound("none of these studies is in the archive")
    result = push(archive, peer, instances)
    with write_session(archive.sessions) as s:
        for uid in sorted({i.study_uid for i in instances}):
            detail = {"service": "retrieve_to_peer", "destination": peer.ae_title,
                      "completed": result.completed, "failed": result.failed}
            _audit.record(s, "study.retrieved", actor=actor, actor_kind=actor_kind, study_uid=uid, detail=detail)
    return RetrieveResult(result.completed, result.failed, result.warning, tuple(result.failed_uids))
