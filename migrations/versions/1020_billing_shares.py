"""billing: partial credit notes (several per invoice, each split between patient and insurer),
counted cash and cheques at day closing

Revision ID: 1020_billing_shares
Revises: 0400_billing
"""
from alembic import op
import sqlalchemy as sa


revision = "1020_billing_shares"
down_revision = "0400_billing"
branch_labels = None
depends_on = None


def _triggers(create: bool, table: str) -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        if create:
            op.execute(f"CREATE TRIGGER {table}_immutable BEFORE UPDATE OR DELETE ON {table} "
                       "FOR EACH ROW EXECUTE FUNCTION billing_refuse_change()")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_immutable ON {table}")
        return
    for verb in ("UPDATE", "DELETE"):
        if create:
            op.execute(f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                       f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: issued records never change'); END")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{verb.lower()}")


def _foreign_keys(on: bool) -> None:
    # SQLite rebuilds billing_credit_note (copy, drop, rename) and refunds in billing_payment refer
    # to it: the drop would fail with foreign keys on (deferring them does not help: the implicit
    # delete counts as a violation). The pragma only changes outside a transaction, hence the
    # autocommit block; the references are checked again before they are switched back on.
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.get_context().autocommit_block():
        raw = op.get_bind().connection.dbapi_connection
        if raw.in_transaction:  # archive_core.db emits its own BEGIN, even in autocommit mode
            raw.execute("COMMIT")
        if on:
            broken = raw.execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"foreign keys broken by the rebuild: {broken[:5]}")
        raw.execute(f"PRAGMA foreign_keys = {'ON' if on else 'OFF'}")


def upgrade() -> None:
    _foreign_keys(False)
    _triggers(False, "billing_credit_note")
    _triggers(False, "billing_closing")
    with op.batch_alter_table("billing_credit_note", schema=None) as batch_op:
        batch_op.drop_constraint("uq_billing_credit_note_invoice_id", type_="unique")
        batch_op.add_column(sa.Column("patient_cents", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("insurer_cents", sa.Integer(), nullable=True))
        batch_op.create_index("ix_billing_credit_note_invoice_id", ["invoice_id"], unique=False)
    # Credit notes of before: full cancellations. The insurer's part was its open claim's, if any.
    op.execute(
        "UPDATE billing_credit_note SET insurer_cents = -COALESCE((SELECT c.amount_cents FROM billing_claim c "
        "WHERE c.invoice_id = billing_credit_note.invoice_id AND c.status <> 'rejected'), 0)"
    )
    op.execute("UPDATE billing_credit_note SET patient_cents = total_cents - insurer_cents")
    with op.batch_alter_table("billing_credit_note", schema=None) as batch_op:
        batch_op.alter_column("patient_cents", existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column("insurer_cents", existing_type=sa.Integer(), nullable=False)
    with op.batch_alter_table("billing_closing", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expected_json", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("counted_cash_cents", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("counted_cheque_cents", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("cash_difference_cents", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("cheque_difference_cents", sa.Integer(), nullable=True))
    _triggers(True, "billing_credit_note")
    _triggers(True, "billing_closing")
    _foreign_keys(True)


def downgrade() -> None:
    _foreign_keys(False)
    _triggers(False, "billing_credit_note")
    _triggers(False, "billing_closing")
    with op.batch_alter_table("billing_closing", schema=None) as batch_op:
        for column in ("cheque_difference_cents", "cash_difference_cents", "counted_cheque_cents",
                       "counted_cash_cents", "expected_json"):
            batch_op.drop_column(column)
    with op.batch_alter_table("billing_credit_note", schema=None) as batch_op:
        batch_op.drop_index("ix_billing_credit_note_invoice_id")
        batch_op.drop_column("insurer_cents")
        batch_op.drop_column("patient_cents")
        batch_op.create_unique_constraint("uq_billing_credit_note_invoice_id", ["invoice_id"])
    _triggers(True, "billing_credit_note")
    _triggers(True, "billing_closing")
    _foreign_keys(True)
