"""radiology: reports, key images, share links, send jobs

Revision ID: 0600_radiology
Revises: 0001
Create Date: 2026-11-28 06:15:13.122971
"""
from alembic import op
import sqlalchemy as sa


revision = '0600_radiology'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('radiology_key_image',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('frame', sa.Integer(), nullable=False),
    sa.Column('window_center', sa.Float(), nullable=True),
    sa.Column('window_width', sa.Float(), nullable=True),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('chosen_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_radiology_key_image'))
    )
    with op.batch_alter_table('radiology_key_image', schema=None) as batch_op:
        batch_op.create_index('ix_radiology_key_image_study', ['study_uid', 'position'], unique=False)

    op.create_table('radiology_report',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('indication', sa.Text(), nullable=False),
    sa.Column('technique', sa.Text(), nullable=False),
    sa.Column('findings', sa.Text(), nullable=False),
    sa.Column('conclusion', sa.Text(), nullable=False),
    sa.Column('author', sa.String(length=64), nullable=False),
    sa.Column('amends_id', sa.Integer(), nullable=True),
    sa.Column('amendment_reason', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('signed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('signed_by', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['amends_id'], ['radiology_report.id'], name=op.f('fk_radiology_report_amends_id_radiology_report')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_radiology_report')),
    sa.UniqueConstraint('study_uid', 'version', name=op.f('uq_radiology_report_study_uid'))
    )
    with op.batch_alter_table('radiology_report', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_radiology_report_study_uid'), ['study_uid'], unique=False)

    op.create_table('radiology_send_job',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('peer_ae_title', sa.String(length=16), nullable=False),
    sa.Column('study_uids', sa.Text(), nullable=False),
    sa.Column('reason', sa.String(length=16), nullable=False),
    sa.Column('trigger_study_uid', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('sent', sa.Integer(), nullable=False),
    sa.Column('failed', sa.Integer(), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('requested_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_radiology_send_job'))
    )
    with op.batch_alter_table('radiology_send_job', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_radiology_send_job_trigger_study_uid'), ['trigger_study_uid'], unique=False)
    op.create_table('radiology_share_link',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('code_hash', sa.String(length=64), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('recipient', sa.String(length=128), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('code_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('failed_codes', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_radiology_share_link')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_radiology_share_link_token_hash'))
    )
    with op.batch_alter_table('radiology_share_link', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_radiology_share_link_study_uid'), ['study_uid'], unique=False)

    # A signed report is never edited nor deleted, whoever writes to the database: amend instead.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FROZEN_PG_FUNCTION)
        op.execute("CREATE TRIGGER radiology_report_frozen BEFORE UPDATE OR DELETE ON radiology_report "
                   "FOR EACH ROW EXECUTE FUNCTION radiology_report_frozen()")
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER radiology_report_frozen_{event.lower()} BEFORE {event} ON radiology_report "
                       "WHEN OLD.status = 'signed' BEGIN SELECT RAISE(ABORT, 'signed report is frozen'); END")


FROZEN_PG_FUNCTION = """
CREATE FUNCTION radiology_report_frozen() RETURNS trigger AS $$
BEGIN
    IF OLD.status = 'signed' THEN
        RAISE EXCEPTION 'signed report is frozen';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql
"""


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER radiology_report_frozen ON radiology_report")
        op.execute("DROP FUNCTION radiology_report_frozen()")
    else:
        op.execute("DROP TRIGGER radiology_report_frozen_update")
        op.execute("DROP TRIGGER radiology_report_frozen_delete")
    with op.batch_alter_table('radiology_share_link', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_radiology_share_link_study_uid'))

    op.drop_table('radiology_share_link')
    with op.batch_alter_table('radiology_send_job', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_radiology_send_job_trigger_study_uid'))

    op.drop_table('radiology_send_job')
    with op.batch_alter_table('radiology_report', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_radiology_report_study_uid'))

    op.drop_table('radiology_report')
    with op.batch_alter_table('radiology_key_image', schema=None) as batch_op:
        batch_op.drop_index('ix_radiology_key_image_study')

    op.drop_table('radiology_key_image')
