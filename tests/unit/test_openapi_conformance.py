"""Both shipped services answer what their own OpenAPI document (`/docs.json`) says, for any input.

In-process (each service's ASGI app over a temp home with a real champion; the API key set): schemathesis
generates requests for every documented operation from its schema (its coverage phase, then hypothesis:
bodies that fit the schema and bodies that break it), and hand-picked bad requests cover the rest
(non-object JSON, broken JSON, wrong types, missing and unknown fields, out-of-range datetimes, oversized
and non-JSON bodies, missing or wrong key). Every answer's status must be one the document lists for that
route and its body must validate against the schema documented for that status
(tests/support/openapi.py). The flights run over a stub online store (as tests/unit/test_serving_api.py),
bike sharing over its real Feast repository (tests/support/bike_home.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient
from tests.support.bike_home import BikeHome, bike_env, build_bike_home, payload
from tests.support.openapi import (
    assert_conforms,
    bad_requests,
    check_bad_requests,
    check_chunked_oversized,
    fuzz,
)
from tests.unit.test_serving_api import FLIGHT, KEY, app_env  # noqa: F401  (app_env: the flights' fixture)
from tests.unit.test_usecase_service import drop_bentoml_metrics

from retrain.core import events
from retrain.core.config import get_settings
from retrain.features import store as feature_store
from retrain.serving.httpapi import UNEXPECTED, HttpContract, body_limit

AUTH = {"x-api-key": KEY, "authorization": f"Bearer {KEY}"}  # both: generated cases carry a random Bearer
MAX_EXAMPLES = 100  # per operation and mode
LIMIT = body_limit(5)  # RETRAIN_SERVE_MAX_BATCH=5 in both homes
ALERT = {"version": "4", "status": "firing", "alerts": [{
    "status": "firing", "labels": {"alertname": "AUCDrop", "retrain_kind": "manual"},
    "annotations": {"summary": "AUC dropped"}, "startsAt": "2013-06-01T00:00:00Z", "fingerprint": "f1"}]}
ERROR_STATUSES = {"400", "401", "413", "415", "500", "504"}


@pytest.fixture
def flights(app_env: Any) -> Iterator[Any]:  # noqa: F811
    """The flights service class (app_env's home: champion, stub store, key, batch limit 5)."""
    drop_bentoml_metrics()
    yield app_env[1]
    drop_bentoml_metrics()


@pytest.fixture
def prefect(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """A Prefect API that takes every event (posted events are collected)."""
    posted: list[Any] = []

    def post(url: str, evs: list[Any], **_: Any) -> int:
        posted.append(evs)
        return 204

    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.invalid/api")
    monkeypatch.setattr(events, "post_events_http", post)
    return posted


def documented(doc: dict[str, Any]) -> dict[str, set[str]]:
    return {f"{m.upper()} {p}": set(op["responses"]) for p, item in doc["paths"].items() for m, op in item.items()}


def test_the_flights_document_lists_every_status(flights: Any, prefect: list[Any]) -> None:
    with TestClient(flights.to_asgi()) as client:
        doc = client.get("/docs.json", headers=AUTH).json()
    assert doc["openapi"] == "3.1.0"  # its schemas are JSON Schema 2020-12 (numeric exclusiveMinimum, type null)
    assert documented(doc) == {
        "GET /livez": {"200"}, "GET /healthz": {"200"}, "GET /readyz": {"200", "503"},
        "GET /metrics": {"200", "401", "500"}, "GET /model": {"200", "401", "500"},
        "POST /predict": {"200", "503"} | ERROR_STATUSES, "POST /alerts/alertmanager": {"200", "503"} | ERROR_STATUSES,
    }
    schemas = doc["components"]["schemas"]
    assert set(schemas["ErrorBody"]["properties"]) == {"error", "detail"} and schemas["ErrorBody"]["required"] == [
        "error"]
    assert not {"InvalidArgument", "NotFound", "InternalServerError", "HTTPValidationError"} & set(schemas)
    assert set(doc["components"]["securitySchemes"]) == {"ApiKeyHeader", "BearerAuth"}
    assert "security" not in doc["paths"]["/readyz"]["get"] and doc["paths"]["/model"]["get"]["security"]


def test_the_flights_service_conforms_to_its_document(flights: Any, prefect: list[Any]) -> None:
    valid: dict[str, dict[str, Any]] = {"/predict": {"flights": [FLIGHT]}, "/alerts/alertmanager": ALERT}
    with TestClient(flights.to_asgi()) as client:
        doc = client.get("/docs.json", headers=AUTH).json()
        for path, body in valid.items():
            ok = client.post(path, json=body, headers=AUTH)
            assert ok.status_code == 200, ok.text
            assert_conforms(doc, "POST", path, ok)
        counts = fuzz(client, doc, headers=AUTH, max_examples=MAX_EXAMPLES)
        seen = check_bad_requests(client, doc, bad_requests(doc, valid, body_limit=LIMIT, auth=AUTH))
        check_chunked_oversized(client, doc, "/predict", body_limit=LIMIT, headers=AUTH)
        far = client.post("/predict", json={"flights": [{**FLIGHT, "sched_dep": "1000-01-01T00:00:00Z"}]}, headers=AUTH)
        assert far.status_code == 400 and far.json()["detail"][0]["type"] == "datetime_range"
        # the two findings, as answered now
        array = client.post("/predict", json=[None, None], headers=AUTH)
        assert array.status_code == 400 and array.json()["detail"] == [
            {"loc": [], "type": "model_type", "msg": "Input should be an object"}]
        unknown_kind = {**ALERT, "alerts": [{"labels": {"retrain_kind": "bogus"}}]}
        refused = client.post("/alerts/alertmanager", json=unknown_kind, headers=AUTH)
        assert refused.status_code == 400 and "retrain_kind" in refused.json()["error"]
        assert_conforms(doc, "POST", "/alerts/alertmanager", refused)
    assert min(counts["POST /predict negative"], counts["POST /predict positive"]) >= MAX_EXAMPLES // 2
    assert counts["POST /alerts/alertmanager positive"] >= MAX_EXAMPLES // 2
    assert {400, 401, 413, 415} <= set(seen)
    assert prefect, "no generated alert reached Prefect"


def test_alert_intake_without_prefect_is_a_documented_503(flights: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(*_: Any, **__: Any) -> int:
        raise httpx.ConnectError("connection refused")

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with TestClient(flights.to_asgi()) as client:
        doc = client.get("/docs.json", headers=AUTH).json()
        unset = client.post("/alerts/alertmanager", json=ALERT, headers=AUTH)
        assert unset.status_code == 503 and "PREFECT_API_URL" in unset.json()["error"]
        assert_conforms(doc, "POST", "/alerts/alertmanager", unset)
        monkeypatch.setenv("PREFECT_API_URL", "http://prefect.invalid/api")
        monkeypatch.setattr(events, "post_events_http", unreachable)
        down = client.post("/alerts/alertmanager", json=ALERT, headers=AUTH)
        assert down.status_code == 503 and "did not take the alerts" in down.json()["error"]
        assert_conforms(doc, "POST", "/alerts/alertmanager", down)


def test_a_worker_not_ready_answers_a_documented_503(flights: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """No online store: `/readyz` and `/predict` answer 503 with the reason, as documented."""

    def no_store(settings: Any) -> Any:
        raise ConnectionError("online store down")

    monkeypatch.setattr(feature_store, "open_store", no_store)
    with TestClient(flights.to_asgi()) as client:
        doc = client.get("/docs.json", headers=AUTH).json()
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert_conforms(doc, "GET", "/readyz", ready)
        r = client.post("/predict", json={"flights": [FLIGHT]}, headers=AUTH)
        assert r.status_code == 503 and r.json() == {"error": "online store not available"}
        assert_conforms(doc, "POST", "/predict", r)


def _answering(status: int, content_type: bytes, body: bytes) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if status == 0:
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type), (b"allow", b"GET")]})
        await send({"type": "http.response.body", "body": body})

    return app


