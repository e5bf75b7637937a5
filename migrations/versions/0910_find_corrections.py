"""C-FIND corrections: person name component groups matched on their own; Rows, Columns, Number of Frames

Revision ID: 0910_find
Revises: 0300_qr
"""
from alembic import op
import sqlalchemy as sa


revision = "0910_find"
down_revision = "0300_qr"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("patient", schema=None) as batch_op:
        batch_op.add_column(sa.Column("patient_name_ideographic", sa.String(length=324), nullable=True))
        batch_op.add_column(sa.Column("patient_name_phonetic", sa.String(length=324), nullable=True))
        batch_op.create_index(batch_op.f("ix_patient_patient_name_ideographic"), ["patient_name_ideographic"],
                              unique=False)
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.add_column(sa.Column("referring_physician_name_ideographic", sa.String(length=324), nullable=True))
        batch_op.add_column(sa.Column("referring_physician_name_phonetic", sa.String(length=324), nullable=True))
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.add_column(sa.Column("image_rows", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("image_columns", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("number_of_frames", sa.Integer(), nullable=True))
    # Names indexed before this revision: fill the group columns from the stored names. (Rows, Columns
    # and Number of Frames are in the files only: instances indexed before answer them empty.)
    from archive_core.index.matching import fold_name_group, name_groups

    conn = op.get_bind()
    for pk, name in conn.execute(sa.text("SELECT id, patient_name FROM patient WHERE patient_name LIKE '%=%'")).all():
        _a, ideographic, phonetic = name_groups(name)
        conn.execute(sa.text("UPDATE patient SET patient_name_ideographic = :i, patient_name_phonetic = :p WHERE id = :id"),
                     {"i": fold_name_group(ideographic), "p": fold_name_group(phonetic), "id": pk})
    for pk, name in conn.execute(
        sa.text("SELECT id, referring_physician_name FROM study WHERE referring_physician_name LIKE '%=%'")
    ).all():
        _a, ideographic, phonetic = name_groups(name)
        conn.execute(
            sa.text("UPDATE study SET referring_physician_name_ideographic = :i, "
                    "referring_physician_name_phonetic = :p WHERE id = :id"),
            {"i": fold_name_group(ideographic), "p": fold_name_group(phonetic), "id": pk},
        )


def downgrade() -> None:
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.drop_column("number_of_frames")
        batch_op.drop_column("image_columns")
        batch_op.drop_column("image_rows")
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.drop_column("referring_physician_name_phonetic")
        batch_op.drop_column("referring_physician_name_ideographic")
    with op.batch_alter_table("patient", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_patient_patient_name_ideographic"))
        batch_op.drop_column("patient_name_phonetic")
        batch_op.drop_column("patient_name_ideographic")
