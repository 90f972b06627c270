"""A RETRAIN_HOME ready for `bentoml serve`: landed 2013-01-01 .. 02-11, materialized features, trained
models in the BentoML store, a champion in the registry; plus helpers to run the server.

Build once per test session (about 30-40 s on 2 cores): landing + feature tables + `feast apply`,
one point-in-time training set reused for several small models (distinct windows, so their scores
differ), materialization up to `PARITY_FROM` (the online store then matches point-in-time
features for flights departing in [PARITY_FROM, PARITY_TO): 0 mismatches in the lead's check).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker
from tests.support.feature_home import build_feature_home, feast_env
from tests.support.flights import flight_settings
from tests.support.pg import pg_admin, pg_execute, scratch_url
from tests.support.services import pg_admin_url, redis_database, redis_url

from flight_delay import features as F
from flight_delay.serving import SERVICE_IMPORT as FLIGHTS_SERVICE
from retrain.core.config import Settings
from retrain.core.db import Alias, ModelVersion, make_engine, session_factory, transaction, upgrade
from retrain.core.times import to_utc
from retrain.features import store as FS
from retrain.serving.runtime import serve_argv, serve_cwd, serve_env

PARITY_FROM = pd.Timestamp("2013-02-10 11:00", tz="UTC")
PARITY_TO = pd.Timestamp("2013-02-10 12:00", tz="UTC")
TRAIN_FROM = pd.Timestamp("2013-01-01", tz="UTC")
TRAIN_TO = pd.Timestamp("2013-02-10", tz="UTC")
LANDED_UNTIL = pd.Timestamp("2013-02-11", tz="UTC")  # flights (and outcomes known) by then are landed
# (start, end) of each model's training window: v1..v4 score differently
WINDOWS = [("2013-01-01", "2013-01-25"), ("2013-01-05", "2013-02-01"), ("2013-01-10", "2013-02-05"),
           ("2013-01-15", "2013-02-10")]


def small_settings(home: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(home=home, num_boost_round=25, early_stopping_rounds=5, num_leaves=15,
                                  num_threads=2, serve_follow_seconds=1.0, serve_log_flush_seconds=0.25,
                                  serve_log_retry_seconds=1.0)
    values.update(overrides)
    return flight_settings(**values)


@dataclass(frozen=True)
class ServingHome:
    settings: Settings
    versions: list[str]  # registry versions, v1 first (v1 is the champion after the build)
    tags: dict[str, str]  # version -> BentoML model tag
    parity_flights: pd.DataFrame  # real flights departing in [PARITY_FROM, PARITY_TO)
    parity_features: pd.DataFrame  # their point-in-time (historical) features, MODEL_FEATURES columns
    flights: pd.DataFrame = field(repr=False)  # every landed flight


class _SlicedSet:
    """`train.train_version`'s frame provider over one precomputed training set."""

    def __init__(self, tset: F.TrainingSet) -> None:
        self.tset = tset

    def __call__(self, start: datetime, end: datetime) -> F.TrainingSet:
        frame = self.tset.frame
        t = pd.to_datetime(frame["sched_dep"], utc=True)
        part = frame[(t >= to_utc(start)) & (t < to_utc(end))].reset_index(drop=True)
        return replace(self.tset, frame=part, n_flights=len(part), n_excluded=0)


def sessions_for(settings: Settings) -> sessionmaker[Session]:
    upgrade(settings.db_url)
    return session_factory(make_engine(settings.db_url))