@pytest.mark.parametrize(("status", "content_type", "body", "expected"), [
    (0, b"", b"", {"error": UNEXPECTED}),  # the app raised before answering
    (404, b"text/plain", b"Not Found", {"error": "Not Found"}),
    (415, b"application/json", b'[{"error": "not allowed"}]', {"error": "not allowed"}),  # BentoML's 4xx list
    (503, b"application/json", b'{"detail": "store down"}', {"error": "store down"}),  # an HTTPException
    (422, b"application/json", b'{"detail": [{"loc": ["a"], "type": "missing", "msg": "Field required", "input": 1}]}',
     {"error": "1 validation error in the request body",
      "detail": [{"loc": ["a"], "type": "missing", "msg": "Field required"}]}),
    (500, b"application/json", b"{not json", {"error": "Internal Server Error"}),
])
def test_every_error_answer_becomes_the_error_body(status: int, content_type: bytes, body: bytes,
                                                    expected: dict[str, Any]) -> None:
    settings = SimpleNamespace(serve_max_batch=5, api_key_value=None)
    app = HttpContract(_answering(status, content_type, body), settings_provider=lambda: settings)  # type: ignore
    r = TestClient(app, raise_server_exceptions=False).get("/x")
    assert r.status_code == (status or 500) and r.json() == expected
    assert r.headers["content-type"] == "application/json" and int(r.headers["content-length"]) == len(r.content)
    assert status == 0 or r.headers["allow"] == "GET"  # the app's other headers are kept


