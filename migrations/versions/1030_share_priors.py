"""share links: include_priors (DICOMweb access to the patient's earlier studies too)

Revision ID: 1030_share_priors
Revises: 0910_send_failures
"""
from alembic import op
import sqlalchemy as sa


revision = "1030_share_priors"
down_revision = "0910_send_failures"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("radiology_share_link", schema=None) as batch_op:
        batch_op.add_column(sa.Column("include_priors", sa.Boolean(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("radiology_share_link", schema=None) as batch_op:
        batch_op.drop_column("include_priors")
