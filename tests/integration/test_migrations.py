"""Every Alembic revision upgrades a populated database, and the ORM models match the migrated schema.

The revisions are read from Alembic's script directory, in order. Starting from an empty database,
each one is applied in turn: before it, a few realistic rows go into every table the schema has at
that point (foreign keys pointing at rows of the same round); after it, every row seeded so far must
still be there, with its values carried over or transformed as the revision intends (`STEPS`
declares, per revision, its column renames, the columns it drops and the values it derives). At head
the ORM reads every migrated row and does the service's writes (register and promote a version, log
predictions, record an outcome); `compare_metadata` finds no difference between `Base.metadata` and
the migrated schema. Then every revision is downgraded one by one over the same rows, and upgraded
again to a schema that still matches the models.

Runs on SQLite (a temp file) and on PostgreSQL (a scratch database; skipped when the server of
RETRAIN_TEST_PG_ADMIN does not answer, failed instead under RETRAIN_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Integer, MetaData, Table, delete, func, insert, inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from tests.support.models import fake_version_fields

from retrain.core import db

pytestmark = pytest.mark.integration

T0 = datetime(2013, 2, 10, 11, 0)  # naive UTC, as every revision stores times
FIRST_MODEL = "flight_delay"  # 0003 gives the flight-era outcomes this model name
# the use case whose rows each round adds: the flight layout (before 0003) holds one use case
ROUND_MODELS = ("flight_delay", "flight_delay", "bike_demand", "taxi_fare", "churn")
Row = dict[str, Any]
Snapshot = dict[str, list[Row]]


# ----------------------------------------------------------------------------- what each revision does


@dataclass(frozen=True)
class Step:
    """The data side of one revision, for a table: `renames` old -> new column; `dropped` columns whose
    values leave the table (carried elsewhere, see `derived`); `derived(old_row)` the new values it
    computes. `down_derived` is the same for the downgrade (new row -> values of the old columns)."""

    renames: dict[str, dict[str, str]] = field(default_factory=dict)
    dropped: dict[str, set[str]] = field(default_factory=dict)
    derived: dict[str, Callable[[Row], Row]] = field(default_factory=dict)
    down_derived: dict[str, Callable[[Row], Row]] = field(default_factory=dict)
    check: Callable[[Connection], None] | None = None  # anything else the revision guarantees
    # the downgrade is refused over some rows: (message pattern, what makes it possible)
    down_refused: tuple[str, Callable[[Engine], None]] | None = None


FLIGHT_ATTRIBUTES = ("carrier", "origin", "dest", "tailnum")


def _alert(model: str, key: str, outcome: str) -> Row:
    return {"model_name": model, "kind": "drift", "dedupe_key": key, "source": "monitor", "outcome": outcome,
            "payload": {"probe": True}, "received_at": T0}


def _check_admission_index(conn: Connection) -> None:
    """0002: one admitted ("run") alert per model and dedupe key; other outcomes may repeat."""
    alerts = _table(conn, "alerts")
    run = conn.execute(select(alerts.c.model_name, alerts.c.dedupe_key).where(alerts.c.outcome == "run")).first()
    assert run is not None, "the seeded rows hold an admitted alert"
    index = [ix for ix in inspect(conn).get_indexes("alerts") if ix["name"] == "ux_alerts_admitted"]
    assert len(index) == 1 and index[0]["unique"] and index[0]["column_names"] == ["model_name", "dedupe_key"]
    assert any(key.endswith("_where") for key in index[0].get("dialect_options", {})), "the index is partial"
    with conn.begin_nested() as nested:
        conn.execute(insert(alerts).values(**_alert(run.model_name, run.dedupe_key, "deduplicated")))
        nested.rollback()
    with pytest.raises(IntegrityError), conn.begin_nested():
        conn.execute(insert(alerts).values(**_alert(run.model_name, run.dedupe_key, "run")))


def _check_row_keys(conn: Connection) -> None:
    """0005: every prediction has a distinct row key, and the database refuses a duplicate."""
    predictions = _table(conn, "predictions")
    keys = conn.execute(select(predictions.c.row_key)).scalars().all()
    assert keys and len(set(keys)) == len(keys)
    index = [ix for ix in inspect(conn).get_indexes("predictions") if ix["column_names"] == ["row_key"]]
    assert len(index) == 1 and index[0]["unique"]
    row = conn.execute(select(predictions).limit(1)).mappings().one()
    with pytest.raises(IntegrityError), conn.begin_nested():
        conn.execute(insert(predictions).values(**{k: v for k, v in row.items() if k != "id"}))


STEPS: dict[str, Step] = {
    "0001": Step(),
    "0002_alert_admission": Step(check=_check_admission_index),
    "0003_generic_rows": Step(
        renames={"predictions": {"flight_id": "entity_key", "sched_dep": "event_time"},
                 "outcomes": {"flight_id": "entity_key", "sched_dep": "event_time", "landed_at": "available_at"}},
        dropped={"predictions": set(FLIGHT_ATTRIBUTES), "outcomes": {"arr_delay", "late"}},
        derived={"predictions": lambda old: {"attributes": {k: old[k] for k in FLIGHT_ATTRIBUTES}},
                 "outcomes": lambda old: {"model_name": FIRST_MODEL, "label": 1.0 if old["late"] else 0.0,
                                          "detail": {"arr_delay": old["arr_delay"]}}},
        down_derived={"predictions": lambda new: {k: new["attributes"].get(k) or "" for k in FLIGHT_ATTRIBUTES},
                      "outcomes": lambda new: {"late": new["label"] >= 0.5,
                                               "arr_delay": new["detail"].get("arr_delay", 0.0)}},
        down_refused=("hold rows of .* the flight-only layout holds one use case",
                      lambda engine: _keep_one_use_case(engine, FIRST_MODEL)),
    ),
    "0004_generic_batches": Step(
        renames={"ingestion_batches": {"min_sched_dep": "min_event_time", "max_sched_dep": "max_event_time"},
                 "quarantined_rows": {"flight_id": "row_key"}},
    ),
    "0005_prediction_row_key": Step(
        derived={"predictions": lambda old: {"row_key": f"id-{old['id']}"}},
        check=_check_row_keys,
    ),
}


# ----------------------------------------------------------------------------- realistic rows per table


@dataclass
class Round:
    """The rows one revision's round adds: which use case, and the ids inserted so far (per table)."""

    index: int
    model: str
    ids: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def t(self) -> datetime:
        return T0 + timedelta(days=7 * self.index)

    def key(self, i: int) -> str:
        return f"{self.t:%Y-%m-%d}_{self.model}_{i}"


