"""Claims to insurers (tiers payant): sending, settling, and the remittance of cheques.

Each function takes a Session first, flushes, never commits (the edge does)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backoffice.billing import base
from backoffice.billing.base import Conflict, NotFound
from backoffice.billing.journal import append_payment, lock_journal
from backoffice.billing.models import Claim, Insurer, Payment, Remittance, RemittanceItem
from backoffice.billing.states import get_invoice, invoice_state


def send_claims(session: Session, insurer_id: int) -> list[Claim]:
    claims = list(session.scalars(select(Claim).where(Claim.insurer_id == insurer_id, Claim.status == "to_send")))
    for claim in claims:
        claim.status, claim.sent_at = "sent", base.utcnow()
    session.flush()
    return claims


def settle_claim(session: Session, claim_id: int, *, paid: bool, by: str, reason: str | None = None) -> Claim:
    """Paid: the insurer's transfer (what it still owes) enters the journal, on the day it arrives
    (the next open day if today is closed). Rejected: what the insurer owed becomes the patient's."""
    claim = session.get(Claim, claim_id)
    if claim is None:
        raise NotFound("no such claim")
    if claim.status not in ("to_send", "sent"):
        raise Conflict(f"this claim is already {claim.status}", code="claim_settled")
    if paid:
        lock_journal(session)
        invoice = get_invoice(session, claim.invoice_id)
        state = invoice_state(session, invoice)
        if state.insurer_balance_cents > 0:
            append_payment(session, locked=True, roll_over_closed_day=True, invoice_id=invoice.id,
                            amount_cents=state.insurer_balance_cents, method="transfer", payer="insurer",
                            received_by=by)
        claim.status = "paid"
    else:
        claim.status, claim.rejection_reason = "rejected", (reason or "")[:2000]
    claim.settled_at = base.utcnow()
    session.flush()
    return claim


def outstanding_claims(session: Session) -> list[tuple[Insurer, int, int]]:
    """Per insurer: number and amount of claims not yet paid (to send or sent)."""
    rows = session.execute(
        select(Insurer, func.count(Claim.id), func.coalesce(func.sum(Claim.amount_cents), 0))
        .join(Claim, Claim.insurer_id == Insurer.id)
        .where(Claim.status.in_(("to_send", "sent"))).group_by(Insurer.id).order_by(Insurer.name)
    ).all()
    return [(insurer, int(n), int(total)) for insurer, n, total in rows]


def create_remittance(session: Session, *, created_by: str) -> Remittance:
    """Gather cheques not yet remitted on one slip for the bank."""
    remitted = select(RemittanceItem.payment_id)
    cheques = list(session.scalars(select(Payment).where(Payment.method == "cheque", Payment.amount_cents > 0,
                                                         Payment.id.not_in(remitted)).order_by(Payment.id)))
    if not cheques:
        raise Conflict("no cheque to remit", code="nothing_to_remit")
    slip = Remittance(created_by=created_by, total_cents=sum(p.amount_cents for p in cheques), count=len(cheques))
    session.add(slip)
    session.flush()
    for payment in cheques:
        session.add(RemittanceItem(remittance_id=slip.id, payment_id=payment.id))
    session.flush()
    return slip
