"""The serving runtime behind `bentos/flight_delay/service.py` (which stays a thin BentoML shell).

Per worker: one long-lived Feast `FeatureStore` and the `flight_delay_v1` FeatureService fetched
once at start; a `ModelFollower` that keeps the champion (and shadow challenger) in step with the
registry; a `PredictionLog` flushed in the background. `/predict` does one online-store call per
batch, scores with the champion snapshot it read once, answers, and only then queues the log rows;
the challenger is scored by the log's flusher, off the response path.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import itertools
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flight_delay.serving_schema import (
    FlightIn,
    FlightPrediction,
    ModelDescription,
    ModelInfo,
    PredictResponse,
    batch_limit_error,
    flight_id,
)
from retrain.config import REPO_ROOT, Settings, get_settings
from retrain.db import make_engine, session_factory, utcnow
from retrain.follow import CHAMPION, LoadedModel, ModelFollower, version_by_tag
from retrain.predlog import LogBatch, PredictionLog

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

SERVICE_IMPORT = "bentos.flight_delay.service:FlightDelay"
INLINE_MAX_ROWS = 128
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
WARMUP_FLIGHT = FlightIn(carrier="UA", flight=1, origin="EWR", dest="IAH", distance=1400.0,
                         sched_dep=datetime(2013, 1, 1, 10, tzinfo=UTC))
HEALTH_PATHS = frozenset({"/livez", "/readyz", "/healthz"})


class NotReadyError(RuntimeError):
    """No champion is loaded yet, or the online store is not open: answer 503."""


@dataclass(frozen=True)
class PinnedModel:
    """A model baked into a bento (`--arg model_tag=...`): its tag and its file in the bento's store."""

    tag: str
    path: Path


def _emitter(settings: Settings) -> Callable[[str, dict[str, Any]], None]:
    """Emit through retrain.events (which refuses, with a warning, when no Prefect API is set)."""

    def emit(event: str, payload: dict[str, Any]) -> None:
        from retrain.events import emit as emit_event
        from retrain.events import model_resource

        emit_event(event, model_resource(settings.model_name), payload, settings)

    return emit


def _counters() -> Any:
    from retrain.serving_metrics import serving_metrics

    m = serving_metrics()

    class _Counters:
        def written(self, n: int) -> None:
            m.log_written.inc(n)

        def spilled(self, n: int) -> None:
            m.log_spilled.inc(n)

        def replayed(self, n: int) -> None:
            m.log_replayed.inc(n)

        def write_failed(self) -> None:
            m.log_write_failures.inc()

    return _Counters()


def _utc_hour(f: FlightIn) -> str:
    t = f.sched_dep
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}"


def _utc_day(f: FlightIn) -> str:
    t = f.sched_dep
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}"


# How the request path forms each join key of `features.entity_frame`, in plain Python (sched_dep is UTC).
_KEY_BUILDERS: dict[str, Callable[[FlightIn], str]] = {
    "origin": lambda f: f.origin,
    "carrier": lambda f: f.carrier,
    "route": lambda f: f"{f.origin}-{f.dest}",
    "tailnum": lambda f: f.tailnum or "",
    "origin_hour": lambda f: f"{f.origin}|{_utc_hour(f)}",
    "carrier_day": lambda f: f"{f.carrier}|{_utc_day(f)}",
    "route_day": lambda f: f"{f.origin}-{f.dest}|{_utc_day(f)}",
}


