"""prediction row keys: a unique key per logged prediction, so a replayed spill file inserts its rows once

`predictions.row_key` (unique index `ix_predictions_row_key`): the prediction log sets it before a
row is first written or spilled, and inserts with "on conflict do nothing" on it. Existing rows get
'id-<id>', unique as the ids are, and never produced by the log (its keys contain no 'i').

SQLite recreates the table for the NOT NULL change (batch mode); PostgreSQL alters it in place.
Prediction ids and their sequence are kept.

Revision ID: 0005_prediction_row_key
Revises: 0004_generic_batches
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_prediction_row_key"
down_revision = "0004_generic_batches"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("row_key", sa.String(length=64), nullable=True))
    op.execute("UPDATE predictions SET row_key = 'id-' || CAST(id AS VARCHAR(20))")
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.alter_column("row_key", existing_type=sa.String(length=64), nullable=False)
        batch_op.create_index(batch_op.f("ix_predictions_row_key"), ["row_key"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_predictions_row_key"))
        batch_op.drop_column("row_key")
