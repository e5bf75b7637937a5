"""retention: the stored answer says whether the patient still has images in the active tier

The sweep's preview (and the sweep) moved to the archive tier the patients whose last visit is five
years old and who still have active images: it scanned every active image (20,000 of 100,000) and
looked their patients' last visits up. ``retention_answer.active_images`` stores the second fact
next to the first, and ``ix_retention_answer_moves`` (active_images, last_visit, patient_pk) answers
"who moves" from the index alone (bench/web.py, docs/performance.md). ``ix_retention_answer_review``
counts and lists the records to review (the preview's and the overview's count) without reading every answer.

Triggers on ``instance`` (an image arrives, is tombstoned or deleted, changes tier) queue its
patient in ``retention_stale`` like the triggers of 1300_retention_answer, whichever process writes
it; backoffice/retention/answers.py stores the flag when it decides the patient again.

Revision ID: 1320_retention_moves
Revises: 1300_retention_answer
"""
from alembic import op
import sqlalchemy as sa


revision = "1320_retention_moves"
down_revision = "1300_retention_answer"
branch_labels = None
depends_on = None

_PATIENT = "SELECT study.patient_pk FROM series JOIN study ON study.id = series.study_pk WHERE series.id = {row}.series_pk"
_QUEUE = "INSERT INTO retention_stale (patient_pk) "
_COLUMNS = "tier, deleted_at, series_pk"


def create_triggers(dialect: str) -> None:
    new, old = _PATIENT.format(row="NEW"), _PATIENT.format(row="OLD")
    if dialect == "postgresql":
        op.execute(f"""
            CREATE FUNCTION retention_stale_instance() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP IN ('UPDATE', 'DELETE') THEN {_QUEUE}{old}; END IF;
                IF TG_OP IN ('INSERT', 'UPDATE') THEN {_QUEUE}{new}; END IF;
                RETURN NULL;
            END $$""")
        op.execute(f"CREATE TRIGGER retention_stale_instance AFTER INSERT OR DELETE OR UPDATE OF {_COLUMNS} "
                   f"ON instance FOR EACH ROW EXECUTE FUNCTION retention_stale_instance()")
    else:
        op.execute(f"CREATE TRIGGER retention_stale_instance_insert AFTER INSERT ON instance BEGIN {_QUEUE}{new}; END")
        op.execute(f"CREATE TRIGGER retention_stale_instance_update AFTER UPDATE OF {_COLUMNS} ON instance "
                   f"BEGIN {_QUEUE}{old}; {_QUEUE}{new}; END")
        op.execute(f"CREATE TRIGGER retention_stale_instance_delete AFTER DELETE ON instance BEGIN {_QUEUE}{old}; END")


def drop_triggers(dialect: str) -> None:
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS retention_stale_instance ON instance")
        op.execute("DROP FUNCTION IF EXISTS retention_stale_instance()")
    else:
        for event in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS retention_stale_instance_{event}")


def upgrade() -> None:
    with op.batch_alter_table("retention_answer") as batch:
        batch.add_column(sa.Column("active_images", sa.Boolean(), nullable=False, server_default=sa.false()))
    # The same count as PatientRecord.instances_active: visible images in the active tier.
    op.execute("""
        UPDATE retention_answer SET active_images = EXISTS (
            SELECT 1 FROM study JOIN series ON series.study_pk = study.id
            JOIN instance ON instance.series_pk = series.id
            WHERE study.patient_pk = retention_answer.patient_pk
              AND instance.deleted_at IS NULL AND instance.tier = 'active')""")
    op.create_index("ix_retention_answer_moves", "retention_answer", ["active_images", "last_visit", "patient_pk"])
    op.create_index("ix_retention_answer_review", "retention_answer",
                    ["needs_review", "sort_until", "patient_name", "patient_pk"])
    create_triggers(op.get_bind().dialect.name)


def downgrade() -> None:
    drop_triggers(op.get_bind().dialect.name)
    op.drop_index("ix_retention_answer_review", table_name="retention_answer")
    op.drop_index("ix_retention_answer_moves", table_name="retention_answer")
    with op.batch_alter_table("retention_answer") as batch:
        batch.drop_column("active_images")
