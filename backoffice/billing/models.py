"""Billing tables: exam groups, tariffs, consent, insurers, invoices, payments, claims, closings.

Issued invoices, their lines and studies, credit notes, payments and closings are append-only:
database triggers (migration 0400_billing) refuse UPDATE and DELETE of them.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from archive_core.api import Base, UtcDateTime, utcnow

CONSENT_STATES = ("pending", "accepted", "refused")
PAYMENT_METHODS = ("cash", "card", "cheque", "transfer")
CLAIM_STATES = ("to_send", "sent", "paid", "rejected")


class ExamGroupMapping(Base):
    """Which exam group a study goes to: by modality, optionally narrowed by a description keyword."""

    __tablename__ = "billing_exam_group_mapping"

    id: Mapped[int] = mapped_column(primary_key=True)
    modality: Mapped[str] = mapped_column(String(16), index=True)
    description_contains: Mapped[str | None] = mapped_column(String(64))
    exam_group: Mapped[str] = mapped_column(String(32))


class Tariff(Base):
    """The fee of an exam group from a date on; a new row never changes past invoices."""

    __tablename__ = "billing_tariff"
    __table_args__ = (
        UniqueConstraint("exam_group", "effective_from"),
        CheckConstraint("fee_cents >= 0", name="fee_non_negative"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    exam_group: Mapped[str] = mapped_column(String(32), index=True)
    label: Mapped[str] = mapped_column(String(128))
    fee_cents: Mapped[int] = mapped_column(Integer)
    # Archiving already paid by the national insurance (YYYY600 supplement, organised screening).
    national_insurance_paid: Mapped[bool] = mapped_column(Boolean, default=False)
    effective_from: Mapped[date] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ExamGroup(Base):
    """The billable unit: one per patient, visit day and exam group."""

    __tablename__ = "billing_exam_group"
    __table_args__ = (
        UniqueConstraint("patient_id", "visit_date", "exam_group"),
        Index("ix_billing_exam_group_visit_date_id", "visit_date", "id"),
        # The dashboard's consent per exam group, from the index alone (migration 1310).
        Index("ix_billing_exam_group_visit_group_consent", "visit_date", "exam_group", "consent"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    visit_date: Mapped[date] = mapped_column(Date)
    exam_group: Mapped[str] = mapped_column(String(32))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    patient_address: Mapped[str | None] = mapped_column(Text)
    accession_number: Mapped[str | None] = mapped_column(String(16), index=True)
    consent: Mapped[str] = mapped_column(String(16), default="pending")
    created_by: Mapped[str] = mapped_column(String(64))  # a login, or "system" (from arrived studies)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    studies: Mapped[list["ExamGroupStudy"]] = relationship(back_populates="group", order_by="ExamGroupStudy.id")


class ConsentCount(Base):
    """How many exam groups have a visit day, an exam group and a consent: kept by the database's triggers
    on billing_exam_group (migration 1330), whichever process writes; read by the dashboard."""

    __tablename__ = "billing_consent_count"

    visit_date: Mapped[date] = mapped_column(Date, primary_key=True)
    exam_group: Mapped[str] = mapped_column(String(32), primary_key=True)
    consent: Mapped[str] = mapped_column(String(16), primary_key=True)
    n: Mapped[int] = mapped_column(Integer)


class ExamGroupStudy(Base):
    """A study attached to an exam group (by accession number, else patient ID + date)."""

    __tablename__ = "billing_exam_group_study"

    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("billing_exam_group.id"), index=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8))
    modalities: Mapped[str] = mapped_column(String(128), default="")
    description: Mapped[str | None] = mapped_column(String(64))

    group: Mapped[ExamGroup] = relationship(back_populates="studies")


class Consent(Base):
    """That the price was shown, and the patient's answer: by whom and when (history kept)."""

    __tablename__ = "billing_consent"

    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("billing_exam_group.id"), index=True)
    accepted: Mapped[bool] = mapped_column(Boolean)
    price_shown_cents: Mapped[int] = mapped_column(Integer)
    recorded_by: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Insurer(Base):
    """A mutual insurer (AMC) and its contract rules for the archiving fee."""

    __tablename__ = "billing_insurer"
    __table_args__ = (
        CheckConstraint("coverage_bp BETWEEN 0 AND 10000", name="coverage_range"),
        CheckConstraint("flat_cents >= 0", name="flat_non_negative"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    amc_number: Mapped[str] = mapped_column(String(32), unique=True)
    coverage_bp: Mapped[int] = mapped_column(Integer, default=0)
    flat_cents: Mapped[int] = mapped_column(Integer, default=0)
    annual_cap_cents: Mapped[int | None] = mapped_column(Integer)  # per beneficiary per calendar year
    third_party_payment: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    # Retired: no longer offered for new memberships; memberships already recorded keep their dates.
    retired_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class Membership(Base):
    """A patient's membership of an insurer; the visit date decides which one applies."""

    __tablename__ = "billing_membership"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    insurer_id: Mapped[int] = mapped_column(ForeignKey("billing_insurer.id"), index=True)
    member_number: Mapped[str] = mapped_column(String(64))
    valid_from: Mapped[date] = mapped_column(Date)
    valid_to: Mapped[date | None] = mapped_column(Date)
    payer_name: Mapped[str | None] = mapped_column(String(324))  # a guardian, for minors
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    insurer: Mapped[Insurer] = relationship()


class NumberCounter(Base):
    """The next number of a series ("2026", "AV-2026"); locked FOR UPDATE on PostgreSQL."""

    __tablename__ = "billing_number_counter"

    series: Mapped[str] = mapped_column(String(16), primary_key=True)
    last_value: Mapped[int] = mapped_column(Integer, default=0)


class Invoice(Base):
    """An issued invoice: a snapshot, never changed (the database refuses it)."""

    __tablename__ = "billing_invoice"
    __table_args__ = (
        UniqueConstraint("series", "sequence"),
        CheckConstraint("insurer_cents >= 0 AND patient_cents >= 0 AND insurer_cents + patient_cents = total_cents",
                        name="shares_add_up"),
        Index("ix_billing_invoice_issued_at_id", "issued_at", "id"),
        Index("ix_billing_invoice_issued_at_total", "issued_at", "total_cents"),  # the dashboard's months
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(32), unique=True)
    series: Mapped[str] = mapped_column(String(16))
    sequence: Mapped[int] = mapped_column(Integer)
    group_id: Mapped[int] = mapped_column(ForeignKey("billing_exam_group.id"), unique=True)
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    issued_by: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    patient_name: Mapped[str | None] = mapped_column(String(324))
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    patient_address: Mapped[str | None] = mapped_column(Text)
    payer_name: Mapped[str | None] = mapped_column(String(324))
    visit_date: Mapped[date] = mapped_column(Date)
    exam_group: Mapped[str] = mapped_column(String(32))
    exam_group_label: Mapped[str] = mapped_column(String(128))
    total_cents: Mapped[int] = mapped_column(Integer)
    insurer_cents: Mapped[int] = mapped_column(Integer)
    patient_cents: Mapped[int] = mapped_column(Integer)
    insurer_id: Mapped[int | None] = mapped_column(ForeignKey("billing_insurer.id"), index=True)
    insurer_name: Mapped[str | None] = mapped_column(String(128))
    member_number: Mapped[str | None] = mapped_column(String(64))
    third_party_payment: Mapped[bool] = mapped_column(Boolean, default=False)

    lines: Mapped[list["InvoiceLine"]] = relationship(order_by="InvoiceLine.id")
    studies: Mapped[list["InvoiceStudy"]] = relationship(order_by="InvoiceStudy.id")
    payments: Mapped[list["Payment"]] = relationship(order_by="Payment.id", viewonly=True)


class InvoiceLine(Base):
    __tablename__ = "billing_invoice_line"

    id: Mapped[int] = mapped_column(primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("billing_invoice.id"), index=True)
    label: Mapped[str] = mapped_column(String(255))
    amount_cents: Mapped[int] = mapped_column(Integer)


class InvoiceStudy(Base):
    """What the invoice paid for, as it was: no foreign key to archive rows (they may be purged)."""

    __tablename__ = "billing_invoice_study"

    id: Mapped[int] = mapped_column(primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("billing_invoice.id"), index=True)
    study_uid: Mapped[str] = mapped_column(String(64))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8))
    modalities: Mapped[str] = mapped_column(String(128), default="")
    description: Mapped[str | None] = mapped_column(String(64))


