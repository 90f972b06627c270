"""Migration 0003: flight-only predictions/outcomes become generic rows, with every row carried over.

A database at 0002 gets flight predictions and outcomes in the old layout (raw SQL), is upgraded to
head, and must hold the same rows in the new columns; the ORM models must match the migrated
schema. Runs on SQLite and on PostgreSQL (a database created and dropped here; skipped when
127.0.0.1:5432 does not answer).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import DateTime, bindparam, inspect, select, text
from sqlalchemy.engine import Engine
from tests.support.pg import scratch_database

from retrain.core import db

BEFORE = "0002_alert_admission"
HEAD = "0004_generic_batches"
T0 = datetime(2013, 2, 10, 11, 0)  # naive UTC, as the old columns stored it
TABLES = {"predictions", "outcomes"}

OLD_PREDICTIONS: list[dict[str, Any]] = [
    {"request_id": "r1", "flight_id": "2013-02-10_UA1545_EWR_0615", "model_name": "flight_delay",
     "model_version": "v1", "predicted_at": T0, "sched_dep": T0 + timedelta(hours=1), "carrier": "UA",
     "origin": "EWR", "dest": "IAH", "tailnum": "N14228", "features": '{"distance": 1400.0, "plane_year": null}',
     "missing_features": '["plane_year"]', "score": 0.31, "shadow_version": "v2", "shadow_score": 0.29},
    {"request_id": "r1", "flight_id": "2013-02-10_B61_JFK_0700", "model_name": "flight_delay",
     "model_version": "v1", "predicted_at": T0, "sched_dep": T0 + timedelta(hours=2), "carrier": "B6",
     "origin": "JFK", "dest": "BOS", "tailnum": "", "features": '{"distance": 187.0, "plane_year": 2004.0}',
     "missing_features": "[]", "score": 0.12, "shadow_version": None, "shadow_score": None},
    {"request_id": "r2", "flight_id": "2013-02-11_AA5_LGA_0900", "model_name": "flight_delay",
     "model_version": "v2", "predicted_at": T0 + timedelta(days=1), "sched_dep": T0 + timedelta(days=1, hours=3),
     "carrier": "AA", "origin": "LGA", "dest": "ORD", "tailnum": "N3ALAA", "features": '{"distance": 733.0}',
     "missing_features": "[]", "score": 0.77, "shadow_version": None, "shadow_score": None},
]
OLD_OUTCOMES: list[dict[str, Any]] = [
    {"flight_id": "2013-02-10_UA1545_EWR_0615", "sched_dep": T0 + timedelta(hours=1),
     "landed_at": T0 + timedelta(hours=5, minutes=10), "arr_delay": 37.0, "late": True, "batch_id": 1},
    {"flight_id": "2013-02-10_B61_JFK_0700", "sched_dep": T0 + timedelta(hours=2),
     "landed_at": T0 + timedelta(hours=3), "arr_delay": -4.5, "late": False, "batch_id": None},
]


def _config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(db.MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'retrain.db'}"
    else:
        with scratch_database("migration") as pg:
            yield pg


@pytest.fixture()
def engine(url: str) -> Iterator[Engine]:
    eng = db.make_engine(url)
    try:
        yield eng
    finally:
        eng.dispose()


def _seed_old_layout(engine: Engine) -> None:
    times = [bindparam(n, type_=DateTime()) for n in ("predicted_at", "sched_dep")]
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO ingestion_batches (id, kind, source, status, received, accepted, quarantined, outcomes, "
            "created_at) VALUES (1, 'flights', 'test', 'landed', 3, 3, 0, 1, :at)"
        ).bindparams(bindparam("at", type_=DateTime())), {"at": T0})
        conn.execute(text(
            "INSERT INTO predictions (request_id, flight_id, model_name, model_version, predicted_at, sched_dep, "
            "carrier, origin, dest, tailnum, features, missing_features, score, shadow_version, shadow_score) "
            "VALUES (:request_id, :flight_id, :model_name, :model_version, :predicted_at, :sched_dep, :carrier, "
            ":origin, :dest, :tailnum, :features, :missing_features, :score, :shadow_version, :shadow_score)"
        ).bindparams(*times), OLD_PREDICTIONS)
        conn.execute(text(
            "INSERT INTO outcomes (flight_id, sched_dep, landed_at, arr_delay, late, batch_id) "
            "VALUES (:flight_id, :sched_dep, :landed_at, :arr_delay, :late, :batch_id)"
        ).bindparams(bindparam("sched_dep", type_=DateTime()), bindparam("landed_at", type_=DateTime())),
            OLD_OUTCOMES)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC)


def _schema_diffs(engine: Engine) -> list[Any]:
    """Differences between `db.Base.metadata` and the database, for the predictions/outcomes tables."""

    def table_of(diff: Any) -> str | None:
        if isinstance(diff, list):  # modify_* groups: (op, schema, table, column, ...)
            return str(diff[0][2])
        obj = diff[1]
        if hasattr(obj, "table") and obj.table is not None:  # index / constraint
            return str(obj.table.name)
        if hasattr(obj, "name") and diff[0].endswith("_table"):
            return str(obj.name)
        return str(diff[2]) if len(diff) > 2 else None

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        diffs = [d for d in compare_metadata(ctx, db.Base.metadata) if table_of(d) in TABLES]
    inspector = inspect(engine)  # autogenerate does not compare primary keys
    for name in sorted(TABLES):
        want = [c.name for c in db.Base.metadata.tables[name].primary_key.columns]
        got = inspector.get_pk_constraint(name)["constrained_columns"]
        if got != want:
            diffs.append(("primary_key", name, got, want))
    return diffs


def test_upgrade_carries_flight_rows_into_the_generic_columns(url: str, engine: Engine) -> None:
    cfg = _config(url)
    command.upgrade(cfg, BEFORE)
    _seed_old_layout(engine)

    command.upgrade(cfg, "head")

    sessions = db.session_factory(engine)
    with sessions() as s:
        preds = list(s.scalars(select(db.Prediction).order_by(db.Prediction.id)))
        outcomes = {o.entity_key: o for o in s.scalars(select(db.Outcome))}
        version = s.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    assert version == HEAD
    assert [p.id for p in preds] == [1, 2, 3]
    for got, old in zip(preds, OLD_PREDICTIONS, strict=True):
        assert got.request_id == old["request_id"] and got.model_name == "flight_delay"
        assert got.model_version == old["model_version"]
        assert got.entity_key == old["flight_id"]
        assert got.event_time == _utc(old["sched_dep"]) and got.predicted_at == _utc(old["predicted_at"])
        assert got.attributes == {k: old[k] for k in ("carrier", "origin", "dest", "tailnum")}
        assert got.score == pytest.approx(old["score"])
        assert (got.shadow_version, got.shadow_score) == (old["shadow_version"], old["shadow_score"])
    assert preds[0].features == {"distance": 1400.0, "plane_year": None}
    assert preds[0].missing_features == ["plane_year"] and preds[1].missing_features == []

    assert set(outcomes) == {o["flight_id"] for o in OLD_OUTCOMES}
    for old in OLD_OUTCOMES:
        out = outcomes[str(old["flight_id"])]
        assert out.model_name == "flight_delay"
        assert out.event_time == _utc(old["sched_dep"]) and out.available_at == _utc(old["landed_at"])
        assert out.label == (1.0 if old["late"] else 0.0) and isinstance(out.label, float)
        assert out.detail == {"arr_delay": pytest.approx(old["arr_delay"])}
        assert out.batch_id == old["batch_id"]

    # new rows go in through the ORM after the migration (the id sequence survived on PostgreSQL)
    with db.transaction(sessions) as s:
        s.add(db.Prediction(request_id="r3", model_name="other_use_case", model_version="v9",
                            predicted_at=_utc(T0), entity_key="order-17", event_time=_utc(T0),
                            attributes={"region": "north"}, features={"x": 1.0}, score=12.5))
        s.add(db.Outcome(model_name="other_use_case", entity_key=str(OLD_OUTCOMES[0]["flight_id"]),
                         event_time=_utc(T0), available_at=_utc(T0), label=11.0))
    with sessions() as s:
        assert s.scalar(select(db.Prediction.id).where(db.Prediction.request_id == "r3")) == 4
        assert len(list(s.scalars(select(db.Outcome)))) == 3  # same key, another use case

    assert _schema_diffs(engine) == []


def test_orm_matches_a_fresh_head_schema(url: str, engine: Engine) -> None:
    db.upgrade(url)
    assert _schema_diffs(engine) == []


def test_downgrade_restores_the_flight_columns(url: str, engine: Engine) -> None:
    cfg = _config(url)
    command.upgrade(cfg, BEFORE)
    _seed_old_layout(engine)
    command.upgrade(cfg, "head")

    command.downgrade(cfg, BEFORE)

    with engine.connect() as conn:
        preds = conn.execute(text(
            "SELECT flight_id, carrier, origin, dest, tailnum, score FROM predictions ORDER BY id")).all()
        outs: dict[str, float] = dict(conn.execute(text("SELECT flight_id, arr_delay FROM outcomes")).tuples().all())
        late: dict[str, Any] = dict(conn.execute(text("SELECT flight_id, late FROM outcomes")).tuples().all())
    assert [tuple(r) for r in preds] == [
        (o["flight_id"], o["carrier"], o["origin"], o["dest"], o["tailnum"], pytest.approx(o["score"]))
        for o in OLD_PREDICTIONS]
    assert outs == {o["flight_id"]: pytest.approx(o["arr_delay"]) for o in OLD_OUTCOMES}
    assert {k: bool(v) for k, v in late.items()} == {o["flight_id"]: o["late"] for o in OLD_OUTCOMES}
    command.upgrade(cfg, "head")  # and up again
    assert _schema_diffs(engine) == []
