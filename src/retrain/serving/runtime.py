"""The serving runtime behind a use case's BentoML service (which stays a thin shell).

Per worker: one long-lived Feast `FeatureStore` and the use case's FeatureService fetched
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
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrain.core import clock
from retrain.core.config import REPO_ROOT, Settings, get_settings, reveal
from retrain.core.db import make_engine, session_factory
from retrain.serving.follow import CHAMPION, LoadedModel, ModelFollower, version_by_tag
from retrain.serving.models import ErrorBody, ModelDescription, ModelInfo
from retrain.serving.predlog import LogBatch, PredictionLog

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

INLINE_MAX_ROWS = 128
HEALTH_PATHS = frozenset({"/livez", "/readyz", "/healthz"})


class NotReadyError(RuntimeError):
    """No champion is loaded yet, or the online store is not open: answer 503."""


@dataclass(frozen=True)
class PinnedModel:
    """A model baked into a bento (`--arg model_tag=...`): its tag and its file in the bento's store."""

    tag: str
    path: Path


def _emitter(settings: Settings) -> Callable[[str, dict[str, Any]], None]:
    """Post events to Prefect's HTTP API (`PREFECT_API_URL`, with the basic auth of the settings): a bento
    image does not ship Prefect itself. Without an API URL the event is logged as not sent."""

    def emit(event: str, payload: dict[str, Any]) -> None:
        from retrain.core.events import build_event, model_resource, post_events_http

        api_url = os.environ.get("PREFECT_API_URL")
        if not api_url:
            log.warning("event %s not sent: PREFECT_API_URL is not set", event)
            return
        post_events_http(api_url, [build_event(event, model_resource(settings.model_name), payload)],
                         auth_string=settings.prefect_auth_value)

    return emit


def _counters() -> Any:
    from retrain.serving.metrics import serving_metrics

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

        def quarantined(self, n: int) -> None:
            m.log_quarantined.inc(n)

        def overflowed(self, n: int) -> None:
            m.log_overflowed.inc(n)

        def dropped(self, n: int) -> None:
            m.log_dropped.inc(n)

    return _Counters()




def _describe(model: LoadedModel | None) -> ModelDescription | None:
    if model is None:
        return None
    t = model.target
    return ModelDescription(version=t.version, bento_model_tag=t.bento_model_tag, feature_service=t.feature_service,
                            train_from=t.train_from, train_to=t.train_to, promoted_at=t.promoted_at,
                            loaded_at=model.loaded_at, generation=t.generation)


