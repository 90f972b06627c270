"""The flights' serving runtime: the request path of `bentos/flight_delay/service.py` on the engine's
`ServingRuntime` (model following, prediction log, shadow scoring, `/model`).

`/predict` does one online-store call per batch, scores with the champion snapshot it read once,
answers, and only then queues the log rows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from flight_delay.features import MODEL_FEATURES
from flight_delay.serving_schema import FlightIn, FlightPrediction, PredictResponse, batch_limit_error, flight_id
from retrain.core.config import Settings
from retrain.core.db import utcnow
from retrain.serving.follow import LoadedModel
from retrain.serving.predlog import LogBatch
from retrain.serving.runtime import INLINE_MAX_ROWS, NotReadyError, ServingRuntime

SERVICE_IMPORT = "bentos.flight_delay.service:FlightDelay"

WARMUP_FLIGHT = FlightIn(carrier="UA", flight=1, origin="EWR", dest="IAH", distance=1400.0,
                         sched_dep=datetime(2013, 1, 1, 10, tzinfo=UTC))


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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


class FlightsRuntime(ServingRuntime):
    """Everything one worker needs to answer the flights' `/predict` and `/model`."""

    def __init__(self, settings: Settings, *, features: Sequence[str] = MODEL_FEATURES, **kwargs: Any) -> None:
        super().__init__(settings, features=features, **kwargs)

    def _warm(self) -> None:
        """One lookup through the open store (registry cache, connections)."""
        self._lookup([WARMUP_FLIGHT])

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