def entity_rows(flights: list[FlightIn]) -> dict[str, list[Any]]:
    """Join keys and request data of the feature service, as `features.entity_frame` forms them.

    Built in plain Python when every key of `features.ENTITY_KEYS` has a builder here (on the
    request path the DataFrame round trip cost several times the online read itself); any key this
    module does not know falls back to `entity_frame` itself, so a contract change cannot skew
    serving silently (and tests/unit/test_serving_api.py compares both on real flights).
    """
    from flight_delay import features

    keys = list(features.ENTITY_KEYS)
    if features.MISSING_TAILNUM != "" or not set(keys) <= set(_KEY_BUILDERS):
        return _entity_rows_via_frame(flights)
    rows: dict[str, list[Any]] = {k: [_KEY_BUILDERS[k](f) for f in flights] for k in keys}
    rows["sched_dep_epoch"] = [(f.sched_dep - EPOCH) // timedelta(seconds=1) for f in flights]
    rows["distance"] = [float(f.distance) for f in flights]
    return rows


def _entity_rows_via_frame(flights: list[FlightIn]) -> dict[str, list[Any]]:
    import pandas as pd

    from flight_delay import features

    ents = features.entity_frame(pd.DataFrame({
        "flight_id": [flight_id(f) for f in flights], "origin": [f.origin for f in flights],
        "dest": [f.dest for f in flights], "carrier": [f.carrier for f in flights],
        "tailnum": [f.tailnum for f in flights], "distance": [f.distance for f in flights],
        "sched_dep": pd.to_datetime([f.sched_dep for f in flights], utc=True)}))
    rows: dict[str, list[Any]] = {k: ents[k].tolist() for k in features.ENTITY_KEYS}
    rows["sched_dep_epoch"] = [int(x) for x in ents["sched_dep_epoch"]]
    rows["distance"] = [float(x) for x in ents["distance"]]
    return rows


def online_matrix(store: Any, feature_service: Any, rows: dict[str, list[Any]], names: list[str]) -> np.ndarray:
    """One online-store call; a float64 matrix (flights x `names`), NaN where the store has no value."""
    resp = store.get_online_features(features=feature_service, entity_rows=rows)
    n = len(rows["sched_dep_epoch"])
    proto = getattr(resp, "proto", None)
    if proto is None:  # not Feast's OnlineResponse
        data = resp.to_dict()
        return np.array([data[c] for c in names], dtype="float64").T.reshape(n, len(names))
    return response_matrix(proto, names, n)


def response_matrix(proto: Any, names: list[str], n: int) -> np.ndarray:
    """Numeric features straight from the response proto (`to_dict()` cost 4 ms per 100 flights)."""
    column = {name: i for i, name in enumerate(proto.metadata.feature_names.val)}
    out = np.full((n, len(names)), np.nan)
    for j, name in enumerate(names):
        values = proto.results[column[name]].values
        for i, v in enumerate(values):
            kind = v.WhichOneof("val")
            if kind is not None and kind != "null_val":
                out[i, j] = getattr(v, kind)
    return out


def _describe(model: LoadedModel | None) -> ModelDescription | None:
    if model is None:
        return None
    t = model.target
    return ModelDescription(version=t.version, bento_model_tag=t.bento_model_tag, feature_service=t.feature_service,
                            train_from=t.train_from, train_to=t.train_to, promoted_at=t.promoted_at,
                            loaded_at=model.loaded_at, generation=t.generation)


class ServingRuntime:
    """Everything one worker needs to answer `/predict` and `/model` (see module doc).

    Seams for a use case's own service (`retrain.usecase.serving.UseCaseRuntime`): `features` (the
    served feature order; default the flights' `MODEL_FEATURES`), `_new_follower` (how models are
    loaded and warmed up), `_connect` / `_warm` (which store and feature service, and the warm-up lookup).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        pinned: PinnedModel | None = None,
        follow: bool = True,
        store_factory: Callable[[Settings], Any] | None = None,
        sessions: sessionmaker[Session] | None = None,
        emit: Callable[[str, dict[str, Any]], None] | None = None,
        features: Sequence[str] | None = None,
    ) -> None:
        if features is None:
            from flight_delay.features import MODEL_FEATURES

            features = MODEL_FEATURES
        self.settings = settings
        self.features = list(features)
        self.pinned = pinned
        self.follow = follow
        self._store_factory = store_factory
        self.store: Any = None
        self.feature_service: Any = None
        self._store_error: str | None = None
        # SQLite online store: one shared connection; serialize lookups (Redis needs no lock).
        self._lookup_lock: threading.Lock | None = threading.Lock() if settings.profile == "local" else None
        if sessions is None:
            connect_args = {} if settings.db_url.startswith("sqlite") else {"connect_timeout": 3}
            kwargs: dict[str, Any] = {"connect_args": connect_args} if connect_args else {}
            sessions = session_factory(make_engine(settings.db_url, **kwargs))
        self.sessions = sessions
        from retrain.serving_metrics import serving_metrics

        self.metrics = serving_metrics()
        self.follower = self._new_follower(
            settings, sessions, served_features=self.features, resolve_path=self._model_path,
            emit=emit if emit is not None else _emitter(settings),
            on_swap=lambda alias, _m: self.metrics.swaps.labels(alias).inc(),
            on_failure=lambda alias: self.metrics.swap_failures.labels(alias).inc(),
        )
        self.predlog = PredictionLog(
            sessions, settings.home / "spill", flush_seconds=settings.serve_log_flush_seconds,
            retry_seconds=settings.serve_log_retry_seconds, max_rows=settings.serve_log_max_rows,
            enrich=self._shadow, counters=_counters(),
        )
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # request ids: a random per-process prefix + a counter (os.urandom per request cost 0.4 ms here)
        prefix = uuid.uuid4().hex[:20]
        counter = itertools.count(1)
        self._request_ids: Callable[[], str] = lambda: f"{prefix}{next(counter):012x}"

    # ------------------------------------------------------------------ lifecycle

    def _new_follower(self, settings: Settings, sessions: sessionmaker[Session], **kwargs: Any) -> ModelFollower:
        """The champion follower of this worker (called once by `__init__`)."""
        return ModelFollower(settings, sessions, **kwargs)

    def _connect(self) -> tuple[Any, Any]:
        """(feature store, feature service object), the service fetched once."""
        from flight_delay import features
        from retrain import feature_store as FS

        store = (self._store_factory or FS.open_store)(self.settings)
        return store, features.service(store, self.settings.feature_service)

    def _warm(self) -> None:
        """One lookup through the open store (registry cache, connections)."""
        self._lookup([WARMUP_FLIGHT])

    def _model_path(self, tag: str) -> Path:
        from retrain.modelstore import model_file

        if self.pinned is not None and tag == self.pinned.tag:
            return self.pinned.path
        return model_file(self.settings, tag)

    def open_features(self) -> bool:
        """Open the feature store and fetch the feature service once; False (and logged) on failure."""
        if self.feature_service is not None:
            return True
        try:
            self.store, self.feature_service = self._connect()
            self._warm()  # warm the lookup path (registry cache, connections)
        except Exception as exc:
            self.store = self.feature_service = None
            if self._store_error != str(exc):
                log.exception("online feature store not available (retrying every %.1f s)",
                              self.settings.serve_follow_seconds)
            self._store_error = str(exc)
            return False
        self._store_error = None
        log.info("online feature store open (%s profile), feature service %s", self.settings.profile,
                 self.settings.feature_service)
        return True

    def _load_pinned(self) -> None:
        assert self.pinned is not None
        from retrain.follow import AliasTarget

        row = None
        try:
            row = version_by_tag(self.sessions, self.pinned.tag)
        except Exception as exc:
            log.warning("registry unreadable (%s): pinned model %s is trial-loaded without a checksum",
                        str(exc).splitlines()[0][:200], self.pinned.tag)
        target = AliasTarget(
            alias=CHAMPION, version_id=row.id if row else None,
            version=row.version if row else self.pinned.tag.split(":")[-1], bento_model_tag=self.pinned.tag,
            model_checksum=row.model_checksum if row else None,
            feature_service=row.feature_service if row else self.settings.feature_service,
            train_from=row.train_from if row else None, train_to=row.train_to if row else None,
            promoted_at=None, generation=None)
        self.follower.install(CHAMPION, self.follower.load(target))  # the pinned tag resolves to pinned.path

    async def start(self) -> None:
        """Open stores, load the first model, start the follow and log tasks (BentoML on_startup)."""
        self.settings.export_env()
        await asyncio.to_thread(self.open_features)
        if self.pinned is not None:
            await asyncio.to_thread(self._load_pinned)
        if self.follow:
            await asyncio.to_thread(self.follower.poll_once)
        self._tasks.append(asyncio.create_task(self.predlog.run(self._stop), name="predlog"))
        self._tasks.append(asyncio.create_task(self._poll_loop(), name="follow"))
        gc.collect()
        gc.freeze()  # Feast, pandas and the boosters live for the whole process: keep them out of GC scans

    async def _poll_loop(self) -> None:
        def also() -> None:
            if self.feature_service is None:
                self.open_features()

        if self.follow:
            await self.follower.run(self._stop, self.settings.serve_follow_seconds, also=also)
        else:
            while not self._stop.is_set():
                await asyncio.sleep(self.settings.serve_follow_seconds)
                await asyncio.to_thread(also)

    async def stop(self) -> None:
        """Stop polling and await the final prediction-log flush (never cancel it mid-write)."""
        self._stop.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    @property
    def ready(self) -> bool:
        return self.follower.champion is not None and self.feature_service is not None

    # ------------------------------------------------------------------ request path

    def _lookup(self, flights: list[FlightIn]) -> np.ndarray:
        rows = entity_rows(flights)
        if self._lookup_lock is None:
            return online_matrix(self.store, self.feature_service, rows, self.features)
        with self._lookup_lock:
            return online_matrix(self.store, self.feature_service, rows, self.features)

    def _score(self, model: LoadedModel, flights: list[FlightIn]) -> tuple[np.ndarray, np.ndarray]:
        matrix = self._lookup(flights)
        threads = 1 if len(flights) < 500 else self.settings.num_threads  # OpenMP start-up > the work
        return matrix, model.predict(matrix, num_threads=threads)

    async def predict(self, flights: list[FlightIn]) -> PredictResponse:
        """Score a validated batch; raises NotReadyError (503) when no champion / store."""
        t0 = time.perf_counter()
        if len(flights) > self.settings.serve_max_batch:
            raise batch_limit_error(len(flights), self.settings.serve_max_batch)
        model = self.follower.champion  # one snapshot for the whole batch
        if model is None or self.feature_service is None:
            raise NotReadyError("no champion model loaded yet" if model is None else "online store not available")
        request_id = self._request_ids()
        ids = [flight_id(f) for f in flights]
        if len(flights) <= INLINE_MAX_ROWS:  # a thread hop costs more than the work (and the GIL is held)
            matrix, scores = self._score(model, flights)
        else:  # long batches in a thread, so small requests and the background tasks interleave
            matrix, scores = await asyncio.to_thread(self._score, model, flights)
        missing_mask = np.isnan(matrix)
        values = np.where(missing_mask, np.array(None, dtype=object), matrix).tolist()  # JSON-safe: NaN -> None
        now = utcnow()
        threshold = self.settings.decision_threshold
        version = model.version
        preds: list[FlightPrediction] = []
        rows: list[dict[str, Any]] = []
        for i, f in enumerate(flights):
            missing = [self.features[j] for j in np.flatnonzero(missing_mask[i])]
            score = float(scores[i])
            preds.append(FlightPrediction.model_construct(
                flight_id=ids[i], request_id=request_id, carrier=f.carrier, flight=f.flight, origin=f.origin,
                dest=f.dest, tailnum=f.tailnum, sched_dep=f.sched_dep, delay_probability=score,
                predicted_late=score >= threshold, model_version=version, missing_features=missing))
            rows.append({
                "request_id": request_id, "model_name": self.settings.model_name, "model_version": version,
                "predicted_at": now, "entity_key": ids[i], "event_time": f.sched_dep,
                "attributes": {"carrier": f.carrier, "origin": f.origin, "dest": f.dest, "tailnum": f.tailnum or ""},
                "features": dict(zip(self.features, values[i], strict=True)), "missing_features": missing,
                "score": score, "shadow_version": None, "shadow_score": None})
        self.predlog.submit(LogBatch(rows, matrix))
        self._count(version, missing_mask, t0)
        return PredictResponse.model_construct(request_id=request_id, model_name=self.settings.model_name,
                                               model_version=version, predictions=preds)

    def _count(self, version: str, missing_mask: np.ndarray, t0: float) -> None:
        """Request metrics: predictions, missing feature values, batch size, latency since `t0`."""
        m = self.metrics
        n_rows = int(missing_mask.shape[0])
        n_missing = int(missing_mask.sum())
        m.predictions.labels(version).inc(n_rows)
        m.feature_values.inc(missing_mask.size)
        if n_missing:
            m.feature_values_missing.inc(n_missing)
            m.flights_with_missing.inc(int(missing_mask.any(axis=1).sum()))
        m.batch_size.observe(n_rows)
        m.request_latency.observe(time.perf_counter() - t0)

    def _shadow_inputs(self, challenger: LoadedModel, stacked: np.ndarray) -> np.ndarray:
        """The challenger's input matrix from the logged rows (a subclass may re-encode them)."""
        return stacked

    def _shadow(self, batches: list[LogBatch]) -> None:
        """Score the challenger on the logged feature rows (runs in the log's flusher thread)."""
        challenger = self.follower.challenger
        if challenger is None:
            return
        todo = [b for b in batches if b.matrix is not None and len(b.rows)]
        if not todo:
            return
        stacked = np.vstack([b.matrix for b in todo if b.matrix is not None])
        scores = challenger.predict(self._shadow_inputs(challenger, stacked), num_threads=self.settings.num_threads)
        k = 0
        for b in todo:
            for row in b.rows:
                row["shadow_version"] = challenger.version
                row["shadow_score"] = float(scores[k])
                k += 1
        self.metrics.shadow_predictions.labels(challenger.version).inc(k)

    def model_info(self) -> ModelInfo:
        f = self.follower
        reg_champ = f.registry.get(CHAMPION)
        reg_chall = f.registry.get("challenger")
        champ = f.champion
        in_sync = champ is not None and (reg_champ is None or champ.target.key == reg_champ.key)
        return ModelInfo(
            model_name=self.settings.model_name, champion=_describe(champ), challenger=_describe(f.challenger),
            registry_champion=reg_champ.version if reg_champ else None,
            registry_challenger=reg_chall.version if reg_chall else None,
            in_sync=in_sync, last_error=f.last_error or self._store_error,
            follow_seconds=self.settings.serve_follow_seconds if self.follow else None,
            pinned=self.pinned is not None, worker_pid=os.getpid())


# ---------------------------------------------------------------------- API key


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]