def build_serving_home(settings: Settings) -> ServingHome:
    """Land, featurize, materialize, train four versions, make v1 the champion (local profile)."""
    from retrain.models import registry, train

    fh = build_feature_home(settings, until=LANDED_UNTIL)
    with feast_env(settings):
        store = FS.open_store(settings)
        FS.materialize(store, "2012-12-01", PARITY_FROM)
        tset = F.training_set(store, settings, TRAIN_FROM, TRAIN_TO)
        flights = fh.flights
        sched = pd.to_datetime(flights["sched_dep"], utc=True)
        parity = flights[(sched >= PARITY_FROM) & (sched < PARITY_TO)].reset_index(drop=True)
        hist = F.historical_features(store, F.entity_frame(parity), settings.feature_service)
        sessions = sessions_for(settings)
        provider = _SlicedSet(tset)
        versions, tags = [], {}
        for start, end in WINDOWS:
            tv = train.train_version(settings, sessions, provider, to_utc(start).to_pydatetime(),
                                     to_utc(end).to_pydatetime(), label="late", time_col="sched_dep")
            versions.append(tv.version)
            tags[tv.version] = tv.bento_model_tag
        registry.promote(sessions, versions[0], reason="serving test fixture", actor="tests")
    return ServingHome(settings=settings, versions=versions, tags=tags, parity_flights=parity,
                       parity_features=hist[F.MODEL_FEATURES].reset_index(drop=True), flights=flights)


def copy_home(src: ServingHome, dst: Path, **overrides: Any) -> Settings:
    """A second home with the same offline tables and model store (separate spill dir, databases)."""
    dst.mkdir(parents=True, exist_ok=True)
    for sub in ("offline", "bentoml"):
        shutil.copytree(src.settings.home / sub, dst / sub, dirs_exist_ok=True)
    return small_settings(dst, **overrides)


def copy_registry(src: Settings, dst: Settings) -> None:
    """Copy model versions and aliases into another (migrated) database."""
    upgrade(dst.db_url)
    s_src, s_dst = sessions_for(src), sessions_for(dst)
    with s_src() as a:
        versions = list(a.query(ModelVersion).order_by(ModelVersion.id))
        aliases = list(a.query(Alias))
        a.expunge_all()
    cols = [c.key for c in ModelVersion.__table__.columns]
    with transaction(s_dst) as b:
        for v in versions:
            b.add(ModelVersion(**{c: getattr(v, c) for c in cols}))
        b.flush()
        for al in aliases:
            b.add(Alias(model_name=al.model_name, alias=al.alias, version_id=al.version_id,
                        updated_at=al.updated_at, generation=al.generation))
        b.flush()
        if dst.db_url.startswith("postgresql"):  # explicit ids: move the sequence past them
            b.execute(text("SELECT setval(pg_get_serial_sequence('model_versions', 'id'), "
                           "(SELECT max(id) FROM model_versions))"))


def flight_payload(row: pd.Series) -> dict[str, Any]:
    """A request flight from a landed flights row (UTC ISO time, tailnum null when missing)."""
    tail = row["tailnum"]
    return {"carrier": str(row["carrier"]), "flight": int(row["flight"]),
            "tailnum": None if pd.isna(tail) else str(tail), "origin": str(row["origin"]),
            "dest": str(row["dest"]), "sched_dep": pd.Timestamp(row["sched_dep"]).isoformat(),
            "distance": float(row["distance"])}


def offline_scores(settings: Settings, tag: str, features: pd.DataFrame) -> np.ndarray:
    from retrain.models import store as modelstore

    booster = modelstore.load_booster(settings, tag)
    return np.asarray(booster.predict(features[F.MODEL_FEATURES].to_numpy("float64")))


# ---------------------------------------------------------------------- running a server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A `bentoml serve` subprocess (own process group) and its log file."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    headers: dict[str, str] = field(default_factory=dict)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=kwargs.pop("timeout", 30.0), **kwargs)

    def log_tail(self, n: int = 60) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM the process group (graceful: shutdown hooks flush the log), SIGKILL after `grace`."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


