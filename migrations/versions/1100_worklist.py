"""worklist: scheduled procedure steps (Modality Worklist C-FIND) and performed steps (MPPS)

The back-office's check-in creates a worklist item; the DICOM server answers the modality's
worklist queries from it and records the performed procedure steps the modality sends.
Its own branch from 0001, like every area (``db upgrade`` upgrades "heads").

Revision ID: 1100_worklist
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = "1100_worklist"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worklist_item",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("accession_number", sa.String(length=16), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("patient_name", sa.String(length=324), nullable=True),
        sa.Column("patient_name_search", sa.String(length=324), nullable=True),
        sa.Column("patient_birth_date", sa.String(length=8), nullable=True),
        sa.Column("patient_sex", sa.String(length=16), nullable=True),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("requested_procedure_id", sa.String(length=16), nullable=False),
        sa.Column("requested_procedure_description", sa.String(length=64), nullable=True),
        sa.Column("step_id", sa.String(length=16), nullable=False),
        sa.Column("step_description", sa.String(length=64), nullable=True),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("station_ae_title", sa.String(length=16), nullable=True),
        sa.Column("start_date", sa.String(length=8), nullable=False),
        sa.Column("start_time", sa.String(length=13), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worklist_item")),
        sa.UniqueConstraint("accession_number", name=op.f("uq_worklist_item_accession_number")),
    )
    for column in ("patient_id", "patient_name_search", "modality", "station_ae_title", "start_date", "status"):
        op.create_index(op.f(f"ix_worklist_item_{column}"), "worklist_item", [column])
    op.create_table(
        "worklist_performed_step",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("performed_by_ae", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["item_id"], ["worklist_item.id"],
                                name=op.f("fk_worklist_performed_step_item_id_worklist_item")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worklist_performed_step")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_worklist_performed_step_sop_instance_uid")),
    )
    op.create_index(op.f("ix_worklist_performed_step_item_id"), "worklist_performed_step", ["item_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_worklist_performed_step_item_id"), table_name="worklist_performed_step")
    op.drop_table("worklist_performed_step")
    for column in ("patient_id", "patient_name_search", "modality", "station_ae_title", "start_date", "status"):
        op.drop_index(op.f(f"ix_worklist_item_{column}"), table_name="worklist_item")
    op.drop_table("worklist_item")
