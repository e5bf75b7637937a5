"""send jobs: each instance a workstation refused, with its status and comment; status "queued"

Revision ID: 0910_send_failures
Revises: 0600_radiology
Create Date: 2026-12-01 15:50:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0910_send_failures'
down_revision = '0600_radiology'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('radiology_send_failure',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('status', sa.Integer(), nullable=True),
    sa.Column('comment', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['radiology_send_job.id'], name=op.f('fk_radiology_send_failure_job_id_radiology_send_job')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_radiology_send_failure'))
    )
    with op.batch_alter_table('radiology_send_failure', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_radiology_send_failure_job_id'), ['job_id'], unique=False)
    # The public contract names a job waiting to start "queued".
    op.execute("UPDATE radiology_send_job SET status = 'queued' WHERE status = 'pending'")


def downgrade() -> None:
    op.execute("UPDATE radiology_send_job SET status = 'pending' WHERE status = 'queued'")
    with op.batch_alter_table('radiology_send_failure', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_radiology_send_failure_job_id'))
    op.drop_table('radiology_send_failure')
