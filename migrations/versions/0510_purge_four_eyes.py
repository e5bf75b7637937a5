"""Purges: what each approval approved (re-checked at execution) and who executed

Revision ID: 0510_purge_checks
Revises: 0500_retention
"""
from alembic import op
import sqlalchemy as sa


revision = "0510_purge_checks"
down_revision = "0500_retention"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("purge_item", schema=None) as batch_op:
        batch_op.add_column(sa.Column("approved_facts", sa.Text(), nullable=True))
    with op.batch_alter_table("purge_batch", schema=None) as batch_op:
        batch_op.add_column(sa.Column("executed_by", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("purge_batch", schema=None) as batch_op:
        batch_op.drop_column("executed_by")
    with op.batch_alter_table("purge_item", schema=None) as batch_op:
        batch_op.drop_column("approved_facts")
