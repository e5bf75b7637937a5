"""report identity: users' full name and RPPS, and the signer's as they were on each signed report

Revision ID: 1030_report_identity
Revises: 1000_accounts
Depends on: 0600_radiology
"""
from alembic import op
import sqlalchemy as sa


revision = "1030_report_identity"
down_revision = "1000_accounts"
branch_labels = None
depends_on = "0600_radiology"

# Plain ADD COLUMN, not batch mode: on SQLite a batch rebuild of radiology_report would drop the triggers
# that freeze signed reports (migration 0600). Adding nullable columns leaves existing rows untouched.


def upgrade() -> None:
    op.add_column("user_account", sa.Column("full_name", sa.String(length=200), nullable=True))
    op.add_column("user_account", sa.Column("rpps", sa.String(length=11), nullable=True))
    op.add_column("radiology_report", sa.Column("signer_name", sa.String(length=200), nullable=True))
    op.add_column("radiology_report", sa.Column("signer_rpps", sa.String(length=11), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("user_account", schema=None) as batch_op:
        batch_op.drop_column("rpps")
        batch_op.drop_column("full_name")
    if op.get_bind().dialect.name == "sqlite":
        # SQLite >= 3.35 drops a column in place (the frozen-report triggers stay).
        op.execute("ALTER TABLE radiology_report DROP COLUMN signer_rpps")
        op.execute("ALTER TABLE radiology_report DROP COLUMN signer_name")
    else:
        op.drop_column("radiology_report", "signer_rpps")
        op.drop_column("radiology_report", "signer_name")