class ApiKeyMiddleware:
    """When `RETRAIN_API_KEY` is set, every path but the health probes needs it (401 otherwise).

    Accepted as `x-api-key: <key>` or `Authorization: Bearer <key>`; compared in constant time.
    """

    def __init__(self, app: ASGIApp, api_key: str | None = None,
                 settings_provider: Callable[[], Settings] = get_settings) -> None:
        self.app = app
        self.api_key = api_key if api_key is not None else settings_provider().api_key

    @staticmethod
    def presented(headers: list[tuple[bytes, bytes]]) -> str | None:
        for name, value in headers:
            lname = name.lower()
            if lname == b"x-api-key":
                return value.decode("latin-1").strip()
            if lname == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    return token.strip()
        return None

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if not self.api_key or scope["type"] != "http" or scope.get("path", "") in HEALTH_PATHS:
            await self.app(scope, receive, send)
            return
        given = self.presented(scope.get("headers") or [])
        if given is not None and hmac.compare_digest(given.encode(), self.api_key.encode()):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "missing or wrong API key: send it as 'x-api-key: <key>' or "
                                    "'Authorization: Bearer <key>' (RETRAIN_API_KEY)"}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------- starting a server


def serve_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for `bentoml serve`: settings, Feast paths, BentoML home, no tracking."""
    env = dict(os.environ)
    env.update(settings.feast_env())
    env.update({"RETRAIN_HOME": str(settings.home), "BENTOML_HOME": str(settings.bentoml_home),
                "BENTOML_DO_NOT_TRACK": "True", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "RETRAIN_PROFILE": settings.profile})
    for name, value in (("RETRAIN_DATABASE_URL", settings.database_url),
                        ("RETRAIN_FEAST_REGISTRY_URL", settings.feast_registry_url)):
        if value:
            env[name] = value
        else:  # never inherit another home's database from the calling process
            env.pop(name, None)
    env["RETRAIN_REDIS_URL"] = settings.redis_url
    env.update(extra or {})
    return env


def serve_argv(host: str, port: int, *, service: str = SERVICE_IMPORT, args: dict[str, str] | None = None) -> list[str]:
    """`bentoml serve <service> --host --port [--arg k=v ...]`, run from the repo root."""
    argv = [str(Path(sys.executable).parent / "bentoml"), "serve", service, "--host", host, "--port", str(port)]
    for key, value in (args or {}).items():
        argv += ["--arg", f"{key}={value}"]
    return argv


def serve_cwd() -> Path:
    return REPO_ROOT