# ---------------------------------------------------------------------- the use-case service (bike sharing)


# module-scoped and after the flights' tests: its environment (RETRAIN_USECASE, ...) stays set until the module ends
@pytest.fixture(scope="module")
def bike(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BikeHome, type]]:
    """A bike-sharing home served by the use-case service, with the API key set."""
    home: Path = tmp_path_factory.mktemp("bikeopenapi")
    mp = pytest.MonkeyPatch()
    bike_env(mp, home)
    mp.setenv("RETRAIN_API_KEY", KEY)
    (home / "prometheus").mkdir()  # see tests/unit/test_serving_api.py
    mp.setenv("PROMETHEUS_MULTIPROC_DIR", str(home / "prometheus"))
    built = build_bike_home()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from bentos.usecase.service import UseCaseService
    drop_bentoml_metrics()
    yield built, UseCaseService
    drop_bentoml_metrics()
    mp.undo()
    get_settings.cache_clear()


@pytest.mark.integration
@pytest.mark.slow
def test_the_usecase_service_conforms_to_its_document(bike: tuple[BikeHome, Any]) -> None:
    home, service = bike
    valid = {"/predict": {"rows": [payload(home.picks.iloc[0])]}}
    with TestClient(service.to_asgi()) as client:
        doc = client.get("/docs.json", headers=AUTH).json()
        assert doc["openapi"] == "3.1.0"
        assert documented(doc)["POST /predict"] == {"200", "503"} | ERROR_STATUSES
        assert "/alerts/alertmanager" not in doc["paths"]
        ok = client.post("/predict", json=valid["/predict"], headers=AUTH)
        assert ok.status_code == 200, ok.text
        assert_conforms(doc, "POST", "/predict", ok)
        counts = fuzz(client, doc, headers=AUTH, max_examples=MAX_EXAMPLES)
        seen = check_bad_requests(client, doc, bad_requests(doc, valid, body_limit=LIMIT, auth=AUTH))
        check_chunked_oversized(client, doc, "/predict", body_limit=LIMIT, headers=AUTH)
        naive = client.post("/predict", json={"rows": [{**valid["/predict"]["rows"][0], "ts": "2011-06-01T15:00:00"}]},
                            headers=AUTH)
        assert naive.status_code == 400 and naive.json()["detail"][0]["loc"] == ["rows", 0, "ts"]
        far = client.post("/predict", json={"rows": [{**valid["/predict"]["rows"][0], "ts": "1000-01-01T00:00:00Z"}]},
                          headers=AUTH)
        assert far.status_code == 400 and far.json()["detail"][0]["type"] == "datetime_range"
    assert min(counts["POST /predict negative"], counts["POST /predict positive"]) >= MAX_EXAMPLES // 2
    assert {400, 401, 413, 415} <= set(seen)
