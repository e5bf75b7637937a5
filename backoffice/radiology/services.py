"""Radiology operations: reports (draft, sign, amend), key images, share links. Callers own the transaction."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from archive_core.values import utcnow
from backoffice.errors import DomainError
from backoffice.radiology.models import KeyImage, Report, ShareLink

REPORT_FIELDS = ("indication", "technique", "findings", "conclusion")
MAX_KEY_IMAGES = 24
SHARE_MAX_DAYS = 30
SHARE_MAX_FAILED_CODES = 5


class RadiologyError(DomainError):
    """A request the radiology rules refuse: English *message* (API, log), *code* its row in
    backoffice/radiology/errors.py (the sentence pages show, and the HTTP status)."""

    code = "conflict"


class ShareDenied(RadiologyError):
    """A share link that is unknown, expired, revoked or locked (410 Gone)."""

    code = "share_unknown"


# -- reports ---------------------------------------------------------------------------------------


def reports_of(session: Session, study_uid: str) -> list[Report]:
    """Every version, newest first."""
    return list(session.scalars(select(Report).where(Report.study_uid == study_uid).order_by(Report.version.desc())))


def current_draft(session: Session, study_uid: str) -> Report | None:
    latest = session.scalar(
        select(Report).where(Report.study_uid == study_uid).order_by(Report.version.desc()).limit(1)
    )
    return latest if latest is not None and latest.status == "draft" else None


def signed_report(session: Session, study_uid: str) -> Report | None:
    """The latest signed version (what is printed and shared)."""
    return session.scalar(
        select(Report)
        .where(Report.study_uid == study_uid, Report.status == "signed")
        .order_by(Report.version.desc())
        .limit(1)
    )


def save_draft(session: Session, study_uid: str, *, author: str, amendment_reason: str = "", **fields: str) -> Report:
    """Create or update the study's draft; after a signature the new draft amends the signed version."""
    unknown = set(fields) - set(REPORT_FIELDS)
    if unknown:
        raise RadiologyError(f"unknown report fields: {', '.join(sorted(unknown))}", code="report_fields")
    draft = current_draft(session, study_uid)
    if draft is None:
        signed = signed_report(session, study_uid)
        if signed is not None and not amendment_reason.strip():
            raise RadiologyError("the report is signed: an amendment needs its reason", code="amendment_reason")
        version = (session.scalar(select(func.max(Report.version)).where(Report.study_uid == study_uid)) or 0) + 1
        base = {f: getattr(signed, f) for f in REPORT_FIELDS} if signed else {}
        draft = Report(study_uid=study_uid, version=version, status="draft", author=author,
                       amends_id=signed.id if signed else None, amendment_reason=amendment_reason.strip(), **base)
        session.add(draft)
    for name, value in fields.items():
        setattr(draft, name, value or "")
    draft.updated_at = utcnow()
    session.flush()
    return draft


def sign_report(session: Session, study_uid: str, *, signed_by: str, signer_name: str | None = None,
                signer_rpps: str | None = None) -> Report:
    """Sign the draft; the signer's name and RPPS are copied onto the report as they are now."""
    draft = current_draft(session, study_uid)
    if draft is None:
        raise RadiologyError("no draft to sign", code="no_draft")
    if not (draft.findings.strip() or draft.conclusion.strip()):
        raise RadiologyError("an empty report is not signed", code="empty_report")
    draft.status = "signed"
    draft.signed_at = utcnow()
    draft.signed_by = signed_by
    draft.signer_name = signer_name
    draft.signer_rpps = signer_rpps
    session.flush()
    return draft


# -- key images ------------------------------------------------------------------------------------


def key_images(session: Session, study_uid: str) -> list[KeyImage]:
    query = select(KeyImage).where(KeyImage.study_uid == study_uid)
    return list(session.scalars(query.order_by(KeyImage.position, KeyImage.id)))


