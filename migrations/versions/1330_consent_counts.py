"""billing: exam groups counted per visit day, exam group and consent, kept in step by triggers

The dashboard's consent rate per exam group counted every exam group of the last twelve months
(100,000 rows in bench/web.py) each time an exam group or a consent was added. ``billing_consent_count``
holds the count per (visit day, exam group, consent): twelve months are at most a few thousand rows
whatever the number of patients. Counting per day (not per month) keeps the figure exact when exam
groups are dated after today in the current month (the figure counts visits up to today only).

Triggers on ``billing_exam_group`` (insert, delete, update of consent, exam_group or visit_date) take one
from the old row's count and add one to the new row's, whichever process writes; a count that falls to
zero is deleted. The back-fill counts the existing exam groups.

A later migration that recreates billing_exam_group on SQLite (alembic batch mode "recreate") drops its
triggers and must create them again (``create_triggers``).

Revision ID: 1330_consent_counts
Revises: 1310_dashboard_indexes
"""
from alembic import op
import sqlalchemy as sa


revision = "1330_consent_counts"
down_revision = "1310_dashboard_indexes"
branch_labels = None
depends_on = None

_KEY = "visit_date, exam_group, consent"
_COLUMNS = "consent, exam_group, visit_date"


def _add(row: str) -> str:
    return (f"INSERT INTO billing_consent_count ({_KEY}, n) "
            f"VALUES ({row}.visit_date, {row}.exam_group, {row}.consent, 1) "
            f"ON CONFLICT ({_KEY}) DO UPDATE SET n = billing_consent_count.n + 1")


def _take(row: str) -> str:
    where = f"visit_date = {row}.visit_date AND exam_group = {row}.exam_group AND consent = {row}.consent"
    return (f"UPDATE billing_consent_count SET n = n - 1 WHERE {where}; "
            f"DELETE FROM billing_consent_count WHERE {where} AND n <= 0")


def create_triggers(dialect: str) -> None:
    add, take = _add("NEW"), _take("OLD")
    if dialect == "postgresql":
        op.execute(f"""
            CREATE FUNCTION billing_consent_count_exam_group() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP IN ('UPDATE', 'DELETE') THEN {take}; END IF;
                IF TG_OP IN ('INSERT', 'UPDATE') THEN {add}; END IF;
                RETURN NULL;
            END $$""")
        op.execute(f"CREATE TRIGGER billing_consent_count_exam_group AFTER INSERT OR DELETE OR UPDATE OF {_COLUMNS} "
                   f"ON billing_exam_group FOR EACH ROW EXECUTE FUNCTION billing_consent_count_exam_group()")
    else:
        op.execute(f"CREATE TRIGGER billing_consent_count_insert AFTER INSERT ON billing_exam_group BEGIN {add}; END")
        op.execute(f"CREATE TRIGGER billing_consent_count_update AFTER UPDATE OF {_COLUMNS} ON billing_exam_group "
                   f"BEGIN {take}; {add}; END")
        op.execute(f"CREATE TRIGGER billing_consent_count_delete AFTER DELETE ON billing_exam_group BEGIN {take}; END")


def drop_triggers(dialect: str) -> None:
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS billing_consent_count_exam_group ON billing_exam_group")
        op.execute("DROP FUNCTION IF EXISTS billing_consent_count_exam_group()")
    else:
        for event in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS billing_consent_count_{event}")


def upgrade() -> None:
    op.create_table(
        "billing_consent_count",
        sa.Column("visit_date", sa.Date(), nullable=False),
        sa.Column("exam_group", sa.String(length=32), nullable=False),
        sa.Column("consent", sa.String(length=16), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("visit_date", "exam_group", "consent", name=op.f("pk_billing_consent_count")),
    )
    op.execute(f"INSERT INTO billing_consent_count ({_KEY}, n) "
               f"SELECT {_KEY}, COUNT(*) FROM billing_exam_group GROUP BY {_KEY}")
    create_triggers(op.get_bind().dialect.name)


def downgrade() -> None:
    drop_triggers(op.get_bind().dialect.name)
    op.drop_table("billing_consent_count")
