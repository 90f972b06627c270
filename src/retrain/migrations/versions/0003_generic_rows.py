"""generic predictions and outcomes: any use case's rows, no flight columns

`predictions`: flight_id -> entity_key, sched_dep -> event_time, carrier/origin/dest/tailnum -> the
`attributes` JSON. `outcomes`: keyed by (model_name, entity_key); sched_dep -> event_time,
landed_at -> available_at, late -> label (0.0/1.0), arr_delay -> the `detail` JSON. Existing rows
are flight rows: their outcomes get model_name 'flight_delay' (the `Settings.model_name` default;
predictions already carried their model name).

The tables are altered in place (batch mode: SQLite recreates them, PostgreSQL alters them), so
prediction ids and their sequence are kept.

Revision ID: 0003_generic_rows
Revises: 0002_alert_admission
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import retrain.core.db

revision = "0003_generic_rows"
down_revision = "0002_alert_admission"
branch_labels = None
depends_on = None

FLIGHT_MODEL = "flight_delay"
FLIGHT_ATTRIBUTES = ("carrier", "origin", "dest", "tailnum")


def _json_object(dialect: str, pairs: dict[str, str]) -> str:
    """SQL building a JSON object from {key: sql expression} (SQLite json_object, PostgreSQL json_build_object)."""
    fn = "json_build_object" if dialect == "postgresql" else "json_object"
    args = ", ".join(f"'{key}', {expr}" for key, expr in pairs.items())
    return f"{fn}({args})"


def _json_text(dialect: str, column: str, key: str) -> str:
    """SQL reading one key of a JSON column as text."""
    if dialect == "postgresql":
        return f"({column} ->> '{key}')"
    return f"json_extract({column}, '$.{key}')"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name

    # ---------------------------------------------------------------- predictions
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("entity_key", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("event_time", retrain.core.db.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("attributes", sa.JSON(), nullable=True))
    attributes = _json_object(dialect, {k: k for k in FLIGHT_ATTRIBUTES})
    op.execute(f"UPDATE predictions SET entity_key = flight_id, event_time = sched_dep, attributes = {attributes}")
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_index("ix_predictions_flight_id")
        batch_op.drop_index("ix_predictions_sched_dep")
        for name in ("flight_id", "sched_dep", *FLIGHT_ATTRIBUTES):
            batch_op.drop_column(name)
        batch_op.alter_column("entity_key", existing_type=sa.String(length=128), nullable=False)
        batch_op.alter_column("event_time", existing_type=retrain.core.db.UTCDateTime(), nullable=False)
        batch_op.alter_column("attributes", existing_type=sa.JSON(), nullable=False)
        batch_op.create_index(batch_op.f("ix_predictions_entity_key"), ["entity_key"], unique=False)
        batch_op.create_index(batch_op.f("ix_predictions_event_time"), ["event_time"], unique=False)

    # ---------------------------------------------------------------- outcomes
    with op.batch_alter_table("outcomes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model_name", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("entity_key", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("event_time", retrain.core.db.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("available_at", retrain.core.db.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("label", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("detail", sa.JSON(), nullable=True))
    detail = _json_object(dialect, {"arr_delay": "arr_delay"})
    op.execute(
        f"UPDATE outcomes SET model_name = '{FLIGHT_MODEL}', entity_key = flight_id, event_time = sched_dep, "
        f"available_at = landed_at, label = CASE WHEN late THEN 1.0 ELSE 0.0 END, detail = {detail}"
    )
    with op.batch_alter_table("outcomes", schema=None, recreate="auto") as batch_op:
        batch_op.drop_index("ix_outcomes_landed_at")
        batch_op.drop_index("ix_outcomes_sched_dep")
        if dialect != "sqlite":  # SQLite's primary key is unnamed; the recreated table gets the new one
            batch_op.drop_constraint("outcomes_pkey", type_="primary")
        for name in ("flight_id", "sched_dep", "landed_at", "arr_delay", "late"):
            batch_op.drop_column(name)
        for name, type_ in (("model_name", sa.String(length=128)), ("entity_key", sa.String(length=128)),
                            ("event_time", retrain.core.db.UTCDateTime()),
                            ("available_at", retrain.core.db.UTCDateTime()),
                            ("label", sa.Float()), ("detail", sa.JSON())):
            batch_op.alter_column(name, existing_type=type_, nullable=False)
        batch_op.create_primary_key("outcomes_pkey", ["model_name", "entity_key"])
        batch_op.create_index(batch_op.f("ix_outcomes_available_at"), ["available_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_outcomes_event_time"), ["event_time"], unique=False)


def downgrade() -> None:
    """Back to the flight columns; refused once the tables hold rows of more than one use case."""
    bind = op.get_bind()
    dialect = bind.dialect.name
    names = {r[0] for r in bind.execute(sa.text(
        "SELECT DISTINCT model_name FROM outcomes UNION SELECT DISTINCT model_name FROM predictions"))}
    if len(names) > 1:
        raise RuntimeError(f"downgrade below 0003: the predictions/outcomes tables hold rows of {sorted(names)}; "
                           "the flight-only layout holds one use case (delete the other rows first)")

    # ---------------------------------------------------------------- predictions
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("flight_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("sched_dep", retrain.core.db.UTCDateTime(), nullable=True))
        for name, length in (("carrier", 8), ("origin", 8), ("dest", 8), ("tailnum", 16)):
            batch_op.add_column(sa.Column(name, sa.String(length=length), nullable=True))
    sets = ", ".join(f"{k} = COALESCE({_json_text(dialect, 'attributes', k)}, '')" for k in FLIGHT_ATTRIBUTES)
    op.execute(f"UPDATE predictions SET flight_id = entity_key, sched_dep = event_time, {sets}")
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_index("ix_predictions_entity_key")
        batch_op.drop_index("ix_predictions_event_time")
        for name in ("entity_key", "event_time", "attributes"):
            batch_op.drop_column(name)
        batch_op.alter_column("flight_id", existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column("sched_dep", existing_type=retrain.core.db.UTCDateTime(), nullable=False)
        for name, length in (("carrier", 8), ("origin", 8), ("dest", 8), ("tailnum", 16)):
            batch_op.alter_column(name, existing_type=sa.String(length=length), nullable=False)
        batch_op.create_index(batch_op.f("ix_predictions_flight_id"), ["flight_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_predictions_sched_dep"), ["sched_dep"], unique=False)

    # ---------------------------------------------------------------- outcomes
    with op.batch_alter_table("outcomes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("flight_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("sched_dep", retrain.core.db.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("landed_at", retrain.core.db.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("arr_delay", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("late", sa.Boolean(), nullable=True))
    arr_delay = f"CAST({_json_text(dialect, 'detail', 'arr_delay')} AS FLOAT)"
    op.execute(
        f"UPDATE outcomes SET flight_id = entity_key, sched_dep = event_time, landed_at = available_at, "
        f"arr_delay = COALESCE({arr_delay}, 0.0), late = (label >= 0.5)"
    )
    with op.batch_alter_table("outcomes", schema=None) as batch_op:
        batch_op.drop_index("ix_outcomes_available_at")
        batch_op.drop_index("ix_outcomes_event_time")
        if dialect != "sqlite":
            batch_op.drop_constraint("outcomes_pkey", type_="primary")
        for name in ("model_name", "entity_key", "event_time", "available_at", "label", "detail"):
            batch_op.drop_column(name)
        for name, type_ in (("flight_id", sa.String(length=64)), ("sched_dep", retrain.core.db.UTCDateTime()),
                            ("landed_at", retrain.core.db.UTCDateTime()), ("arr_delay", sa.Float()),
                            ("late", sa.Boolean())):
            batch_op.alter_column(name, existing_type=type_, nullable=False)
        batch_op.create_primary_key("outcomes_pkey", ["flight_id"])
        batch_op.create_index(batch_op.f("ix_outcomes_landed_at"), ["landed_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_outcomes_sched_dep"), ["sched_dep"], unique=False)
