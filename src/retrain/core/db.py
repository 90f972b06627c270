"""The SQL system of record: SQLAlchemy 2 models, engine/session helpers and Alembic upgrades.

Tables: ingestion batches, quarantined rows, model versions, aliases, promotions, evaluations,
predictions, outcomes, alerts and monitoring runs. The same Alembic migrations run on SQLite
(embedded default) and PostgreSQL (production profile).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"


def utcnow() -> datetime:
    """Retrain's present, timezone-aware UTC: wall-clock time, or the replay clock when the simulated
    mode is on (setting `simulated_clock`, off by default: no clock file is read then).

    Every recorded time (promotions, alerts, predictions) is stamped through here so that a replay
    of history (the demo, which turns the mode on) keeps cooldowns, windows and monthly tables in
    simulated time.
    """
    from retrain.core.clock import now
    from retrain.core.config import get_settings

    return now(get_settings())


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC, on every backend (SQLite has no time zones)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware UTC time")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class IngestionBatch(Base):
    """One received batch: what came in, what was accepted and quarantined, or why it was refused."""

    __tablename__ = "ingestion_batches"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # what was landed: a use case's rows, or `outcomes`
    source: Mapped[str] = mapped_column(String(1024))
    content_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(32))  # landed | duplicate | rejected
    received: Mapped[int] = mapped_column(Integer, default=0)
    accepted: Mapped[int] = mapped_column(Integer, default=0)
    quarantined: Mapped[int] = mapped_column(Integer, default=0)
    outcomes: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    landed_path: Mapped[str | None] = mapped_column(String(1024))
    min_event_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    max_event_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class QuarantinedRow(Base):
    """A received row that failed the input contract, with one reason naming field and rule."""

    __tablename__ = "quarantined_rows"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("ingestion_batches.id", ondelete="CASCADE"), index=True)
    row_number: Mapped[int] = mapped_column(Integer)
    row_key: Mapped[str | None] = mapped_column(String(64))  # the row's id, when it had a readable one
    field: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    raw: Mapped[dict[str, Any]] = mapped_column(JSON)


class ModelVersion(Base):
    """A trained model: BentoML model tag plus everything needed to judge and reproduce it."""

    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(128), unique=True)
    bento_model_tag: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(32), default="candidate")
    feature_service: Mapped[str] = mapped_column(String(128))
    train_from: Mapped[datetime] = mapped_column(UTCDateTime)
    train_to: Mapped[datetime] = mapped_column(UTCDateTime)
    n_train: Mapped[int] = mapped_column(Integer)
    n_valid: Mapped[int] = mapped_column(Integer)
    n_excluded: Mapped[int] = mapped_column(Integer, default=0)
    data_fingerprint: Mapped[str] = mapped_column(String(64))
    model_checksum: Mapped[str] = mapped_column(String(64))
    model_size_bytes: Mapped[int] = mapped_column(BigInteger)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    library_versions: Mapped[dict[str, Any]] = mapped_column(JSON)
    reference_profile: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    bento_tag: Mapped[str | None] = mapped_column(String(256))
    train_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Alias(Base):
    """`champion` / `challenger` pointers; one row per (model, alias)."""

    __tablename__ = "aliases"
    model_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    alias: Mapped[str] = mapped_column(String(32), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    generation: Mapped[int] = mapped_column(Integer, default=0)


class Promotion(Base):
    """Every alias move: from, to, when, why, by whom, on which evaluation."""

    __tablename__ = "promotions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    alias: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(32))  # promote | rollback | set | clear
    from_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    to_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(256))
    evaluation_id: Mapped[int | None] = mapped_column(ForeignKey("evaluations.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Evaluation(Base):
    """A champion/challenger comparison on one fresh labelled window, with its decision."""

    __tablename__ = "evaluations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    challenger_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    champion_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    window_from: Mapped[datetime] = mapped_column(UTCDateTime)
    window_to: Mapped[datetime] = mapped_column(UTCDateTime)
    n_rows: Mapped[int] = mapped_column(Integer)
    decision: Mapped[str] = mapped_column(String(16))  # promote | reject
    reasons: Mapped[list[Any]] = mapped_column(JSON)
    gates: Mapped[list[Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    report_path: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def _new_row_key() -> str:
    """A fresh `Prediction.row_key` for rows written without one (the prediction log sets its own)."""
    import uuid

    return uuid.uuid4().hex


class Prediction(Base):
    """One served prediction of any use case, with the features used and the shadow challenger's score.

    `entity_key` names the row the prediction is about (the use case's event id), `event_time` the
    event it predicts (the scheduled departure), `attributes` the request's identifying fields used
    for slicing and monitoring (the use case's slice columns). `score` is the probability,
    or for regression the predicted value. Migration 0003 moved the first use case's columns here.
    `row_key` identifies the logged row itself (unique; migration 0005): the prediction log inserts
    with "on conflict do nothing" on it, so a spill file replayed twice adds its rows once.
    """

    __tablename__ = "predictions"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    row_key: Mapped[str] = mapped_column(String(64), unique=True, index=True, default=_new_row_key)
    request_id: Mapped[str] = mapped_column(String(64), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(128), index=True)
    predicted_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    entity_key: Mapped[str] = mapped_column(String(128), index=True)
    event_time: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    features: Mapped[dict[str, Any]] = mapped_column(JSON)
    missing_features: Mapped[list[Any]] = mapped_column(JSON, default=list)
    score: Mapped[float] = mapped_column(Float)
    shadow_version: Mapped[str | None] = mapped_column(String(128))
    shadow_score: Mapped[float | None] = mapped_column(Float)


class Outcome(Base):
    """A matured label of one use case's row, known only from `available_at` on (when the event's outcome is observed).

    `label` is 0/1 for a binary target, the value for regression; `detail` holds domain extras
    (e.g. the raw value a binary label was derived from).
    """

    __tablename__ = "outcomes"
    model_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    entity_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    event_time: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    available_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    label: Mapped[float] = mapped_column(Float)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("ingestion_batches.id"))


class Alert(Base):
    """Every alert received, and what it caused (a run, a dedupe, a cooldown skip)."""

    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    metric: Mapped[str | None] = mapped_column(String(128))
    value: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    window_from: Mapped[datetime | None] = mapped_column(UTCDateTime)
    window_to: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dedupe_key: Mapped[str] = mapped_column(String(256), index=True)
    source: Mapped[str] = mapped_column(String(64), default="monitor")
    outcome: Mapped[str] = mapped_column(String(32), default="received")
    detail: Mapped[str | None] = mapped_column(Text)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class MonitoringRun(Base):
    """One monitoring pass over a window of the prediction log."""

    __tablename__ = "monitoring_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    model_version: Mapped[str | None] = mapped_column(String(128))
    window_from: Mapped[datetime] = mapped_column(UTCDateTime)
    window_to: Mapped[datetime] = mapped_column(UTCDateTime)
    n_predictions: Mapped[int] = mapped_column(Integer)
    n_labelled: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    alerts: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


Index("ix_alerts_dedupe_outcome", Alert.dedupe_key, Alert.outcome)
# The alert ledger's guarantee (migration 0002): at most one admitted ("run") alert per model and dedupe
# key, enforced by the database so concurrent processes cannot both start a retrain.
Index(
    "ux_alerts_admitted",
    Alert.model_name,
    Alert.dedupe_key,
    unique=True,
    sqlite_where=text("outcome = 'run'"),
    postgresql_where=text("outcome = 'run'"),
)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine; SQLite gets WAL and a busy timeout so concurrent writers wait instead of failing."""
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {"timeout": 30})
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # While another process closes the last connection (checkpoint + WAL removal) or recovers
            # the WAL index, this PRAGMA can fail with "database is locked" at once, without the busy
            # timeout (seen with 20 processes connecting at the same instant): retry briefly.
            deadline = time.monotonic() + 30.0
            while True:
                try:
                    cur.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory that keeps loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception."""
    with factory() as session, session.begin():
        yield session


def upgrade(url: str) -> None:
    """Apply every Alembic migration to the database at `url` (idempotent)."""
    from alembic import command
    from alembic.config import Config

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "head")