class CreditNote(Base):
    """Cancels all or part of an invoice; its own series, a negative total split between the parties.

    ``patient_cents + insurer_cents == total_cents`` (both <= 0): what it takes off the patient's
    and off the insurer's part, fixed when it is issued (the patient's part first).
    """

    __tablename__ = "billing_credit_note"
    __table_args__ = (UniqueConstraint("series", "sequence"), CheckConstraint("total_cents < 0", name="negative"),
                      Index("ix_billing_credit_note_issued_at_total", "issued_at", "total_cents"))

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(32), unique=True)
    series: Mapped[str] = mapped_column(String(16))
    sequence: Mapped[int] = mapped_column(Integer)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("billing_invoice.id"), index=True)
    reason: Mapped[str] = mapped_column(Text)
    total_cents: Mapped[int] = mapped_column(Integer)
    patient_cents: Mapped[int] = mapped_column(Integer)
    insurer_cents: Mapped[int] = mapped_column(Integer)
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    issued_by: Mapped[str] = mapped_column(String(64))


class Payment(Base):
    """The payment journal: each entry carries the hash of the one before (refunds are negative)."""

    __tablename__ = "billing_payment"
    __table_args__ = (CheckConstraint("amount_cents <> 0", name="non_zero"),
                      Index("ix_billing_payment_paris_day_amount", "paris_day", "amount_cents"))

    id: Mapped[int] = mapped_column(primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("billing_invoice.id"), index=True)
    amount_cents: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(16))
    payer: Mapped[str] = mapped_column(String(16), default="patient")  # patient | insurer
    credit_note_id: Mapped[int | None] = mapped_column(ForeignKey("billing_credit_note.id"))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, index=True)
    received_by: Mapped[str] = mapped_column(String(64))
    paris_day: Mapped[date] = mapped_column(Date, index=True)  # the business day it belongs to
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class Remittance(Base):
    """A cheque remittance slip (bordereau de remise) for the bank."""

    __tablename__ = "billing_remittance"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(64))
    total_cents: Mapped[int] = mapped_column(Integer)
    count: Mapped[int] = mapped_column(Integer)