def add_key_image(
    session: Session,
    study_uid: str,
    sop_instance_uid: str,
    *,
    chosen_by: str,
    frame: int = 0,
    window_center: float | None = None,
    window_width: float | None = None,
) -> KeyImage:
    existing = key_images(session, study_uid)
    if len(existing) >= MAX_KEY_IMAGES:
        raise RadiologyError(f"{MAX_KEY_IMAGES} key images at most", code="too_many_key_images",
                             count=MAX_KEY_IMAGES)
    for k in existing:  # the same view chosen twice is one key image; another window is another one
        if (k.sop_instance_uid, k.frame, k.window_center, k.window_width) == (
            sop_instance_uid, frame, window_center, window_width
        ):
            return k
    key = KeyImage(study_uid=study_uid, sop_instance_uid=sop_instance_uid, frame=frame, window_center=window_center,
                   window_width=window_width, position=len(existing), chosen_by=chosen_by)
    session.add(key)
    session.flush()
    return key


def clear_key_images(session: Session, study_uid: str) -> int:
    rows = key_images(session, study_uid)
    for k in rows:
        session.delete(k)
    session.flush()
    return len(rows)


# -- share links -----------------------------------------------------------------------------------


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class NewShareLink:
    link: ShareLink
    token: str  # goes in the URL (no patient data in it)
    code: str  # sent separately (telephone, SMS): the second factor, shown once


def create_share_link(
    session: Session,
    study_uid: str,
    *,
    created_by: str,
    days: int = 7,
    recipient: str = "",
    include_priors: bool = False,
    now: datetime | None = None,
) -> NewShareLink:
    if not 1 <= days <= SHARE_MAX_DAYS:
        raise RadiologyError(f"a link lasts 1 to {SHARE_MAX_DAYS} days", code="share_days", days=SHARE_MAX_DAYS)
    now = now or utcnow()
    token = secrets.token_urlsafe(32)
    code = f"{secrets.randbelow(10**6):06d}"
    link = ShareLink(token_hash=_digest(token), code_hash=_digest(code), study_uid=study_uid, recipient=recipient[:128],
                     created_by=created_by, created_at=now, expires_at=now + timedelta(days=days),
                     include_priors=include_priors)
    session.add(link)
    session.flush()
    return NewShareLink(link, token, code)


def share_link_for(session: Session, token: str, *, now: datetime | None = None) -> ShareLink:
    """The link behind *token* if it may still be used; :class:`ShareDenied` otherwise."""
    now = now or utcnow()
    link = session.scalar(select(ShareLink).where(ShareLink.token_hash == _digest(token)))
    if link is None:
        raise ShareDenied("unknown link", code="share_unknown")
    if link.revoked_at is not None:
        raise ShareDenied("revoked link", code="share_revoked")
    if link.expires_at <= now:
        raise ShareDenied("expired link", code="share_expired")
    if link.failed_codes >= SHARE_MAX_FAILED_CODES:
        raise ShareDenied("link locked after too many wrong codes", code="share_locked")
    return link


def usable_share_links(session: Session, link_ids, *, now: datetime | None = None) -> list[ShareLink]:
    """Of *link_ids* (the links a browser session unlocked with their code), those still usable."""
    now = now or utcnow()
    ids = [int(i) for i in link_ids]
    if not ids:
        return []
    links = session.scalars(select(ShareLink).where(ShareLink.id.in_(ids)))
    return [link for link in links if link.revoked_at is None and link.expires_at > now
            and link.failed_codes < SHARE_MAX_FAILED_CODES]


def check_share_code(session: Session, link: ShareLink, code: str, *, now: datetime | None = None) -> bool:
    """The code opens the link on every device the doctor types it on, for as long as the link lives.

    Guessing stays bounded: each wrong code counts, and :data:`SHARE_MAX_FAILED_CODES` of them lock the link
    for everyone (:func:`share_link_for` then refuses it). ``code_used_at`` keeps the first opening.
    """
    if hmac.compare_digest(link.code_hash, _digest(code.strip())):
        if link.code_used_at is None:
            link.code_used_at = now or utcnow()
            session.flush()
        return True
    link.failed_codes += 1
    session.flush()
    return False


def revoke_share_link(session: Session, link_id: int, *, now: datetime | None = None) -> ShareLink:
    link = session.get(ShareLink, link_id)
    if link is None:
        raise RadiologyError("unknown link", code="unknown_link")
    if link.revoked_at is None:
        link.revoked_at = now or utcnow()
        session.flush()
    return link


def share_links_of(session: Session, study_uid: str) -> list[ShareLink]:
    query = select(ShareLink).where(ShareLink.study_uid == study_uid)
    return list(session.scalars(query.order_by(ShareLink.id.desc())))
