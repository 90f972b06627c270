"""End to end: `bentoml serve bentos.usecase.service:UseCaseService --arg usecase=bike_sharing` on a free
port over a real bike-sharing home (its Feast repository, model store, registry): the served score
equals the booster on the point-in-time training row, bad input is a 400 naming the field, the
OpenAPI document carries the use case's fields, and the prediction is logged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.support.bike_home import HOURS, USECASE, BikeHome, bike_env, build_bike_home, offline_score, payload
from tests.support.serving_home import Server, start_server, wait_for

from retrain.core.config import get_settings
from retrain.core.db import Prediction
from retrain.usecase.serving import SERVICE_IMPORT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def bike(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BikeHome]:
    mp = pytest.MonkeyPatch()
    bike_env(mp, tmp_path_factory.mktemp("bike_e2e"))
    yield build_bike_home()
    mp.undo()
    get_settings.cache_clear()


def start(home: Path, timeout: float = 120.0) -> Server:
    """The generic service for bike sharing on a free port (serving_home's harness)."""
    settings = get_settings()
    return start_server(settings, timeout=timeout, service=SERVICE_IMPORT, args={"usecase": USECASE},
                        extra_env={"RETRAIN_SERVE_FOLLOW_SECONDS": "1"})


def test_served_bike_sharing(bike: BikeHome) -> None:
    server = start(bike.settings.home)
    try:
        with server.client() as client:
            r = client.post("/predict", json={"rows": [payload(bike.picks.iloc[0])]})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model_version"] == bike.version
            assert body["predictions"][0]["score"] == pytest.approx(offline_score(bike, 0), rel=1e-9)
            bad = client.post("/predict", json={"rows": [payload(bike.picks.iloc[0], ts="2011-06-01T15:00:00")]})
            assert bad.status_code == 400 and bad.json()["detail"][0]["loc"] == ["rows", 0, "ts"]
            doc = client.get("/docs.json").json()
            assert {"ts", "holiday", "workingday", "season"} <= set(doc["components"]["schemas"]["BikeSharingRow"]
                                                                   ["properties"])

        def logged() -> list[Prediction]:
            with bike.sessions() as s:
                return list(s.scalars(select(Prediction).where(Prediction.request_id == body["request_id"])))

        assert wait_for(lambda: len(logged()) == 1, timeout=15)
        assert logged()[0].entity_key == HOURS[0].strftime("%Y-%m-%dT%H")
    finally:
        assert server.stop() is not None, server.log_tail()
