"""Migration 0003: flight-only predictions/outcomes become generic rows, with every row carried over.

A database at 0002 gets flight predictions and outcomes in the old layout (raw SQL), is upgraded to
head, and must hold the same rows in the new columns; the ORM models must match the migrated
schema. Migration 0005 (unique `predictions.row_key`) upgrades a populated 0004 database too.
Runs on SQLite and on PostgreSQL (a database created and dropped here; skipped when the server of
RETRAIN_TEST_PG_ADMIN does not answer, failed instead under RETRAIN_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

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

from retrain.core import db

BEFORE = "0002_alert_admission"
BEFORE_ROW_KEY = "0004_generic_batches"
HEAD = "0005_prediction_row_key"
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


def test_upgrade_carries_flight_rows_into_the_generic_columns(db_url: str, db_engine: Engine) -> None:
    url, engine = db_url, db_engine
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


def test_orm_matches_a_fresh_head_schema(db_url: str, db_engine: Engine) -> None:
    url, engine = db_url, db_engine
    db.upgrade(url)
    assert _schema_diffs(engine) == []


def test_downgrade_restores_the_flight_columns(db_url: str, db_engine: Engine) -> None:
    url, engine = db_url, db_engine
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


def _seed_generic_predictions(engine: Engine, n: int) -> None:
    """Rows in the 0004 layout (no row_key), as the prediction log wrote them before 0005."""
    rows = [{"request_id": f"q{i // 2}", "model_name": "flight_delay", "model_version": "v1",
             "predicted_at": T0, "entity_key": f"e{i % 3}", "event_time": T0 + timedelta(minutes=i),
             "attributes": '{"carrier": "UA"}', "features": '{"x": 1.0}', "missing_features": "[]",
             "score": i / 10, "shadow_version": None, "shadow_score": None} for i in range(n)]
    times = [bindparam(n, type_=DateTime()) for n in ("predicted_at", "event_time")]
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO predictions (request_id, model_name, model_version, predicted_at, entity_key, event_time, "
            "attributes, features, missing_features, score, shadow_version, shadow_score) VALUES (:request_id, "
            ":model_name, :model_version, :predicted_at, :entity_key, :event_time, :attributes, :features, "
            ":missing_features, :score, :shadow_version, :shadow_score)").bindparams(*times), rows)


def test_upgrade_0005_backfills_unique_row_keys_and_replays_exactly_once(
        db_url: str, db_engine: Engine, tmp_path: Path) -> None:
    from retrain.serving.predlog import LogBatch, PredictionLog, SpillDir

    url, engine = db_url, db_engine
    cfg = _config(url)
    command.upgrade(cfg, BEFORE_ROW_KEY)
    _seed_generic_predictions(engine, 5)  # duplicate (request_id, entity_key, predicted_at) on purpose

    command.upgrade(cfg, "head")

    sessions = db.session_factory(engine)
    with sessions() as s:
        keys = s.execute(select(db.Prediction.id, db.Prediction.row_key).order_by(db.Prediction.id)).tuples().all()
        version = s.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    assert version == HEAD
    assert keys == [(i, f"id-{i}") for i in range(1, 6)]
    assert _schema_diffs(engine) == []
    unique = [ix for ix in inspect(engine).get_indexes("predictions") if ix["column_names"] == ["row_key"]]
    assert len(unique) == 1 and unique[0]["unique"]

    # the log writes after the upgrade; a spill file replayed twice (crash after commit) adds its rows once
    plog = PredictionLog(sessions, tmp_path / "spill", retry_seconds=0.0)
    plog.submit(LogBatch([{"request_id": "new", "model_name": "flight_delay", "model_version": "v2",
                           "predicted_at": _utc(T0), "entity_key": f"n{i}", "event_time": _utc(T0),
                           "attributes": {}, "features": {"x": 2.0}, "missing_features": [], "score": 0.5,
                           "shadow_version": None, "shadow_score": None} for i in range(3)]))
    plog.flush_once()
    with sessions() as s:
        spilled = [{c: getattr(p, c) for c in ("row_key", "request_id", "model_name", "model_version",
                                                "predicted_at", "entity_key", "event_time", "attributes",
                                                "features", "missing_features", "score", "shadow_version",
                                                "shadow_score")}
                   for p in s.scalars(select(db.Prediction).where(db.Prediction.request_id == "new"))]
    SpillDir(tmp_path / "spill").write(spilled)
    plog.flush_once()
    with sessions() as s:
        ids = s.scalars(select(db.Prediction.id).order_by(db.Prediction.id)).all()
    assert ids == [1, 2, 3, 4, 5, 6, 7, 8]  # the id sequence survived; no duplicate rows
    assert plog.tally.n_written == 3 and plog.tally.n_replayed == 0 and plog.tally.n_duplicates == 3

    command.downgrade(cfg, BEFORE_ROW_KEY)
    assert "row_key" not in {c["name"] for c in inspect(engine).get_columns("predictions")}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM predictions")).scalar_one() == 8
    command.upgrade(cfg, "head")
    assert _schema_diffs(engine) == []
