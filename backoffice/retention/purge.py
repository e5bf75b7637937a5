"""The purge: an approved batch executed as one job that owns its transactions.

:func:`run_purge` is what the page, the API, the scheduler (an interrupted execution) and
``flask retention purge`` call alike: it opens its sessions, commits the tombstones before any file
is deleted, and commits (or rolls back) each step itself; callers release their own request
transaction first and never commit for it.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Callable

from sqlalchemy.orm import Session

from archive_core.api import ArchiveFacade
from backoffice.retention.batches import changed_facts, check_executor, get_batch, is_scheduler, item_facts
from backoffice.retention.errors import RetentionError
from backoffice.retention.models import PurgeBatch

CertificateRenderer = Callable[[PurgeBatch], bytes]


def run_purge(facade: ArchiveFacade, batch_id: int, *, certificates: Path, render: CertificateRenderer,
              actor: str, today: date, confirmed: bool = True) -> PurgeBatch:
    """Execute an approved batch: re-check, tombstones + audit in one transaction, then files, then the certificate.

    Refuses (``not_approved``) anything not approved, an approved batch whose destruction the person
    did not confirm (*confirmed*: the page's checkbox; ``confirmation_required``), and an executor who
    requested the batch (or approved the scheduler's). Every item is checked again against today's owner, holds, retention
    and exams: if anything differs from what was approved, nothing is destroyed, the batch goes back
    to ``proposed`` (``purge.returned``, committed) and ``changed_since_approval`` is raised.
    Rerunnable after a crash at any point: a tombstoned batch resumes at the file deletion, which
    only ever deletes files of tombstoned rows.
    """
    with facade.new_session(write=True) as s:
        batch = get_batch(s, batch_id, lock=True)
        if batch.status == "executed":
            return batch
        if batch.status not in ("approved", "tombstoned"):
            raise RetentionError("not_approved")
        if batch.status == "approved":
            if not confirmed:
                raise RetentionError("confirmation_required")
            check_executor(batch, actor)
            changes = {item.id: changed_facts(json.loads(item.approved_facts) if item.approved_facts else None,
                                              item_facts(s, facade, item, today))
                       for item in batch.items}
            changed = sorted({k for keys in changes.values() for k in keys})
            if changed:
                _send_back(s, facade, batch, changes, actor=actor)
                s.commit()
                raise RetentionError("changed_since_approval", batch=batch_id, what=tuple(changed))
            _tombstone(s, facade, batch, actor=actor)
        uids = [u for item in batch.items for st in json.loads(item.manifest) for u in st["sop_instance_uids"]]
        s.commit()
    facade.delete_tombstoned_files(uids)  # a crash here: the next run starts again from this line
    with facade.new_session(write=True) as s:
        batch = get_batch(s, batch_id, lock=True)
        if batch.status == "executed":
            return batch
        pdf = render(batch)
        certificates.mkdir(parents=True, exist_ok=True)
        name = f"certificat-destruction-{batch.id:06d}.pdf"
        tmp = certificates / (name + ".tmp")
        tmp.write_bytes(pdf)
        tmp.replace(certificates / name)
        batch.certificate_name = name
        batch.certificate_sha256 = hashlib.sha256(pdf).hexdigest()
        batch.status, batch.executed_at = "executed", datetime.now(timezone.utc)
        facade.audit(s, "purge.executed", actor=actor, actor_kind="system" if is_scheduler(actor) else "user",
                     detail={"batch_id": batch.id, "instances": batch.instances, "bytes": batch.bytes_destroyed,
                             "certificate_sha256": batch.certificate_sha256})
        s.commit()
        return batch


def _send_back(s: Session, facade: ArchiveFacade, batch: PurgeBatch, changes: dict[int, list[str]], *,
               actor: str) -> None:
    """approved -> proposed: the approval no longer matches today's facts; a manager decides again."""
    for item in batch.items:
        item.approved_facts = None
    previous = batch.decided_by
    batch.status, batch.decided_by, batch.decided_at, batch.decision_reason = "proposed", None, None, None
    s.flush()
    facade.audit(s, "purge.returned", actor=actor, actor_kind="system" if is_scheduler(actor) else "user",
                 detail={"batch_id": batch.id, "approved_by": previous,
                         "changed": {str(k): v for k, v in sorted(changes.items()) if v}})


def _tombstone(s: Session, facade: ArchiveFacade, batch: PurgeBatch, *, actor: str) -> None:
    """Every item was just checked against its approval: tombstone each under its (unchanged) owner."""
    now = datetime.now(timezone.utc)
    instances = size = 0
    for item in batch.items:
        if item.study_uid is None:
            result = facade.tombstone_patient(s, item.patient_id, item.issuer_of_patient_id, at=now)
        else:
            result = facade.tombstone_study(s, item.study_uid, at=now)
        item.manifest = json.dumps([
            {"study_uid": st.study_uid, "study_date": st.study_date, "modalities": st.modalities,
             "instances": st.instances, "bytes": st.bytes_total, "checksum_sha256": st.checksum_sha256,
             "sop_instance_uids": list(st.sop_instance_uids)}
            for st in result.studies
        ])
        instances += result.instances
        size += result.bytes_total
        facade.audit(s, "purge.tombstoned", actor=actor, patient_id=item.patient_id, study_uid=item.study_uid,
                     detail={"batch_id": batch.id, "basis": item.basis, "instances": result.instances,
                             "studies": [st.study_uid for st in result.studies]})
    batch.instances, batch.bytes_destroyed = instances, size
    batch.status, batch.tombstoned_at, batch.executed_by = "tombstoned", now, actor
    s.flush()