def start_server(settings: Settings, *, workers: int = 1, api_key: str | None = None, timeout: float = 120.0,
                 extra_env: dict[str, str] | None = None, args: dict[str, str] | None = None,
                 service: str | None = None) -> Server:
    """Start `bentoml serve` on a free port and wait until `/readyz` answers 200."""
    port = free_port()
    env = serve_env(settings, {
        "RETRAIN_SERVE_WORKERS": str(workers),
        "RETRAIN_SERVE_FOLLOW_SECONDS": str(settings.serve_follow_seconds),
        "RETRAIN_SERVE_LOG_FLUSH_SECONDS": str(settings.serve_log_flush_seconds),
        "RETRAIN_SERVE_LOG_RETRY_SECONDS": str(settings.serve_log_retry_seconds),
        "RETRAIN_SERVE_SWAP_RETRY_SECONDS": str(settings.serve_swap_retry_seconds),
        "RETRAIN_NUM_THREADS": "1",
        **({"RETRAIN_API_KEY": api_key} if api_key else {}),
        **(extra_env or {}),
    })
    env.pop("PREFECT_API_URL", None)
    if not api_key:
        env.pop("RETRAIN_API_KEY", None)
    log_path = settings.home / "logs" / f"bentoml-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        argv = serve_argv("127.0.0.1", port, args=args, service=service or FLIGHTS_SERVICE)
        proc = subprocess.Popen(argv, cwd=serve_cwd(), env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    server = Server(proc=proc, url=f"http://127.0.0.1:{port}", log_path=log_path,
                    headers={"x-api-key": api_key} if api_key else {})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {proc.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/readyz", timeout=2.0).status_code == 200:
                return server
        time.sleep(0.5)
    server.stop()
    raise TimeoutError(f"bentoml serve not ready after {timeout:.0f} s:\n{server.log_tail()}")


def wait_for(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# ---------------------------------------------------------------------- production profile


@dataclass
class ProductionStores:
    """Own PostgreSQL databases (SQL + Feast registry) and a Redis db number, removed afterwards."""

    admin_url: str
    sql_db: str
    feast_db: str
    redis_db: int

    @property
    def sql_url(self) -> str:
        return scratch_url(self.sql_db, self.admin_url)

    @property
    def feast_url(self) -> str:
        return scratch_url(self.feast_db, self.admin_url)

    @property
    def redis_url(self) -> str:
        return redis_url(self.redis_db)

    def admin(self, sql: str) -> list[tuple[Any, ...]]:
        return pg_execute(sql, self.admin_url)

    def sql_down(self) -> None:
        """Make the SQL database unavailable for real: refuse new connections, kill the open ones."""
        self.admin(f'ALTER DATABASE "{self.sql_db}" WITH ALLOW_CONNECTIONS false')
        self.admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{self.sql_db}'")

    def sql_up(self) -> None:
        self.admin(f'ALTER DATABASE "{self.sql_db}" WITH ALLOW_CONNECTIONS true')


@contextlib.contextmanager
def production_stores(redis_db: int | None = None) -> Iterator[ProductionStores]:
    """Create the databases and flush the Redis db (before and after); the test skips when the
    servers are not reachable, or fails under RETRAIN_REQUIRE_SERVICES=1."""
    import uuid

    db = redis_db if redis_db is not None else int(os.environ.get("RETRAIN_TEST_REDIS_DB_SERVING", "13"))
    suffix = uuid.uuid4().hex[:10]
    stores = ProductionStores(pg_admin_url(), f"retrain_serve_{suffix}", f"retrain_serve_feast_{suffix}", db)
    with redis_database(db), contextlib.closing(pg_admin(stores.admin_url)) as admin:
        try:
            admin.execute(f'CREATE DATABASE "{stores.sql_db}"')
            admin.execute(f'CREATE DATABASE "{stores.feast_db}"')
            yield stores
        finally:
            for name in (stores.sql_db, stores.feast_db):
                with contextlib.suppress(Exception):
                    admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def build_production_home(src: ServingHome, home: Path, stores: ProductionStores, **overrides: Any) -> Settings:
    """The same data under the production profile: Feast registry on PostgreSQL, Redis online
    store materialized to `PARITY_FROM`, the SQL system of record (registry copied) on PostgreSQL."""
    settings = copy_home(src, home, profile="production", database_url=stores.sql_url,
                         feast_registry_url=stores.feast_url, redis_url=stores.redis_url, **overrides)
    with feast_env(settings):
        F.apply_repo(settings)
        FS.materialize(FS.open_store(settings), "2012-12-01", PARITY_FROM)
    copy_registry(src.settings, settings)
    return settings