def _batches(r: Round) -> list[Row]:
    return [{"kind": r.model, "source": f"landing://{r.model}/{r.t:%Y-%m-%d}", "status": "landed",
             "content_hash": hashlib.sha256(f"{r.key(0)}".encode()).hexdigest(), "received": 4, "accepted": 3,
             "quarantined": 1, "outcomes": 2, "error": None, "landed_path": f"landed/{r.model}/{r.index}.parquet",
             "min_sched_dep": r.t, "max_sched_dep": r.t + timedelta(hours=6),
             "min_event_time": r.t, "max_event_time": r.t + timedelta(hours=6), "created_at": r.t},
            {"kind": "outcomes", "source": f"landing://{r.model}/{r.t:%Y-%m-%d}", "status": "rejected",
             "content_hash": None, "received": 0, "accepted": 0, "quarantined": 0, "outcomes": 0,
             "error": "missing column: arr_delay", "landed_path": None, "min_sched_dep": None, "max_sched_dep": None,
             "min_event_time": None, "max_event_time": None, "created_at": r.t + timedelta(minutes=5)}]


def _quarantined(r: Round) -> list[Row]:
    batch = r.ids["ingestion_batches"][0]
    return [{"batch_id": batch, "row_number": n, "flight_id": key, "row_key": key, "field": fld, "rule": rule,
             "reason": f"{fld}: {rule}", "raw": {"id": key, fld: None}}
            for n, key, fld, rule in ((2, r.key(9), "dep_time", "not_null"), (4, None, "id", "readable"))]


def _versions(r: Round) -> list[Row]:
    rows = []
    for i in range(3):
        fields = fake_version_fields(i + 1, r.model)
        fields.update(train_from=fields["train_from"].replace(tzinfo=None),
                      train_to=fields["train_to"].replace(tzinfo=None), version=f"{r.model}-r{r.index}-{i}",
                      bento_model_tag=f"{r.model}:r{r.index}x{i}", status=("archived", "champion", "challenger")[i],
                      metrics={"auc": 0.7 + i / 100}, params={"max_depth": 4 + i},
                      library_versions={"lightgbm": "4.5.0"}, reference_profile={"distance": [0.0, 1.0]},
                      created_at=r.t + timedelta(minutes=i))
        rows.append(fields)
    return rows


