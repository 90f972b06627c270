"""The use-case BentoML service (`bentos/usecase/service.py`) in-process, for bike sharing, over a real
Feast repository: online features materialized up to each prediction time, a small LightGBM regression
trained on point-in-time training rows, registered and promoted. Checks train/serve parity of the
served path, validation (400 naming row and field), the OpenAPI document and the prediction log.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient
from tests.support.bike_home import (
    HOURS,
    USECASE,
    BikeHome,
    bike_env,
    build_bike_home,
    materialize_to,
    offline_score,
    payload,
)

from retrain.core.config import get_settings
from retrain.core.db import Prediction

pytestmark = [pytest.mark.integration, pytest.mark.slow]

@pytest.fixture(scope="module")
def bike(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BikeHome]:
    home = tmp_path_factory.mktemp("bikeserve")
    mp = pytest.MonkeyPatch()
    bike_env(mp, home)
    (home / "prometheus").mkdir()  # see tests/unit/test_serving_api.py
    mp.setenv("PROMETHEUS_MULTIPROC_DIR", str(home / "prometheus"))
    yield build_bike_home()
    mp.undo()
    get_settings.cache_clear()


def drop_bentoml_metrics() -> None:
    """BentoML registers its HTTP metrics on prometheus' default registry once per ASGI app: a second
    app in one process (tests/unit/test_serving_api.py's) would collide with the first."""
    from prometheus_client import REGISTRY

    for collector, names in list(REGISTRY._collector_to_names.items()):
        if any(n.startswith("bentoml_") for n in names):
            REGISTRY.unregister(collector)


def fresh_serving_metrics() -> None:
    """This module's app must count into its own PROMETHEUS_MULTIPROC_DIR: drop the retrain metrics an
    earlier module's app created in this process, and prometheus_client's per-process cache of open value
    files (it keeps writing to the directory of the first metric it created)."""
    from prometheus_client import REGISTRY, values

    from retrain.serving.metrics import serving_metrics

    values.ValueClass = values.get_value_class()

    for collector, names in list(REGISTRY._collector_to_names.items()):
        if any(n.startswith("retrain_") for n in names):
            REGISTRY.unregister(collector)
    serving_metrics.cache_clear()


@pytest.fixture(scope="module")
def client(bike: BikeHome) -> Iterator[TestClient]:
    """One in-process app for the module (its startup opens the store and loads the champion)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from bentos.usecase.service import UseCaseService
    drop_bentoml_metrics()
    fresh_serving_metrics()
    with TestClient(UseCaseService.to_asgi()) as c:  # type: ignore[attr-defined]
        yield c
    drop_bentoml_metrics()  # leave the registry as found for the next module's app


def logged_rows(bike: BikeHome) -> list[Prediction]:
    with bike.sessions() as s:
        return list(s.scalars(select(Prediction).order_by(Prediction.id)))


def test_predict_matches_the_training_rows_and_is_logged(bike: BikeHome, client: TestClient) -> None:
    """Served at each hour's prediction time, the score equals the booster on that hour's training row."""
    assert bike.offline[bike.spec.features.names].notna().all().all()  # parity covers every feature
    bodies = []
    assert client.get("/readyz").status_code == 200
    for i, hour in enumerate(HOURS):
        if i:
            materialize_to(bike, hour - pd.Timedelta(hours=1))
        row = bike.picks.iloc[i]
        rows = [payload(row)]
        if i == len(HOURS) - 1:  # a batch: the same hour with the holiday flag flipped (a request feature)
            rows.append(payload(row, holiday=not bool(row["holiday"])))
        r = client.post("/predict", json={"rows": rows})
        assert r.status_code == 200, r.text
        body = r.json()
        bodies.append(body)
        assert body["model_version"] == bike.version and body["model_name"] == USECASE
        preds = body["predictions"]
        assert len(preds) == len(rows)
        assert preds[0]["score"] == pytest.approx(offline_score(bike, i), rel=1e-9)
        assert preds[0]["row_id"] == hour.strftime("%Y-%m-%dT%H")
        assert preds[0]["predicted_label"] is None and preds[0]["model_version"] == bike.version
        assert preds[0]["missing_features"] == [
            n for n in bike.spec.features.names if pd.isna(bike.offline.iloc[i][n])]
    flipped = offline_score(bike, len(HOURS) - 1, holiday=float(not bool(bike.picks.iloc[-1]["holiday"])))
    assert bodies[-1]["predictions"][1]["score"] == pytest.approx(flipped, rel=1e-9)

    info = client.get("/model").json()
    assert info["champion"]["version"] == bike.version and info["in_sync"]
    # the log is written after the answers, by the background flusher
    deadline = time.monotonic() + 20
    while len(logged := logged_rows(bike)) < len(HOURS) + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(logged) == len(HOURS) + 1
    assert [p.entity_key for p in logged] == [h.strftime("%Y-%m-%dT%H") for h in HOURS] + [
        HOURS[-1].strftime("%Y-%m-%dT%H")]
    first = logged[0]
    assert first.model_name == USECASE and first.model_version == bike.version
    assert first.request_id == bodies[0]["request_id"]
    assert first.event_time == HOURS[0].to_pydatetime()
    assert first.attributes == {"ts": HOURS[0].strftime("%Y-%m-%dT%H:%M:%SZ"),
                                "holiday": bool(bike.picks.iloc[0]["holiday"]),
                                "workingday": bool(bike.picks.iloc[0]["workingday"]),
                                "season": str(bike.picks.iloc[0]["season"])}
    assert first.score == pytest.approx(bodies[0]["predictions"][0]["score"], rel=1e-12)
    assert set(first.features) == set(bike.spec.features.names)
    assert first.features["season"] == str(bike.picks.iloc[0]["season"])  # categoricals logged as text
    assert first.features["hour"] == float(HOURS[0].tz_convert("America/New_York").hour)


@pytest.mark.parametrize(
    ("rows", "loc", "kind"),
    [
        ([{"extra": 1}], ["rows", 0, "extra"], "extra_forbidden"),
        ([{"ts": "2011-06-01T15:00:00"}], ["rows", 0, "ts"], "timezone_required"),
        ([{"season": "monsoon"}], ["rows", 0, "season"], "unknown_category"),
        ([{"holiday": "yes"}], ["rows", 0, "holiday"], "bool_type"),
        ([], ["rows"], "too_short"),
        ([{}] * 6, ["rows"], "too_long"),
    ],
)
def test_bad_input_is_400_naming_row_and_field(bike: BikeHome, client: TestClient, rows: list[dict[str, Any]],
                                               loc: list[Any], kind: str) -> None:
    good = payload(bike.picks.iloc[0])
    body = {"rows": [{**good, **r} for r in rows]}
    r = client.post("/predict", json=body)
    assert r.status_code == 400, r.text
    errors = r.json()["detail"]
    assert any(e["loc"] == loc and e["type"] == kind for e in errors), errors


def test_docs_show_the_usecase_fields(client: TestClient) -> None:
    doc = client.get("/docs.json").json()
    schemas = doc["components"]["schemas"]

    def resolve(schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = schemas[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    body = resolve(doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"])
    assert set(body["properties"]) == {"rows"}
    item = resolve(body["properties"]["rows"]["items"])
    assert set(item["properties"]) == {"ts", "holiday", "workingday", "season"}
    assert set(item["required"]) == {"ts", "holiday", "workingday", "season"}
    assert item["properties"]["season"]["enum"] == ["spring", "summer", "fall", "winter"]
    answer = resolve(doc["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"])
    assert {"request_id", "model_name", "model_version", "predictions"} <= set(answer["properties"])


def test_flights_is_refused(bike: BikeHome) -> None:
    """The flights have no own Feast repository: this service refuses them (bentos/flight_delay serves them)."""
    from retrain.usecase.catalog import UseCaseError
    from retrain.usecase.serving import served_usecase

    with pytest.raises(UseCaseError, match="no feast section"):
        served_usecase("flight_delay")



def test_model_and_metrics_report_stale_feature_views(bike: BikeHome, client: TestClient) -> None:
    """On the real clock, the 2011-2012 bike views are years old: `/model` names them stale with their
    cadence and age, and rows scored meanwhile are counted in `/metrics`."""
    info = client.get("/model").json()
    assert sorted(info["stale_features"]) == ["bike_demand", "bike_weather"]
    views = {v["view"]: v for v in info["features"]}
    assert views["bike_weather"]["cadence_hours"] == 1.0 and views["bike_weather"]["age_hours"] > 24 * 365
    assert views["bike_weather"]["reason"].startswith("newest online row")
    before = _metric(client, "retrain_rows_with_stale_features_total")
    r = client.post("/predict", json={"rows": [payload(bike.picks.iloc[0]), payload(bike.picks.iloc[1])]})
    assert r.status_code == 200, r.text
    assert _metric(client, "retrain_rows_with_stale_features_total") == before + 2
    assert _metric(client, 'retrain_feature_view_stale{view="bike_weather"}') == 1.0


def _metric(client: TestClient, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0