class RemittanceItem(Base):
    __tablename__ = "billing_remittance_item"

    id: Mapped[int] = mapped_column(primary_key=True)
    remittance_id: Mapped[int] = mapped_column(ForeignKey("billing_remittance.id"), index=True)
    payment_id: Mapped[int] = mapped_column(ForeignKey("billing_payment.id"), unique=True)


class Claim(Base):
    """Tiers payant: what the insurer owes; to_send → sent → paid | rejected."""

    __tablename__ = "billing_claim"

    id: Mapped[int] = mapped_column(primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("billing_invoice.id"), unique=True)
    insurer_id: Mapped[int] = mapped_column(ForeignKey("billing_insurer.id"), index=True)
    amount_cents: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="to_send", index=True)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    settled_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    rejection_reason: Mapped[str | None] = mapped_column(Text)


class Closing(Base):
    """A closed day, month or year: totals per method, signed off; never altered afterwards."""

    __tablename__ = "billing_closing"
    __table_args__ = (UniqueConstraint("kind", "period"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))  # day | month | year
    period: Mapped[str] = mapped_column(String(10))  # 2026-11-28 | 2026-11 | 2026
    totals_json: Mapped[str] = mapped_column(Text)  # {"card": 450, ...} in cents
    total_cents: Mapped[int] = mapped_column(Integer)
    payment_count: Mapped[int] = mapped_column(Integer)
    last_payment_hash: Mapped[str] = mapped_column(String(64))
    signed_by: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    # Day closings: what the desk counted in the drawer, and the difference with the journal.
    expected_json: Mapped[str | None] = mapped_column(Text)  # {"cash": 450, "cheque": 0} expected in the drawer
    counted_cash_cents: Mapped[int | None] = mapped_column(Integer)
    counted_cheque_cents: Mapped[int | None] = mapped_column(Integer)
    cash_difference_cents: Mapped[int | None] = mapped_column(Integer)  # counted - expected
    cheque_difference_cents: Mapped[int | None] = mapped_column(Integer)


class InvoiceDocument(Base):
    """A rendered PDF kept as issued (instance/documents/), with its SHA-256."""

    __tablename__ = "billing_document"
    __table_args__ = (UniqueConstraint("kind", "ref_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # invoice | credit_note
    ref_id: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
