"""The BentoML service in-process (its ASGI app): request path, validation, API key, logging on shutdown.

The online store is replaced by a stub (no Feast here); the champion is a real booster in a real
BentoML model store and registry under tmp_path. Servers and Feast are covered by tests/e2e.
"""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient
from tests.support.models import fake_version_fields, registry_home

from flight_delay import features
from flight_delay.features import MODEL_FEATURES, PLANE_FEATURES
from retrain.core.config import Settings, get_settings
from retrain.core.db import Prediction
from retrain.features import store as feature_store
from retrain.models import registry
from retrain.models import store as modelstore
from retrain.serving.runtime import ApiKeyMiddleware

KEY = "unit-test-key"
KNOWN_TAIL = "N14228"
FLIGHT: dict[str, Any] = {"carrier": "UA", "flight": 1545, "tailnum": KNOWN_TAIL, "origin": "EWR", "dest": "IAH",
                          "sched_dep": "2013-02-10T06:15:00-05:00", "distance": 1400.0}


def stub_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Deterministic 'online' values; plane features exist only for KNOWN_TAIL."""
    out = pd.DataFrame({c: np.arange(len(frame), dtype="float64") + j / 10 for j, c in enumerate(MODEL_FEATURES)},
                       index=frame.index)
    out.loc[frame["tailnum"] != KNOWN_TAIL, PLANE_FEATURES] = np.nan
    return out


class StubStore:
    """Answers `get_online_features` like Feast's OnlineResponse (`to_dict()`, None for missing)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, list[Any]]] = []

    def get_online_features(self, features: Any, entity_rows: dict[str, list[Any]]) -> Any:
        self.calls.append(entity_rows)
        values = stub_features(pd.DataFrame({"tailnum": entity_rows["tailnum"]}))
        data = {c: [None if pd.isna(v) else float(v) for v in values[c]] for c in MODEL_FEATURES}

        class Response:
            def to_dict(self) -> dict[str, list[Any]]:
                return {**entity_rows, **data}

        return Response()


def champion_booster() -> lgb.Booster:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, len(MODEL_FEATURES)))
    y = (x[:, 0] + x[:, 1] + rng.normal(size=500) > 0).astype(int)
    return lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1},
                     lgb.Dataset(x, y, feature_name=list(MODEL_FEATURES)), num_boost_round=5)


