"""patient search: a word table of the folded patient names, prefix index on Patient ID, birth date index

The one patient search matches each typed word against the start of any word of a name
("jean" finds DUPRÉ^JEAN-FRANÇOIS): a table of words, indexed, answers that without reading
every patient. Filled here from ``patient_name_search`` for existing rows; the ORM keeps it in
step afterwards (archive_core/index/patient_search.py). PostgreSQL gets ``varchar_pattern_ops``
indexes so that ``LIKE 'JEA%'`` uses them whatever the collation (SQLite's GLOB uses the plain ones).

Revision ID: 0930_patient_search
Revises: 0920_qr_prefix
"""
import re

from alembic import op
import sqlalchemy as sa


revision = "0930_patient_search"
down_revision = "0920_qr_prefix"
branch_labels = None
depends_on = None

_SPLIT = re.compile(r"[^0-9A-Z]+")


def upgrade() -> None:
    op.create_table(
        "patient_name_token",
        sa.Column("patient_pk", sa.Integer(), nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["patient_pk"], ["patient.id"], ondelete="CASCADE",
                                name=op.f("fk_patient_name_token_patient_pk_patient")),
        sa.PrimaryKeyConstraint("patient_pk", "token", name=op.f("pk_patient_name_token")),
    )
    op.create_index(op.f("ix_patient_name_token_token"), "patient_name_token", ["token"], unique=False)
    op.create_index(op.f("ix_patient_patient_birth_date"), "patient", ["patient_birth_date"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.create_index("ix_patient_name_token_token_prefix", "patient_name_token", ["token"],
                        postgresql_ops={"token": "varchar_pattern_ops"})
        op.create_index("ix_patient_patient_id_prefix", "patient", ["patient_id"],
                        postgresql_ops={"patient_id": "varchar_pattern_ops"})
    bind = op.get_bind()
    tokens = sa.table("patient_name_token", sa.column("patient_pk"), sa.column("token"))
    rows = []
    for pk, folded in bind.execute(sa.text("SELECT id, patient_name_search FROM patient "
                                           "WHERE patient_name_search IS NOT NULL")):
        for word in {w[:64] for w in _SPLIT.split(folded.split("=")[0]) if w}:
            rows.append({"patient_pk": pk, "token": word})
        if len(rows) >= 10_000:
            op.bulk_insert(tokens, rows)
            rows = []
    if rows:
        op.bulk_insert(tokens, rows)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_patient_patient_id_prefix", table_name="patient")
        op.drop_index("ix_patient_name_token_token_prefix", table_name="patient_name_token")
    op.drop_index(op.f("ix_patient_patient_birth_date"), table_name="patient")
    op.drop_index(op.f("ix_patient_name_token_token"), table_name="patient_name_token")
    op.drop_table("patient_name_token")
