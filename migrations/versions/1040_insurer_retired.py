"""billing: an insurer can be retired (no longer offered for new memberships)

Revision ID: 1040_insurer_retired
Revises: 1020_billing_shares
"""
from alembic import op
import sqlalchemy as sa


revision = "1040_insurer_retired"
down_revision = "1020_billing_shares"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("billing_insurer", schema=None) as batch_op:
        batch_op.add_column(sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("billing_insurer", schema=None) as batch_op:
        batch_op.drop_column("retired_at")
