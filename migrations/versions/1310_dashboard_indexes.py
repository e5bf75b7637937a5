"""dashboard: covering indexes for the manager's figures (money per month, consent, studies, storage)

Each figure reads its index alone instead of the table (bench/web.py, docs/performance.md). The
archive's indexes start with ``deleted_at`` so that SQLite, without statistics, prefers them to
``ix_*_deleted_at`` for the visible rows (every row of which has the same NULL).

Revision ID: 1310_dashboard_indexes
Revises: 1040_insurer_retired
"""
from alembic import op


revision = "1310_dashboard_indexes"
down_revision = "1040_insurer_retired"
branch_labels = None
depends_on = ("0930_patient_search", "0500_retention")

INDEXES = (
    ("ix_billing_invoice_issued_at_total", "billing_invoice", ["issued_at", "total_cents"]),
    ("ix_billing_credit_note_issued_at_total", "billing_credit_note", ["issued_at", "total_cents"]),
    ("ix_billing_payment_paris_day_amount", "billing_payment", ["paris_day", "amount_cents"]),
    ("ix_billing_exam_group_visit_group_consent", "billing_exam_group", ["visit_date", "exam_group", "consent"]),
    ("ix_study_deleted_at_study_date", "study", ["deleted_at", "study_date", "external", "modalities_in_study"]),
    ("ix_instance_deleted_at_tier_size", "instance", ["deleted_at", "tier", "size_bytes"]),
    ("ix_instance_deleted_at_received_size", "instance", ["deleted_at", "received_at", "size_bytes"]),
)


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _columns in reversed(INDEXES):
        op.drop_index(name, table_name=table)