@pytest.fixture
def app_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Settings, Any, lgb.Booster, StubStore]]:
    monkeypatch.setenv("RETRAIN_HOME", str(tmp_path))
    monkeypatch.setenv("RETRAIN_API_KEY", KEY)
    monkeypatch.setenv("RETRAIN_SERVE_LOG_FLUSH_SECONDS", "3600")  # only the shutdown flush writes
    monkeypatch.setenv("RETRAIN_SERVE_MAX_BATCH", "5")
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    # prometheus_client picks its multiprocess value class at import: if an earlier test imported it
    # while PROMETHEUS_MULTIPROC_DIR was set (BentoML sets it), the directory must exist here too.
    (tmp_path / "prometheus").mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "prometheus"))
    store = StubStore()
    monkeypatch.setattr(feature_store, "open_store", lambda settings: store)
    monkeypatch.setattr(feature_store, "service", lambda store, name="": "flight_delay_v1")
    get_settings.cache_clear()
    settings, sessions = registry_home(tmp_path)
    booster = champion_booster()
    saved = modelstore.save_booster(settings, booster, metadata={}, labels={})
    fields = fake_version_fields(1)
    fields.update(bento_model_tag=saved.tag, model_checksum=saved.checksum)
    version = registry.register_version(sessions, **fields).version
    registry.promote(sessions, version, reason="unit test", actor="test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from bentos.flight_delay.service import FlightDelay
    yield settings, FlightDelay, booster, store
    get_settings.cache_clear()


def test_predict_model_and_log(app_env: Any) -> None:
    settings, svc, booster, store = app_env
    auth = {"x-api-key": KEY}
    unknown_tail = {**FLIGHT, "tailnum": "NOPE1", "flight": 7}
    with TestClient(svc.to_asgi()) as client:
        assert client.get("/readyz").status_code == 200
        r = client.post("/predict", json={"flights": [FLIGHT, unknown_tail]}, headers=auth)
        assert r.status_code == 200, r.text
        body = r.json()
        expected = booster.predict(stub_features(pd.DataFrame({"tailnum": [KNOWN_TAIL, "NOPE1"]}))
                                   [MODEL_FEATURES].to_numpy())
        preds = body["predictions"]
        assert [p["delay_probability"] for p in preds] == pytest.approx(expected, rel=1e-12)
        assert [p["model_version"] for p in preds] == ["v1", "v1"] and body["model_version"] == "v1"
        assert preds[0]["flight_id"] == "2013-02-10_UA1545_EWR_0615"
        assert preds[0]["missing_features"] == [] and preds[1]["missing_features"] == PLANE_FEATURES
        assert preds[0]["sched_dep"] == "2013-02-10T11:15:00Z"
        assert {p["request_id"] for p in preds} == {body["request_id"]}
        assert store.calls[-1]["route_day"] == ["EWR-IAH|2013-02-10"] * 2  # one store call for the batch
        epoch = int(pd.Timestamp("2013-02-10T11:15Z").timestamp())
        assert store.calls[-1]["sched_dep_epoch"] == [epoch] * 2 and len(store.calls) == 2  # + warm-up

        info = client.get("/model", headers={"authorization": f"Bearer {KEY}"}).json()
        assert info["champion"]["version"] == "v1" and info["in_sync"] and info["registry_champion"] == "v1"
        assert info["clock"] == "real"  # simulated time is off unless a demo turns it on (test_clock_mode.py)

        too_many = client.post("/predict", json={"flights": [FLIGHT] * 6}, headers=auth)
        assert too_many.status_code == 400 and "exceeds the limit of 5" in too_many.text
        bad = client.post("/predict", json={"flights": [{**FLIGHT, "origin": "ZZZ"}]}, headers=auth)
        assert bad.status_code == 400 and bad.json()["detail"][0]["loc"] == ["flights", 0, "origin"]
        assert client.post("/predict", json={"flights": [FLIGHT]}).status_code == 401
        assert client.post("/predict", json={"flights": [FLIGHT]}, headers=auth).status_code == 200
    # leaving the client ran the shutdown hook: the final flush wrote every prediction
    _, sessions = registry_home(settings.home)
    with sessions() as s:
        rows = list(s.scalars(select(Prediction).order_by(Prediction.id)))
    assert [r.request_id for r in rows[:2]] == [body["request_id"]] * 2 and len(rows) == 3
    assert rows[1].missing_features == PLANE_FEATURES and rows[1].features["plane_year"] is None
    assert rows[0].score == pytest.approx(expected[0], rel=1e-12)
    # the generic row: entity key, event time and the request's identifying fields as attributes
    assert rows[0].model_name == settings.model_name and rows[0].entity_key == "2013-02-10_UA1545_EWR_0615"
    assert rows[0].event_time == pd.Timestamp("2013-02-10T11:15Z").to_pydatetime()
    assert rows[0].attributes == {"carrier": "UA", "origin": "EWR", "dest": "IAH", "tailnum": KNOWN_TAIL}


def test_no_champion_is_not_ready_and_refuses(app_env: Any, tmp_path: Path) -> None:
    """A worker without a champion is not ready and answers 503 (NotReadyError), never a guess."""
    from flight_delay.serving import FlightsRuntime
    from flight_delay.serving_schema import FlightIn
    from retrain.serving.runtime import NotReadyError

    settings, _, _, _ = app_env
    empty = settings.model_copy(update={"home": tmp_path / "empty"})
    registry_home(empty.home)
    runtime = FlightsRuntime(empty)

    async def scenario() -> None:
        await runtime.start()
        try:
            assert runtime.open_features() and not runtime.ready
            with pytest.raises(NotReadyError, match="no champion"):
                await runtime.predict([FlightIn.model_validate_json(json.dumps(FLIGHT))])
            assert runtime.model_info().champion is None
        finally:
            await runtime.stop()

    asyncio.run(scenario())


async def _ok_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/predict", {}, 401),
        ("/predict", {"x-api-key": "wrong"}, 401),
        ("/predict", {"x-api-key": KEY}, 200),
        ("/metrics", {"Authorization": f"Bearer {KEY}"}, 200),
        ("/metrics", {"Authorization": f"Basic {KEY}"}, 401),
        ("/docs.json", {}, 401),
        ("/livez", {}, 200),
        ("/readyz", {}, 200),
        ("/healthz", {}, 200),
    ],
)
def test_api_key_middleware(path: str, headers: dict[str, str], status: int) -> None:
    client = TestClient(ApiKeyMiddleware(_ok_app, api_key=KEY))  # type: ignore[arg-type]
    assert client.get(path, headers=headers).status_code == status


def test_no_key_configured_lets_everything_through() -> None:
    client = TestClient(ApiKeyMiddleware(_ok_app, api_key=""))  # type: ignore[arg-type]
    assert client.get("/predict").status_code == 200


def test_entity_rows_match_the_feature_contract() -> None:
    """The request path's entity rows equal `features.entity_frame` for real flights (no skew)."""
    from flight_delay.data import load_flights
    from flight_delay.serving import _entity_rows_via_frame, entity_rows
    from flight_delay.serving_schema import FlightIn

    flights = load_flights().sample(300, random_state=1)
    flights = pd.concat([flights, load_flights()[lambda d: d["tailnum"].isna()].head(20)])
    frame = features.entity_frame(flights)
    records: list[dict[str, Any]] = flights.to_dict("records")  # type: ignore[assignment]
    flights_in = [FlightIn(carrier=r["carrier"], flight=int(r["flight"]), origin=r["origin"], dest=r["dest"],
                           tailnum=None if pd.isna(r["tailnum"]) else r["tailnum"],
                           distance=float(r["distance"]), sched_dep=r["sched_dep"].to_pydatetime())
                  for r in records]
    rows = entity_rows(flights_in)
    for key in [*features.ENTITY_KEYS, "sched_dep_epoch", "distance"]:
        assert rows[key] == frame[key].tolist(), key
    assert set(rows) == {*features.ENTITY_KEYS, "sched_dep_epoch", "distance"}
    fallback = _entity_rows_via_frame(flights_in)
    assert fallback == rows