def _evaluations(r: Round) -> list[Row]:
    v = r.ids["model_versions"]
    return [{"model_name": r.model, "challenger_id": v[1], "champion_id": v[0], "window_from": r.t,
             "window_to": r.t + timedelta(days=1), "n_rows": 500, "decision": "promote",
             "reasons": ["auc +0.01"], "gates": [{"gate": "auc", "passed": True}], "metrics": {"auc": 0.71},
             "report_path": f"reports/{r.model}/{r.index}.html", "created_at": r.t + timedelta(hours=1)}]


def _aliases(r: Round) -> list[Row]:
    if r.index and r.model == ROUND_MODELS[r.index - 1]:
        return []  # the use case's aliases are a round older (one row per model and alias)
    v = r.ids["model_versions"]
    return [{"model_name": r.model, "alias": alias, "version_id": vid, "updated_at": r.t, "generation": g}
            for alias, vid, g in (("champion", v[1], 2), ("challenger", v[2], 1))]


def _promotions(r: Round) -> list[Row]:
    v, ev = r.ids["model_versions"], r.ids["evaluations"][0]
    return [{"model_name": r.model, "alias": "champion", "action": "promote", "from_version_id": v[0],
             "to_version_id": v[1], "reason": "gates passed", "actor": "retrain", "evaluation_id": ev,
             "created_at": r.t + timedelta(hours=1)},
            {"model_name": r.model, "alias": "challenger", "action": "set", "from_version_id": None,
             "to_version_id": v[2], "reason": "trained", "actor": "retrain", "evaluation_id": None,
             "created_at": r.t + timedelta(hours=2)}]


def _predictions(r: Round) -> list[Row]:
    rows = []
    for i, (carrier, origin, dest, tail) in enumerate((("UA", "EWR", "IAH", "N14228"), ("B6", "JFK", "BOS", ""),
                                                       ("AA", "LGA", "ORD", "N3ALAA"))):
        attrs = {"carrier": carrier, "origin": origin, "dest": dest, "tailnum": tail}
        rows.append({"request_id": f"req-{r.index}-{i // 2}", "model_name": r.model, "model_version": f"r{r.index}",
                     "predicted_at": r.t + timedelta(minutes=i), "flight_id": r.key(i), "entity_key": r.key(i),
                     "sched_dep": r.t + timedelta(hours=i + 1), "event_time": r.t + timedelta(hours=i + 1),
                     **attrs, "attributes": attrs, "features": {"distance": 100.0 * (i + 1), "plane_year": None},
                     "missing_features": ["plane_year"] if i == 0 else [], "score": 0.25 * (i + 1),
                     "shadow_version": "r-shadow" if i == 0 else None, "shadow_score": 0.3 if i == 0 else None,
                     "row_key": hashlib.md5(r.key(i).encode()).hexdigest()})
    return rows


def _outcomes(r: Round) -> list[Row]:
    batch = r.ids["ingestion_batches"][0]
    return [{"model_name": r.model, "flight_id": r.key(i), "entity_key": r.key(i),
             "sched_dep": r.t + timedelta(hours=i + 1), "event_time": r.t + timedelta(hours=i + 1),
             "landed_at": r.t + timedelta(hours=i + 4), "available_at": r.t + timedelta(hours=i + 4),
             "arr_delay": delay, "late": delay >= 15, "label": 1.0 if delay >= 15 else 0.0,
             "detail": {"arr_delay": delay}, "batch_id": batch if i == 0 else None}
            for i, delay in enumerate((37.0, -4.5))]


def _alerts(r: Round) -> list[Row]:
    key = f"{r.model}:psi:distance:{r.index}"
    return [{**_alert(r.model, key, "run"), "metric": "psi", "value": 0.31, "threshold": 0.2,
             "window_from": r.t, "window_to": r.t + timedelta(days=1), "flow_run_id": f"run-{r.index}"},
            {**_alert(r.model, key, "deduplicated"), "received_at": r.t + timedelta(minutes=1)},
            {**_alert(r.model, f"{key}:auc", "cooldown"), "detail": "cooldown until tomorrow"}]


def _monitoring(r: Round) -> list[Row]:
    return [{"model_name": r.model, "model_version": f"{r.model}-r{r.index}-1", "window_from": r.t,
             "window_to": r.t + timedelta(days=1), "n_predictions": 3, "n_labelled": 2,
             "metrics": {"auc": 0.69}, "alerts": [{"metric": "psi"}], "created_at": r.t + timedelta(days=1)}]


