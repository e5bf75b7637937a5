"""retention: tombstones, deaths, holds, purge batches, append-only audit

Revision ID: 0500_retention
Revises: 0001
Create Date: 2026-11-28 06:12:44.793905
"""
from alembic import op
import sqlalchemy as sa


revision = '0500_retention'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('legal_hold',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('issuer_of_patient_id', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('placed_by', sa.String(length=64), nullable=False),
    sa.Column('placed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('released_by', sa.String(length=64), nullable=True),
    sa.Column('released_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_legal_hold'))
    )
    with op.batch_alter_table('legal_hold', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_legal_hold_patient_id'), ['patient_id'], unique=False)

    op.create_table('purge_batch',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('proposed_by', sa.String(length=64), nullable=False),
    sa.Column('proposed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('proposal_note', sa.Text(), nullable=False),
    sa.Column('decided_by', sa.String(length=64), nullable=True),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('decision_reason', sa.Text(), nullable=True),
    sa.Column('tombstoned_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('executed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('instances', sa.Integer(), nullable=False),
    sa.Column('bytes_destroyed', sa.BigInteger(), nullable=False),
    sa.Column('certificate_name', sa.String(length=255), nullable=True),
    sa.Column('certificate_sha256', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_purge_batch'))
    )
    with op.batch_alter_table('purge_batch', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_purge_batch_status'), ['status'], unique=False)

    op.create_table('retention_death',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('issuer_of_patient_id', sa.String(length=64), nullable=False),
    sa.Column('death_date', sa.Date(), nullable=False),
    sa.Column('recorded_by', sa.String(length=64), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_retention_death')),
    sa.UniqueConstraint('patient_id', 'issuer_of_patient_id', name=op.f('uq_retention_death_patient_id'))
    )
    with op.batch_alter_table('retention_death', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_retention_death_patient_id'), ['patient_id'], unique=False)

    op.create_table('purge_item',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('batch_pk', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('issuer_of_patient_id', sa.String(length=64), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=True),
    sa.Column('basis', sa.String(length=32), nullable=False),
    sa.Column('keep_until', sa.Date(), nullable=True),
    sa.Column('explanation', sa.Text(), nullable=False),
    sa.Column('manifest', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['batch_pk'], ['purge_batch.id'], name=op.f('fk_purge_item_batch_pk_purge_batch')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_purge_item'))
    )
    with op.batch_alter_table('purge_item', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_purge_item_batch_pk'), ['batch_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_purge_item_patient_id'), ['patient_id'], unique=False)

    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_instance_deleted_at'), ['deleted_at'], unique=False)

    with op.batch_alter_table('patient', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('merged_into_pk', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_patient_deleted_at'), ['deleted_at'], unique=False)

    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_study_deleted_at'), ['deleted_at'], unique=False)

    _audit_append_only()


SQLITE_TRIGGERS = [
    "CREATE TRIGGER audit_event_no_update BEFORE UPDATE ON audit_event "
    "BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END",
    "CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON audit_event "
    "BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END",
]
POSTGRES_TRIGGERS = [
    "CREATE FUNCTION audit_event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN RAISE EXCEPTION 'audit_event is append-only'; END $$",
    "CREATE TRIGGER audit_event_no_change BEFORE UPDATE OR DELETE ON audit_event "
    "FOR EACH ROW EXECUTE FUNCTION audit_event_append_only()",
    "CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_event "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_event_append_only()",
]


def _audit_append_only() -> None:
    # The audit trail is append-only in the database itself, not only in the code that writes it.
    dialect = op.get_bind().dialect.name
    for statement in {"sqlite": SQLITE_TRIGGERS, "postgresql": POSTGRES_TRIGGERS}.get(dialect, []):
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_event_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_event_no_delete")
    elif dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_event_no_change ON audit_event")
        op.execute("DROP TRIGGER IF EXISTS audit_event_no_truncate ON audit_event")
        op.execute("DROP FUNCTION IF EXISTS audit_event_append_only()")
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_study_deleted_at'))
        batch_op.drop_column('deleted_at')

    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_column('deleted_at')

    with op.batch_alter_table('patient', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_patient_deleted_at'))
        batch_op.drop_column('merged_into_pk')
        batch_op.drop_column('deleted_at')

    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instance_deleted_at'))
        batch_op.drop_column('deleted_at')

    with op.batch_alter_table('purge_item', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_purge_item_patient_id'))
        batch_op.drop_index(batch_op.f('ix_purge_item_batch_pk'))

    op.drop_table('purge_item')
    with op.batch_alter_table('retention_death', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_retention_death_patient_id'))

    op.drop_table('retention_death')
    with op.batch_alter_table('purge_batch', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_purge_batch_status'))

    op.drop_table('purge_batch')
    with op.batch_alter_table('legal_hold', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_legal_hold_patient_id'))

    op.drop_table('legal_hold')
