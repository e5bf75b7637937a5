"""patients: how the INS identity was checked (document, by whom, when); legal guardians

Revision ID: 1200_patient_identity
Revises: 0930_patient_ins
"""
from alembic import op
import sqlalchemy as sa


revision = "1200_patient_identity"
down_revision = "0930_patient_ins"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("patient_ins") as batch:
        batch.add_column(sa.Column("document", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("verified_by", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "patient_guardian",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("relationship", sa.String(length=16), nullable=False),
        sa.Column("phone", sa.String(length=32), nullable=False),
        sa.Column("recorded_by", sa.String(length=64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_by", sa.String(length=64), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patient_guardian")),
    )
    op.create_index("ix_patient_guardian_patient_id", "patient_guardian", ["patient_id"])


def downgrade() -> None:
    op.drop_index("ix_patient_guardian_patient_id", table_name="patient_guardian")
    op.drop_table("patient_guardian")
    with op.batch_alter_table("patient_ins") as batch:
        batch.drop_column("verified_at")
        batch.drop_column("verified_by")
        batch.drop_column("document")
