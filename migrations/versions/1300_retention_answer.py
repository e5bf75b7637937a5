"""retention: stored answers (kept until, basis, review) kept in step by triggers, back-filled by the rule

The manager's lists read ``retention_answer`` (indexed) instead of deciding every patient on each
load. Triggers on study, patient, legal_hold and retention_death queue the patient in
``retention_stale`` whenever a fact the rule reads is written, whichever process writes it;
backoffice/retention/answers.py decides the queued patients again before a list is read.

The back-fill decides every existing patient with the same function, archive_core.retention.decide.
Facts are read here with plain SQL (the ORM models of later versions may hold columns this
revision does not know).

A later migration that recreates study, patient, legal_hold or retention_death on SQLite (alembic
batch mode "recreate") drops their triggers and must create them again (``create_triggers``).

Revision ID: 1300_retention_answer
Revises: 0510_purge_checks
"""
from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

from alembic import op
import sqlalchemy as sa


revision = "1300_retention_answer"
down_revision = "0510_purge_checks"
branch_labels = None
depends_on = ("0930_patient_search",)

# (table, the patient row it concerns as SQL over the row NEW/OLD, columns whose update matters)
_SOURCES = {
    "study": ("SELECT {row}.patient_pk", ("patient_pk", "study_date", "external", "deleted_at")),
    "patient": ("SELECT {row}.id", ("patient_id", "issuer_of_patient_id", "patient_name", "patient_birth_date",
                                    "deleted_at")),
    "legal_hold": ("SELECT id FROM patient WHERE patient_id = {row}.patient_id "
                   "AND issuer_of_patient_id = {row}.issuer_of_patient_id", ()),
    "retention_death": ("SELECT id FROM patient WHERE patient_id = {row}.patient_id "
                        "AND issuer_of_patient_id = {row}.issuer_of_patient_id", ()),
}


def create_triggers(dialect: str) -> None:
    for table, (which, columns) in _SOURCES.items():
        new, old = which.format(row="NEW"), which.format(row="OLD")
        queue = "INSERT INTO retention_stale (patient_pk) "
        of = f" OF {', '.join(columns)}" if columns else ""
        if dialect == "postgresql":
            op.execute(f"""
                CREATE FUNCTION retention_stale_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF TG_OP IN ('UPDATE', 'DELETE') THEN {queue}{old}; END IF;
                    IF TG_OP IN ('INSERT', 'UPDATE') THEN {queue}{new}; END IF;
                    RETURN NULL;
                END $$""")
            op.execute(f"CREATE TRIGGER retention_stale_{table} AFTER INSERT OR DELETE OR UPDATE{of} ON {table} "
                       f"FOR EACH ROW EXECUTE FUNCTION retention_stale_{table}()")
        else:
            op.execute(f"CREATE TRIGGER retention_stale_{table}_insert AFTER INSERT ON {table} "
                       f"BEGIN {queue}{new}; END")
            op.execute(f"CREATE TRIGGER retention_stale_{table}_update AFTER UPDATE{of} ON {table} "
                       f"BEGIN {queue}{old}; {queue}{new}; END")
            op.execute(f"CREATE TRIGGER retention_stale_{table}_delete AFTER DELETE ON {table} "
                       f"BEGIN {queue}{old}; END")


def drop_triggers(dialect: str) -> None:
    for table in _SOURCES:
        if dialect == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS retention_stale_{table} ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS retention_stale_{table}()")
        else:
            for event in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS retention_stale_{table}_{event}")


def _local_date(at) -> date:
    if isinstance(at, str):  # SQLite returns what was stored
        at = datetime.fromisoformat(at)
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return at.astimezone(ZoneInfo("Europe/Paris")).date()


def _backfill(bind) -> None:
    from archive_core.retention import HoldPeriod, RetentionFacts, decide
    from archive_core.values import parse_da
    from backoffice.retention.answers import answer_row

    patients = bind.execute(sa.text(
        "SELECT id, patient_id, issuer_of_patient_id, patient_name, patient_birth_date FROM patient "
        "WHERE deleted_at IS NULL")).all()
    if not patients:
        return
    visits: dict[int, list[date]] = {}
    for pk, study_date in bind.execute(sa.text(
            "SELECT patient_pk, study_date FROM study WHERE deleted_at IS NULL AND NOT external")):
        d = parse_da(study_date)
        if d is not None:
            visits.setdefault(pk, []).append(d)
    deaths = {(p, i): d if isinstance(d, date) else date.fromisoformat(d) for p, i, d in bind.execute(sa.text(
        "SELECT patient_id, issuer_of_patient_id, death_date FROM retention_death"))}
    holds: dict[tuple[str, str], list[HoldPeriod]] = {}
    for p, i, placed, released in bind.execute(sa.text(
            "SELECT patient_id, issuer_of_patient_id, placed_at, released_at FROM legal_hold ORDER BY id")):
        holds.setdefault((p, i), []).append(
            HoldPeriod(_local_date(placed), _local_date(released) if released is not None else None))
    table = sa.table("retention_answer", *(sa.column(c) for c in (
        "patient_pk", "patient_id", "issuer_of_patient_id", "patient_name", "keep_until", "sort_until", "basis",
        "needs_review", "last_visit")))
    rows = []
    for pk, patient_id, issuer, name, birth in patients:
        facts = RetentionFacts(tuple(visits.get(pk, ())), parse_da(birth), deaths.get((patient_id, issuer)),
                               tuple(holds.get((patient_id, issuer), ())))
        rows.append(answer_row(pk, patient_id, issuer, name, decide(facts, date(2000, 1, 1))))
        if len(rows) >= 5000:
            bind.execute(table.insert(), rows)
            rows = []
    if rows:
        bind.execute(table.insert(), rows)


def upgrade() -> None:
    op.create_table(
        "retention_answer",
        sa.Column("patient_pk", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=False),
        sa.Column("patient_name", sa.String(length=324), nullable=False),
        sa.Column("keep_until", sa.Date(), nullable=True),
        sa.Column("sort_until", sa.Date(), nullable=False),
        sa.Column("basis", sa.String(length=32), nullable=False),
        sa.Column("needs_review", sa.Boolean(), nullable=False),
        sa.Column("last_visit", sa.Date(), nullable=True),
        sa.PrimaryKeyConstraint("patient_pk", name=op.f("pk_retention_answer")),
    )
    op.create_index("ix_retention_answer_order", "retention_answer",
                    ["sort_until", "patient_name", "patient_pk", "needs_review"])
    op.create_index("ix_retention_answer_patient", "retention_answer", ["patient_id", "issuer_of_patient_id"])
    op.create_table(
        "retention_stale",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_pk", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retention_stale")),
    )
    bind = op.get_bind()
    _backfill(bind)
    create_triggers(bind.dialect.name)


def downgrade() -> None:
    drop_triggers(op.get_bind().dialect.name)
    op.drop_table("retention_stale")
    op.drop_index("ix_retention_answer_patient", table_name="retention_answer")
    op.drop_index("ix_retention_answer_order", table_name="retention_answer")
    op.drop_table("retention_answer")
