"""alert ledger admission guarantee: one admitted ("run") alert per model and dedupe key

Revision ID: 0002_alert_admission
Revises: 0001
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_alert_admission"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.create_index(
            "ux_alerts_admitted",
            ["model_name", "dedupe_key"],
            unique=True,
            sqlite_where=sa.text("outcome = 'run'"),
            postgresql_where=sa.text("outcome = 'run'"),
        )


def downgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index("ux_alerts_admitted")
