"""The audit trail: one append-only, hash-chained table of DICOM and web events."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Integer, String, Text, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column

from archive_core.db import Base

GENESIS = "0" * 64

# The kinds of event the trail records (action -> what a manager reads). Areas add theirs here.
ACTIONS: dict[str, str] = {
    "login": "connexion",
    "login.failed": "échec de connexion",
    "logout": "déconnexion",
    "user.created": "utilisateur créé",
    "token.created": "jeton d'API créé",
    "token.revoked": "jeton d'API révoqué",
    "user.disabled": "utilisateur désactivé",
    "user.enabled": "utilisateur réactivé",
    "user.password_changed": "mot de passe changé",
    "user.role_changed": "rôle changé",
    "patient.viewed": "dossier patient consulté",
    "study.retrieved": "examen récupéré (web ou DICOM)",
    "dicom.storage_commitment": "engagement de stockage (modalité)",
    "dicom.store.refused": "objet DICOM refusé (UID absent ou d'un autre patient/examen)",
    "dicom.find": "recherche DICOM (C-FIND)",
    "dicom.refused": "connexion DICOM refusée",
    "study.printed": "examen imprimé",
    "study.exported": "examen exporté (CD/USB)",
    "retention.viewed": "échéance de conservation consultée",
    "death.recorded": "décès enregistré",
    "hold.placed": "séquestre posé",
    "hold.released": "séquestre levé",
    "tier.moved": "données déplacées vers l'archive intermédiaire",
    "purge.proposed": "destruction proposée",
    "purge.approved": "destruction approuvée",
    "purge.rejected": "destruction refusée",
    "purge.tombstoned": "dossier marqué détruit",
    "purge.skipped": "dossier écarté à l'approbation (plus destructible ce jour)",
    "purge.returned": "lot renvoyé à une nouvelle décision (changé depuis l'approbation)",
    "purge.executed": "destruction exécutée (certificat)",
    "correction.study_moved": "examen rattaché à un autre patient",
    "correction.patients_merged": "patients fusionnés",
    "correction.deletion_requested": "suppression d'un examen envoyé par erreur demandée",
    "audit.exported": "journal d'audit exporté",
    "billing.corrected": "correction de facturation",
}


class AuditEvent(Base):
    __tablename__ = "audit_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[str] = mapped_column(String(32), index=True)  # UTC, ISO 8601, as hashed
    actor: Mapped[str] = mapped_column(String(64), index=True)  # a login, an AE title or "system"
    actor_kind: Mapped[str] = mapped_column(String(16))  # user | ae | system | share_link
    action: Mapped[str] = mapped_column(String(64), index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    study_uid: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


@dataclass(frozen=True)
class ChainReport:
    checked: int
    first_bad_id: int | None

    @property
    def ok(self) -> bool:
        return self.first_bad_id is None


def _digest(prev_hash: str, e: AuditEvent) -> str:
    payload = json.dumps(
        [e.at, e.actor, e.actor_kind, e.action, e.patient_id, e.study_uid, e.detail],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256((prev_hash + payload).encode()).hexdigest()


def record(
    session: Session,
    action: str,
    *,
    actor: str,
    actor_kind: str = "user",
    patient_id: str | None = None,
    study_uid: str | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event; the caller owns the transaction (on SQLite, a ``write_session``)."""
    if session.get_bind().dialect.name == "postgresql":
        # Serialise appends: each event hashes the one before it.
        session.execute(text("SELECT pg_advisory_xact_lock(727270001)"))
    prev = session.scalar(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)) or GENESIS
    event = AuditEvent(
        at=datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        actor=actor,
        actor_kind=actor_kind,
        action=action,
        patient_id=patient_id,
        study_uid=study_uid,
        detail=json.dumps(detail or {}, ensure_ascii=False, sort_keys=True),
        prev_hash=prev,
    )
    event.hash = _digest(prev, event)
    session.add(event)
    session.flush()
    return event


def verify(session: Session) -> ChainReport:
    """Recompute the chain; the first event whose hash or link does not hold is reported."""
    prev = GENESIS
    checked = 0
    events = session.scalars(select(AuditEvent).order_by(AuditEvent.id).execution_options(yield_per=1000))
    try:
        for event in events:
            if event.prev_hash != prev or _digest(prev, event) != event.hash:
                return ChainReport(checked, event.id)
            prev = event.hash
            checked += 1
    finally:
        events.close()  # a server-side cursor (PostgreSQL) left open on an early return
    return ChainReport(checked, None)
