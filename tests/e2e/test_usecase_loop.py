"""End to end for a use case with its own Feast repository (bike sharing): a manual alert event for
`retrain.model.bike_sharing` -> the retrain deployment's trigger -> a retrain flow run on the worker
that resolves the use case from the event -> ledger, evaluation, decision; and the served model follows.

The stack is test_loop.py's harness (its `LOOP_ENV`, `start_prefect` and `Loop` helpers) over its own
home: the simulated clock belongs to a home, and this one stands in 2011 (the flights' home in 2013).
Setup, as a user runs it (`retrain --usecase bike_sharing ingest/apply/materialize/train/promote`, here
through the functions those commands call, while the Prefect server starts): hours landed up to
2011-04-01, `feast apply`, online store up to then, a champion trained on [2011-01-01, 2011-02-15).
The same home holds a flights champion (registry row only) that must stay untouched.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select
from tests.e2e.test_loop import LOOP_ENV, Loop, evaluation_of, start_prefect
from tests.support.models import fake_version_fields

from retrain.core import clock, services
from retrain.core.config import Settings, get_settings
from retrain.core.db import Alert, Evaluation, ModelVersion
from retrain.models import registry

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

USECASE = "bike_sharing"
NOW = datetime(2011, 4, 1, tzinfo=UTC)
CHAMPION_WINDOW = (datetime(2011, 1, 1, tzinfo=UTC), datetime(2011, 2, 15, tzinfo=UTC))
SERVED_HOUR = pd.Timestamp("2011-03-31 22:00", tz="UTC")  # predicted at 21:00, before NOW
RUN_TIMEOUT_S = 180.0
INIT_USECASE = "kiosks"  # made by `retrain init` from a CSV the test writes, on the same 2011 timeline


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class UseCaseStack:
    loop: Loop
    flights_champion: str
    served_row: dict[str, Any]


def build_home(settings: Settings) -> tuple[str, str]:
    """Bike hours landed to NOW, `feast apply`, online store to NOW, champion; a flights champion row."""
    from retrain.features.store import materialize_until
    from retrain.usecase import featurestore, landing
    from retrain.usecase.pipeline import Pipeline, settings_of

    spec, _ = settings_of(USECASE)
    settings.ensure_dirs()
    settings.export_env()
    clock.set_now(settings, NOW)
    sessions = registry.open_registry(settings)
    landed = landing.replay_until(spec, settings, sessions, NOW)
    assert landed.landed > 2000 and set(landed.tables) == {"weather", "demand"}
    featurestore.apply(spec, settings)
    materialize_until(featurestore.open_store(settings), settings, NOW, start=landing.data_start(settings, spec))
    version = Pipeline(spec, settings).train(*CHAMPION_WINDOW)
    registry.promote(sessions, version, reason="e2e use-case loop: first champion", actor="tests", model_name=USECASE)
    flights = registry.register_version(sessions, **fake_version_fields(1)).version
    registry.promote(sessions, flights, reason="e2e: a flights champion that must stay", actor="tests",
                     model_name="flight_delay")
    return version, flights


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UseCaseStack]:
    from prefect.client.orchestration import SyncPrefectClient

    from retrain.usecase.featurestore import raw_rows
    from retrain.usecase.pipeline import settings_of

    home = tmp_path_factory.mktemp("usecase_loop")
    saved_env = dict(os.environ)
    os.environ.update(LOOP_ENV)
    os.environ.update({"RETRAIN_HOME": str(home), "RETRAIN_PREFECT_PORT": str(free_port()),
                       "RETRAIN_SERVE_PORT": str(free_port()), "RETRAIN_USECASE": USECASE,
                       "RETRAIN_SERVE_FOLLOW_SECONDS": "1", "RETRAIN_USECASES_DIR": str(home / "usecases")})
    get_settings.cache_clear()
    settings = get_settings()
    assert settings.model_name == USECASE and settings.bento == "usecase"
    t0 = time.perf_counter()
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            servers = pool.submit(start_prefect, settings)  # subprocesses; overlaps the in-process build
            champion, flights = build_home(settings)
            servers.result()
        services.start(settings, services.bento_spec(settings), timeout=180)  # what `retrain up` serves
        print(f"use-case stack ready in {time.perf_counter() - t0:.1f} s")
        spec, _ = settings_of(USECASE)
        raw = raw_rows(spec)
        [row] = raw[raw["ts"] == SERVED_HOUR].to_dict("records")
        served = {"ts": row["ts"].isoformat(), "holiday": bool(row["holiday"]),
                  "workingday": bool(row["workingday"]), "season": str(row["season"])}
        api_url = services.prefect_api_url(settings)
        with SyncPrefectClient(api_url, auth_string=settings.prefect_auth_value) as client:  # LOOP_ENV: basic auth on
            yield UseCaseStack(Loop(settings, registry.open_registry(settings), api_url, champion, client),
                               flights, served)
    finally:
        for name in ("bentoml", f"bentoml-{INIT_USECASE}", "prefect-worker", "prefect-server"):
            services.stop(settings, name)
        os.environ.clear()
        os.environ.update(saved_env)
        get_settings.cache_clear()


def predict(stack: UseCaseStack) -> dict[str, Any]:
    s = stack.loop.settings
    r = httpx.post(f"http://{s.serve_host}:{s.serve_port}/predict", json={"rows": [stack.served_row]}, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


def count(stack: UseCaseStack, model: type[Any], model_name: str) -> int:
    with stack.loop.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(model.model_name == model_name)) or 0)


def test_manual_alert_retrains_the_use_case_and_leaves_the_flights_alone(stack: UseCaseStack) -> None:
    loop = stack.loop
    first = predict(stack)
    assert first["model_name"] == USECASE and first["model_version"] == loop.champion
    assert first["predictions"][0]["score"] > 0

    flights_before = {m: count(stack, m, "flight_delay") for m in (ModelVersion, Evaluation, Alert)}
    evaluations_before = count(stack, Evaluation, USECASE)
    key = f"e2e-usecase-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    eid = loop.post("manual", {"reason": "e2e: bike sharing retrain", "dedupe_key": key, "source": "tests"})
    [run] = loop.wait_runs([eid], timeout=RUN_TIMEOUT_S)[eid]
    print(f"alert event -> finished bike_sharing retrain run: {time.perf_counter() - t0:.1f} s")
    assert run.state.is_completed(), f"{run.state.type}: {run.state.message}\n{loop.log_tail('prefect-worker')}"
    assert run.parameters["model_name"] == USECASE and run.parameters["kind"] == "manual"

    [alert] = loop.alerts_of([str(run.id)])
    assert (alert.model_name, alert.outcome, alert.kind, alert.dedupe_key) == (USECASE, "run", "manual", key)
    assert alert.received_at == NOW  # the home's simulated clock
    assert count(stack, Evaluation, USECASE) == evaluations_before + 1
    ev, challenger, champion_then, _moves = evaluation_of(loop, alert)
    assert challenger.model_name == USECASE and challenger.version != loop.champion
    assert champion_then is not None and champion_then.version == loop.champion
    assert ev.decision in ("promote", "reject") and ev.n_rows > 166
    assert "rmse" in ev.metrics["challenger"], ev.metrics  # judged as a regression, on the use case's label
    now_champion = loop.champion_version()
    assert now_champion == (challenger.version if ev.decision == "promote" else loop.champion)

    # the flights model is untouched: same champion, nothing trained, judged or alerted for it
    flights = registry.get_alias(loop.sessions, registry.CHAMPION, "flight_delay")
    assert flights is not None and flights.version == stack.flights_champion
    assert {m: count(stack, m, "flight_delay") for m in (ModelVersion, Evaluation, Alert)} == flights_before

    # the service follows the registry's champion of its use case
    deadline = time.monotonic() + 30
    while predict(stack)["model_version"] != now_champion and time.monotonic() < deadline:
        time.sleep(0.5)
    assert predict(stack)["model_version"] == now_champion


def kiosk_csv(path: Any) -> Any:
    """Jan-Mar 2011, one row an hour: whether a kiosk sold out, driven by `x`, the hour and a category."""
    rng = np.random.default_rng(3)
    ts = pd.date_range("2011-01-01", "2011-04-01", freq="h", tz="UTC", inclusive="left")
    x = rng.normal(size=len(ts))
    color = rng.choice(["red", "green", "blue"], size=len(ts))
    logit = 2.0 * x + np.where(color == "red", 1.0, -0.5) + np.where((ts.hour >= 16) & (ts.hour < 20), 1.5, 0.0)
    y = (rng.random(len(ts)) < 1 / (1 + np.exp(-logit))).astype(int)
    pd.DataFrame({"ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "x": x, "color": color, "y": y}).to_csv(path, index=False)
    return path


def test_a_usecase_made_by_init_runs_the_same_loop(stack: UseCaseStack) -> None:
    """`retrain init` -> ingest -> apply -> materialize -> train -> promote -> serve -> alert -> retrain."""
    from retrain.core import events
    from retrain.core.config import base_settings
    from retrain.demo.usecase import request_rows
    from retrain.features.store import materialize_until
    from retrain.usecase import featurestore, landing
    from retrain.usecase.pipeline import Pipeline, settings_of
    from retrain.usecase.scaffold import init_usecase

    loop = stack.loop
    csv = kiosk_csv(loop.settings.home / "kiosks.csv")
    init_usecase(INIT_USECASE, csv, settings=base_settings(), time_col="ts", label_col="y", label_delay_hours=1)
    spec, settings = settings_of(INIT_USECASE)
    assert spec.feast is not None and spec.folder is not None and settings.bento == "usecase"
    assert (spec.folder / "features.py").is_file()
    settings = settings.model_copy(update={"serve_port": free_port()})
    sessions = registry.open_registry(settings)
    landed = landing.replay_until(spec, settings, sessions, NOW)
    assert landed.landed > 2000
    featurestore.apply(spec, settings)
    materialize_until(featurestore.open_store(settings), settings, NOW, start=landing.data_start(settings, spec))
    champion = Pipeline(spec, settings).train(*CHAMPION_WINDOW)
    registry.promote(sessions, champion, reason="e2e: init use case's first champion", actor="tests",
                     model_name=INIT_USECASE)
    serve = services.bento_spec(settings)
    assert f"usecase={INIT_USECASE}" in serve.argv
    services.start(settings, dataclasses.replace(serve, name=f"bentoml-{INIT_USECASE}"), timeout=180)
    raw = featurestore.raw_rows(spec)
    times = pd.to_datetime(raw["ts"], utc=True)
    body = request_rows(spec, raw[(times >= SERVED_HOUR) & (times < NOW)])
    r = httpx.post(f"http://{settings.serve_host}:{settings.serve_port}/predict", json={"rows": body}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == champion and 0 <= r.json()["predictions"][0]["score"] <= 1

    bike_champion = loop.champion_version()
    event = events.build_event(events.alert_event_name("manual"), events.model_resource(INIT_USECASE),
                               {"reason": "e2e: init use case retrain", "dedupe_key": f"e2e-{uuid.uuid4().hex[:8]}"})
    assert events.post_events_http(loop.api_url, [event], auth_string=loop.settings.prefect_auth_value) == 204
    eid = str(event["id"])
    [run] = loop.wait_runs([eid], timeout=RUN_TIMEOUT_S)[eid]
    assert run.state.is_completed(), f"{run.state.type}: {run.state.message}\n{loop.log_tail('prefect-worker')}"
    assert run.parameters["model_name"] == INIT_USECASE
    [alert] = loop.alerts_of([str(run.id)])
    assert (alert.model_name, alert.outcome) == (INIT_USECASE, "run"), alert.detail
    ev, challenger, champion_then, _moves = evaluation_of(loop, alert)
    assert challenger.model_name == INIT_USECASE and champion_then is not None and champion_then.version == champion
    assert ev.decision in ("promote", "reject") and "auc" in ev.metrics["challenger"], ev.metrics
    assert loop.champion_version() == bike_champion  # the other use case's champion stays


def test_a_worse_champion_is_rolled_back_by_the_guardrail_with_no_failed_request(stack: UseCaseStack) -> None:
    """Promote a deliberately worse model: the service swaps to it and scores the replaced champion in
    shadow; once two weeks of served hours have matured labels, the guardrail rolls back, emits
    `retrain.model.rollback`, and the service returns to the old champion while requests keep answering."""
    import threading

    from retrain.alerts.guardrail import check_guardrail
    from retrain.core import events
    from retrain.core.db import Prediction
    from retrain.demo.usecase import request_rows
    from retrain.usecase import featurestore
    from retrain.usecase.pipeline import Pipeline, settings_of

    loop = stack.loop
    good = loop.champion_version()
    assert good is not None
    spec, settings = settings_of(USECASE)
    weak_settings = settings.model_copy(update={"num_boost_round": 2, "num_leaves": 2, "early_stopping_rounds": 1})
    weak = Pipeline(spec, weak_settings).train(*CHAMPION_WINDOW)
    registry.promote(loop.sessions, weak, reason="e2e: a deliberately worse champion", actor="tests",
                     model_name=USECASE)
    deadline = time.monotonic() + 60
    while predict(stack)["model_version"] != weak:
        assert time.monotonic() < deadline, "the service never swapped to the promoted model"
        time.sleep(0.5)

    raw = featurestore.raw_rows(spec)
    times = pd.to_datetime(raw["ts"], utc=True)
    body = request_rows(spec, raw[(times >= NOW - pd.Timedelta(days=14)) & (times < NOW - pd.Timedelta(hours=6))])
    s = loop.settings
    url = f"http://{s.serve_host}:{s.serve_port}/predict"
    for i in range(0, len(body), s.serve_max_batch):
        r = httpx.post(url, json={"rows": body[i:i + s.serve_max_batch]}, timeout=30)
        assert r.status_code == 200, r.text
    deadline = time.monotonic() + 30
    while True:  # the prediction log is written by the service's background flusher, with the shadow scores
        with loop.sessions() as sess:
            paired = sess.scalar(select(func.count()).select_from(Prediction).where(
                Prediction.model_version == weak, Prediction.shadow_version == good)) or 0
        if paired >= len(body) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert paired >= len(body), f"{paired} of {len(body)} served rows carry the previous champion's shadow score"

    failures: list[str] = []
    served: list[str] = []
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            r = httpx.post(url, json={"rows": [stack.served_row]}, timeout=30)
            if r.status_code != 200:
                failures.append(f"{r.status_code}: {r.text[:200]}")
            else:
                served.append(r.json()["model_version"])

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        result = check_guardrail(settings, loop.sessions, USECASE, NOW, emit=lambda e, p: events.post_events_http(
            loop.api_url, [events.build_event(e, events.model_resource(USECASE), p)],
            auth_string=loop.settings.prefect_auth_value))
        assert result.status == "rollback", result
        assert result.previous == good and result.stats["lower"] > 0 and result.stats["n"] >= len(body)
        deadline = time.monotonic() + 30
        while not served or served[-1] != good:
            assert time.monotonic() < deadline, "the service did not return to the previous champion"
            time.sleep(0.2)
    finally:
        stop.set()
        asker.join(timeout=60)
    assert failures == [] and weak in served and served[-1] == good
    assert loop.champion_version() == good
    move = registry.history(loop.sessions, USECASE, registry.CHAMPION)[-1]
    assert (move.action, move.actor, move.to_version) == ("rollback", "guardrail", good)
    deadline, seen = time.monotonic() + 30, []  # the server stores events asynchronously
    while not any(p.get("rolled_back") == weak for p in seen) and time.monotonic() < deadline:
        time.sleep(1.0)
        found = httpx.post(f"{loop.api_url}/events/filter", timeout=10,
                           json={"filter": {"event": {"prefix": [events.EVENT_ROLLBACK]}}, "limit": 50},
                           headers=events.prefect_auth_headers(loop.settings.prefect_auth_value))
        assert found.status_code == 200, found.text
        seen = [e["payload"] for e in found.json()["events"]]
    assert any(p.get("rolled_back") == weak and p["version"] == good for p in seen), seen
