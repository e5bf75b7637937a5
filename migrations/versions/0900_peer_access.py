"""peers: the address a peer may connect from, and DICOM TLS

Revision ID: 0900_peer_access
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = "0900_peer_access"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Peers registered before this revision keep their HOST as their only allowed address.
    with op.batch_alter_table("peer", schema=None) as batch_op:
        batch_op.add_column(sa.Column("allowed_from", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("tls", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("peer", schema=None) as batch_op:
        batch_op.drop_column("tls")
        batch_op.drop_column("allowed_from")