TEMPLATES: dict[str, Callable[[Round], list[Row]]] = {
    "ingestion_batches": _batches, "quarantined_rows": _quarantined, "model_versions": _versions,
    "evaluations": _evaluations, "aliases": _aliases, "promotions": _promotions, "predictions": _predictions,
    "outcomes": _outcomes, "alerts": _alerts, "monitoring_runs": _monitoring,
}


# ----------------------------------------------------------------------------- database access


def _config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(db.MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _revisions(cfg: Config) -> list[str]:
    """The revisions base first; the history must be one line (one base, one head, no merges)."""
    script = ScriptDirectory.from_config(cfg)
    assert len(script.get_heads()) == 1 and len(script.get_bases()) == 1
    walked = list(reversed(list(script.walk_revisions())))
    for before, after in zip([None, *walked], walked, strict=False):
        assert after.down_revision == (before.revision if before else None), f"{after.revision} is not linear"
    return [s.revision for s in walked]


def _reflect(conn: Connection) -> MetaData:
    md = MetaData()
    md.reflect(conn)
    return md


def _table(conn: Connection, name: str) -> Table:
    return Table(name, MetaData(), autoload_with=conn)


def _user_tables(md: MetaData) -> list[Table]:
    return [t for t in md.sorted_tables if t.name != "alembic_version"]


def _seed(engine: Engine, r: Round) -> int:
    """Insert the round's rows into every table of the current schema (only the columns it has)."""
    n = 0
    with engine.begin() as conn:
        for table in _user_tables(_reflect(conn)):
            assert table.name in TEMPLATES, f"no rows for the new table {table.name}: add it to TEMPLATES"
            generated = [c.name for c in table.primary_key.columns
                         if len(table.primary_key.columns) == 1 and isinstance(c.type, Integer)]
            for template in TEMPLATES[table.name](r):
                row = {k: v for k, v in template.items() if k in table.c}
                missing = [c.name for c in table.columns if c.name not in row and c.name not in generated
                           and not c.nullable and c.server_default is None]
                assert not missing, f"{table.name}: no value for {missing}: add them to its template"
                pk = conn.execute(insert(table).values(**row)).inserted_primary_key
                r.ids.setdefault(table.name, []).append(pk[0] if pk else None)
                n += 1
    return n


def _snapshot(engine: Engine) -> Snapshot:
    with engine.connect() as conn:
        return {t.name: [dict(m) for m in conn.execute(select(t)).mappings()] for t in _user_tables(_reflect(conn))}


def _pk(engine: Engine) -> dict[str, list[str]]:
    insp = inspect(engine)
    return {t: insp.get_pk_constraint(t)["constrained_columns"] for t in insp.get_table_names()}


def _identity(source_pk: list[str], target_pk: list[str], renames: dict[str, str],
              target_cols: set[str]) -> tuple[list[str], list[str]]:
    """How a row is found again across a revision: (columns before, columns after)."""
    forward = [renames.get(c, c) for c in source_pk]
    if set(forward) <= target_cols:
        return source_pk, forward
    back = {new: old for old, new in renames.items()}
    backward = [back.get(c, c) for c in target_pk]
    return backward, target_pk


def _assert_carried(before: Snapshot, after: Snapshot, pk_before: dict[str, list[str]],
                    pk_after: dict[str, list[str]], renames: dict[str, dict[str, str]],
                    dropped: dict[str, set[str]], derived: dict[str, Callable[[Row], Row]], where: str) -> None:
    """Every row of `before` is in `after`: same values under the (renamed) columns, plus the derived ones."""
    assert set(before) <= set(after), f"{where}: tables lost: {set(before) - set(after)}"
    for table, old_rows in before.items():
        new_rows = after[table]
        assert len(new_rows) == len(old_rows), f"{where}: {table} had {len(old_rows)} rows, now {len(new_rows)}"
        if not new_rows:
            continue
        names = renames.get(table, {})
        new_cols = set(new_rows[0])
        lost = {names.get(c, c) for c in old_rows[0]} - new_cols - {names.get(c, c) for c in dropped.get(table, set())}
        assert not lost, f"{where}: {table} lost columns {sorted(lost)} that the revision does not declare dropped"
        old_key, new_key = _identity(pk_before[table], pk_after[table], names, new_cols)
        by_key = {tuple(row[c] for c in new_key): row for row in new_rows}
        assert len(by_key) == len(new_rows)
        for old in old_rows:
            new = by_key.get(tuple(old[c] for c in old_key))
            assert new is not None, f"{where}: {table} row {old} is gone"
            want = {names.get(c, c): v for c, v in old.items() if names.get(c, c) in new_cols}
            if table in derived:
                want.update(derived[table](old))
            # exact: every value is stored and read back unchanged on both backends
            assert {c: new[c] for c in want} == want, f"{where}: {table}"


def _schema_diffs(engine: Engine) -> list[Any]:
    """`compare_metadata` between the models and the database, types and server defaults included.

    Nothing is filtered: on both SQLite and PostgreSQL the migrated schema matches the models exactly
    as far as autogenerate can see (tables, columns, types, nullability, server defaults, indexes,
    unique constraints, foreign keys). Primary keys and partial-index predicates are beyond it and
    are checked separately (`_assert_keys_and_predicates`)."""
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return list(compare_metadata(ctx, db.Base.metadata))


def _assert_keys_and_predicates(engine: Engine) -> None:
    """What autogenerate does not compare: primary keys, foreign-key ON DELETE, partial indexes."""
    insp = inspect(engine)
    assert set(insp.get_table_names()) - {"alembic_version"} == set(db.Base.metadata.tables)
    for name, table in db.Base.metadata.tables.items():
        assert insp.get_pk_constraint(name)["constrained_columns"] == [c.name for c in table.primary_key.columns]
        want_fks = {(tuple(fk.parent.name for fk in c.elements), c.referred_table.name, c.ondelete)
                    for c in table.foreign_key_constraints}
        got_fks = {(tuple(f["constrained_columns"]), f["referred_table"], (f.get("options") or {}).get("ondelete"))
                   for f in insp.get_foreign_keys(name)}
        assert got_fks == want_fks, name
        partial = {ix.name: _predicate(v) for ix in table.indexes for k, v in ix.dialect_kwargs.items()
                   if k.startswith(f"{engine.dialect.name}_") and k.endswith("_where") and v is not None}
        reflected = {ix["name"]: _predicate(v) for ix in insp.get_indexes(name)
                     for k, v in ix.get("dialect_options", {}).items() if k.endswith("_where")}
        assert reflected == partial, name


def _predicate(clause: Any) -> str:
    """A partial index's WHERE as comparable text: PostgreSQL reflects `((outcome)::text = 'run'::text)`
    for the models' `outcome = 'run'` (casts and parentheses it adds, same predicate)."""
    return re.sub(r"::\w+|[()\s]", "", str(clause)).lower()


# ----------------------------------------------------------------------------- the proof


def test_every_revision_upgrades_populated_rows_and_head_matches_the_models(
        db_url: str, db_engine: Engine, tmp_path: Path) -> None:
    url, engine = db_url, db_engine
    cfg = _config(url)
    revisions = _revisions(cfg)
    assert set(revisions) == set(STEPS), "every revision declares its data step in STEPS (and only those)"

    seeded = 0
    for i, rev in enumerate(revisions):
        before, pk_before = _snapshot(engine), _pk(engine)
        command.upgrade(cfg, rev)
        step = STEPS[rev]
        _assert_carried(before, _snapshot(engine), pk_before, _pk(engine), step.renames, step.dropped,
                        step.derived, f"upgrade to {rev}")
        if step.check is not None:
            with engine.connect() as conn:
                step.check(conn)
        seeded += _seed(engine, Round(i, ROUND_MODELS[i] if i < len(ROUND_MODELS) else f"usecase_{i}"))
        with engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == rev

    # ------------------------------------------------------------------ head: the models and the schema agree
    assert _schema_diffs(engine) == []
    _assert_keys_and_predicates(engine)
    head_rows = _snapshot(engine)
    assert sum(len(rows) for rows in head_rows.values()) == seeded

    sessions = db.session_factory(engine)
    with sessions() as s:  # the ORM reads every migrated row (JSON decoded, times aware UTC)
        for mapper in db.Base.registry.mappers:
            objs = s.scalars(select(mapper.class_)).all()
            assert len(objs) == len(head_rows[mapper.class_.__tablename__])
        assert all(p.event_time.tzinfo is UTC and isinstance(p.attributes, dict)
                   for p in s.scalars(select(db.Prediction)))
    _orm_writes_on_the_migrated_schema(sessions, tmp_path)

    # ------------------------------------------------------------------ down again, one revision at a time
    for rev, target in zip(reversed(revisions), [*reversed(revisions[:-1]), "base"], strict=True):
        step = STEPS[rev]
        if step.down_refused is not None:
            with pytest.raises(RuntimeError, match=step.down_refused[0]):
                command.downgrade(cfg, target)
            step.down_refused[1](engine)
        before, pk_before = _snapshot(engine), _pk(engine)
        command.downgrade(cfg, target)
        if target == "base":
            assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
            continue
        back = {t: {new: old for old, new in pairs.items()} for t, pairs in step.renames.items()}
        added = {t: _derived_names(fn) for t, fn in step.derived.items()}  # the downgrade drops them
        _assert_carried(before, _snapshot(engine), pk_before, _pk(engine), back, added, step.down_derived,
                        f"downgrade of {rev}")

    command.upgrade(cfg, "head")
    assert _schema_diffs(engine) == []
    _assert_keys_and_predicates(engine)


def _derived_names(fn: Callable[[Row], Row]) -> set[str]:
    """The columns an upgrade derives (it adds them), from calling `fn` on a row of unknown values."""

    class Unknown(dict[str, Any]):
        def __missing__(self, key: str) -> Any:
            return None

    return set(fn(Unknown()))


def _keep_one_use_case(engine: Engine, model: str) -> None:
    """What the 0003 downgrade asks for: delete the other use cases' predictions and outcomes."""
    with engine.begin() as conn:
        for name in ("predictions", "outcomes"):
            table = _table(conn, name)
            conn.execute(delete(table).where(table.c.model_name != model))
            assert conn.execute(select(func.count()).select_from(table)).scalar_one() > 0


def _orm_writes_on_the_migrated_schema(sessions: Any, tmp_path: Path) -> None:
    """Register a version, promote it, log predictions, record their outcome: on the migrated rows."""
    from retrain.models import registry
    from retrain.serving.predlog import LogBatch, PredictionLog

    with sessions() as s:
        max_ids = {cls: s.scalar(select(func.max(cls.id))) for cls in (db.ModelVersion, db.Prediction,
                                                                      db.Promotion)}
        champion = s.scalars(select(db.Alias).where(db.Alias.model_name == FIRST_MODEL,
                                                     db.Alias.alias == "champion")).one().version_id

    created = registry.register_version(sessions, **fake_version_fields(7, FIRST_MODEL))
    assert created.id > max_ids[db.ModelVersion]  # the id sequence survived the migrations
    registry.promote(sessions, created.version, reason="migrated", actor="test", model_name=FIRST_MODEL,
                     expect_champion_id=champion)

    now = datetime(2014, 1, 1, tzinfo=UTC)
    plog = PredictionLog(sessions, tmp_path / "spill", retry_seconds=0.0)
    plog.submit(LogBatch([{"request_id": "after-migration", "model_name": FIRST_MODEL,
                           "model_version": created.version, "predicted_at": now, "entity_key": f"e{i}",
                           "event_time": now + timedelta(hours=1), "attributes": {"carrier": "UA"},
                           "features": {"distance": 1.0}, "missing_features": [], "score": 0.4,
                           "shadow_version": None, "shadow_score": None} for i in range(2)]))
    assert plog.flush_once() == 2
    with db.transaction(sessions) as s:
        s.add(db.Outcome(model_name=FIRST_MODEL, entity_key="e0", event_time=now + timedelta(hours=1),
                         available_at=now + timedelta(hours=4), label=1.0, detail={"arr_delay": 22.0}))

    with sessions() as s:
        alias = s.get(db.Alias, (FIRST_MODEL, "champion"))
        assert alias is not None and alias.version_id == created.id
        old = s.get(db.ModelVersion, champion)
        assert old is not None and old.status == "archived"
        promo = s.scalars(select(db.Promotion).order_by(db.Promotion.id.desc())).first()
        assert promo is not None and promo.id > max_ids[db.Promotion]
        assert (promo.from_version_id, promo.to_version_id) == (champion, created.id)
        logged = s.execute(select(db.Prediction.id, db.Prediction.row_key, db.Outcome.label)
                           .outerjoin(db.Outcome, (db.Outcome.model_name == db.Prediction.model_name)
                                      & (db.Outcome.entity_key == db.Prediction.entity_key))
                           .where(db.Prediction.request_id == "after-migration")
                           .order_by(db.Prediction.id)).tuples().all()
    assert [label for _, _, label in logged] == [1.0, None]
    assert all(pid > max_ids[db.Prediction] for pid, _, _ in logged)
    assert len({key for _, key, _ in logged}) == 2