class ServingRuntime:
    """Everything one worker needs to answer `/predict` and `/model` (see module doc).

    A use case's runtime adds the request path (`predict`, and `_warm` for its warm-up lookup) and may
    override the seams: `features` (the served feature order), `_new_follower` (how models are
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
        features: Sequence[str] = (),
    ) -> None:
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
        from retrain.serving.metrics import serving_metrics

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
            max_buffer_rows=settings.serve_log_buffer_rows, enrich=self._shadow, counters=_counters(),
        )
        self.freshness: list[dict[str, Any]] = []  # each view's freshness at the last check
        self.stale_views: tuple[str, ...] = ()
        self._freshness_at = -float("inf")  # monotonic time of the last check
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
        from retrain.features import store as FS

        store = (self._store_factory or FS.open_store)(self.settings)
        return store, FS.service(store, self.settings.feature_service)

    def _warm(self) -> None:
        """One lookup through the open store (registry cache, connections); the use case's runtime knows how."""

    def _model_path(self, tag: str) -> Path:
        from retrain.models.store import model_file

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
        from retrain.serving.follow import AliasTarget

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
        await asyncio.to_thread(self.check_freshness)
        if self.pinned is not None:
            await asyncio.to_thread(self._load_pinned)
        if self.follow:
            await asyncio.to_thread(self.follower.poll_once)
        self._tasks.append(asyncio.create_task(self.predlog.run(self._stop), name="predlog"))
        self._tasks.append(asyncio.create_task(self._poll_loop(), name="follow"))
        gc.collect()
        gc.freeze()  # Feast, pandas and the boosters live for the whole process: keep them out of GC scans

    def check_freshness(self) -> None:
        """Each feature view's freshness (`retrain.features.freshness`) into `/model` and the metrics; a
        failure is logged and leaves the last answer in place."""
        if self.store is None:
            return
        from retrain.features.freshness import check_freshness

        self._freshness_at = time.monotonic()
        try:
            views = check_freshness(self.store, self.settings, clock.now(self.settings))
        except Exception as exc:
            log.warning("feature freshness not checked: %s", str(exc).splitlines()[0][:300] if str(exc) else exc)
            return
        self.freshness = [v.as_json() for v in views]
        stale = tuple(v.view for v in views if v.stale)
        if stale and stale != self.stale_views:
            log.warning("stale feature views: %s", "; ".join(f"{v.view}: {v.reason}" for v in views if v.stale))
        self.stale_views = stale
        for v in views:
            self.metrics.view_stale.labels(v.view).set(1.0 if v.stale else 0.0)
            if v.age_hours is not None:
                self.metrics.view_age.labels(v.view).set(v.age_hours)

    async def _poll_loop(self) -> None:
        def also() -> None:
            if self.feature_service is None:
                self.open_features()
            if time.monotonic() - self._freshness_at >= self.settings.serve_freshness_seconds:
                self.check_freshness()

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

    def _count(self, version: str, missing_mask: np.ndarray, t0: float) -> None:
        """Request metrics: predictions, missing feature values, batch size, latency since `t0`."""
        m = self.metrics
        n_rows = int(missing_mask.shape[0])
        n_missing = int(missing_mask.sum())
        m.predictions.labels(version).inc(n_rows)
        if self.stale_views:
            m.rows_stale.inc(n_rows)
        m.feature_values.inc(missing_mask.size)
        if n_missing:
            m.feature_values_missing.inc(n_missing)
            m.rows_with_missing.inc(int(missing_mask.any(axis=1).sum()))
        m.batch_size.observe(n_rows)
        m.request_latency.observe(time.perf_counter() - t0)

    def _shadow_inputs(self, challenger: LoadedModel, stacked: np.ndarray) -> np.ndarray:
        """The challenger's input matrix from the logged rows (a subclass may re-encode them)."""
        return stacked

    def _shadow(self, batches: list[LogBatch]) -> None:
        """Score the challenger on the logged feature rows (runs in the log's flusher thread)."""
        # the challenger an evaluation shadows, else the champion a promotion replaced (its guardrail window)
        challenger = self.follower.challenger or self.follower.guarded()
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
            pinned=self.pinned is not None, worker_pid=os.getpid(), clock=_clock_label(),
            stale_features=list(self.stale_views), features=self.freshness)


def _clock_label() -> str:
    """`real`, or the simulated present predictions are stamped with (`db.utcnow` follows the
    process's settings, so this reads the same ones)."""
    when = clock.state(get_settings()).now
    return "real" if when is None else when.isoformat()


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
        self.api_key = api_key if api_key is not None else settings_provider().api_key_value

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
        message = ("missing or wrong API key: send it as 'x-api-key: <key>' or 'Authorization: Bearer <key>' "
                   "(RETRAIN_API_KEY)")
        body = ErrorBody(error=message).model_dump_json(exclude_defaults=True).encode()
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
    for name, value in (("RETRAIN_DATABASE_URL", reveal(settings.database_url)),
                        ("RETRAIN_FEAST_REGISTRY_URL", reveal(settings.feast_registry_url))):
        if value:
            env[name] = value
        else:  # never inherit another home's database from the calling process
            env.pop(name, None)
    env["RETRAIN_REDIS_URL"] = settings.redis_url_value
    env.update(extra or {})
    return env


def serve_argv(host: str, port: int, *, service: str, args: dict[str, str] | None = None) -> list[str]:
    """`bentoml serve <service> --host --port [--arg k=v ...]`, run from the repo root."""
    argv = [str(Path(sys.executable).parent / "bentoml"), "serve", service, "--host", host, "--port", str(port)]
    for key, value in (args or {}).items():
        argv += ["--arg", f"{key}={value}"]
    return argv


def serve_cwd() -> Path:
    return REPO_ROOT
