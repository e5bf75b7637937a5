"""query/retrieve: normalized search columns (person names folded, study time padded)

Revision ID: 0300_qr
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = "0300_qr"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("patient", schema=None) as batch_op:
        batch_op.add_column(sa.Column("patient_name_search", sa.String(length=324), nullable=True))
        batch_op.create_index(batch_op.f("ix_patient_patient_name_search"), ["patient_name_search"], unique=False)
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.add_column(sa.Column("study_time_norm", sa.String(length=13), nullable=True))
        batch_op.add_column(sa.Column("referring_physician_name_search", sa.String(length=324), nullable=True))
    # Rows indexed before this revision: fill the new columns from the existing ones.
    from archive_core.index.matching import fold_person_name
    from archive_core.values import normalize_tm

    conn = op.get_bind()
    for pk, name in conn.execute(sa.text("SELECT id, patient_name FROM patient WHERE patient_name IS NOT NULL")).all():
        conn.execute(
            sa.text("UPDATE patient SET patient_name_search = :v WHERE id = :id"),
            {"v": fold_person_name(name), "id": pk},
        )
    for pk, tm, ref in conn.execute(sa.text("SELECT id, study_time, referring_physician_name FROM study")).all():
        conn.execute(
            sa.text("UPDATE study SET study_time_norm = :t, referring_physician_name_search = :r WHERE id = :id"),
            {"t": normalize_tm(tm) if tm else None, "r": fold_person_name(ref) if ref else None, "id": pk},
        )


def downgrade() -> None:
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.drop_column("referring_physician_name_search")
        batch_op.drop_column("study_time_norm")
    with op.batch_alter_table("patient", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_patient_patient_name_search"))
        batch_op.drop_column("patient_name_search")
