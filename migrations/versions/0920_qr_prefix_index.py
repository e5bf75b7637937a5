"""query/retrieve: on PostgreSQL, an index that serves PatientName prefix wildcards (``DUP*``)

PostgreSQL uses a B-tree for ``LIKE 'DUP%'`` only under the "C" collation; under any other
(``C.UTF-8``, ``fr_FR.UTF-8``: the usual database defaults) every PatientName wildcard read
the whole patient table. A ``varchar_pattern_ops`` index serves the prefix whatever the
collation. SQLite matches with ``GLOB``, which ix_patient_patient_name_search already serves.

Revision ID: 0920_qr_prefix
Revises: 0910_find
"""
from alembic import op


revision = "0920_qr_prefix"
down_revision = "0910_find"
branch_labels = None
depends_on = None

_NAME = "ix_patient_patient_name_search_prefix"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(_NAME, "patient", ["patient_name_search"],
                        postgresql_ops={"patient_name_search": "varchar_pattern_ops"})


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index(_NAME, table_name="patient")
