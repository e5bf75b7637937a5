"""patients: the INS of a patient (NIR validated with its key, OID, qualified or not)

Revision ID: 0930_patient_ins
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = '0930_patient_ins'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('patient_ins',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('nir', sa.String(length=15), nullable=False),
    sa.Column('oid', sa.String(length=64), nullable=False),
    sa.Column('qualified', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('recorded_by', sa.String(length=64), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patient_ins')),
    sa.UniqueConstraint('patient_id', name='uq_patient_ins_patient_id')
    )


def downgrade() -> None:
    op.drop_table('patient_ins')
