"""query/retrieve: indexes that serve PatientName wildcards (``DUP*``) in every name group, on both engines

A PatientName key of one group is matched against the alphabetic, ideographic and phonetic
groups (an OR of three prefix conditions). The phonetic group had no index, so SQLite read
the whole study table for any name wildcard; with it, SQLite searches the three indexes
(MULTI-INDEX OR). PostgreSQL uses a B-tree for ``LIKE 'DUP%'`` only under the "C" collation;
under any other (``C.UTF-8``, ``fr_FR.UTF-8``: the usual database defaults) each name wildcard
read the whole patient table. ``varchar_pattern_ops`` indexes serve the prefixes whatever the
collation (PostgreSQL only: SQLite's GLOB uses the plain ones).

Revision ID: 0920_qr_prefix
Revises: 0910_find
"""
from alembic import op


revision = "0920_qr_prefix"
down_revision = "0910_find"
branch_labels = None
depends_on = None

_NAME_COLUMNS = ("patient_name_search", "patient_name_ideographic", "patient_name_phonetic")


def upgrade() -> None:
    with op.batch_alter_table("patient", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_patient_patient_name_phonetic"), ["patient_name_phonetic"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        for column in _NAME_COLUMNS:
            op.create_index(f"ix_patient_{column}_prefix", "patient", [column],
                            postgresql_ops={column: "varchar_pattern_ops"})


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for column in _NAME_COLUMNS:
            op.drop_index(f"ix_patient_{column}_prefix", table_name="patient")
    with op.batch_alter_table("patient", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_patient_patient_name_phonetic"))
