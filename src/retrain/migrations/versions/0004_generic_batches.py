"""generic ingestion columns: a batch's event-time range and a quarantined row's key, for any use case

Revision ID: 0004_generic_batches
Revises: 0003_generic_rows
"""
from __future__ import annotations

from alembic import op

revision = "0004_generic_batches"
down_revision = "0003_generic_rows"
branch_labels = None
depends_on = None

RENAMES = {
    "ingestion_batches": (("min_sched_dep", "min_event_time"), ("max_sched_dep", "max_event_time")),
    "quarantined_rows": (("flight_id", "row_key"),),
}


def upgrade() -> None:
    for table, pairs in RENAMES.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for old, new in pairs:
                batch_op.alter_column(old, new_column_name=new)


def downgrade() -> None:
    for table, pairs in RENAMES.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for old, new in pairs:
                batch_op.alter_column(new, new_column_name=old)
