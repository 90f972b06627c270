"""End to end: `bentoml serve` on a free port over a real RETRAIN_HOME (Feast online store, model
store, registry). Train/serve parity, input validation, API key, shadow challenger, champion swaps
under load, a corrupt champion, and (production profile: Redis + PostgreSQL) a database outage
and a shutdown that lose no prediction.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from tests.support.openapi import bad_requests, check_bad_requests, fuzz
from tests.support.serving_home import (
    Server,
    ServingHome,
    build_production_home,
    build_serving_home,
    flight_payload,
    offline_scores,
    production_stores,
    sessions_for,
    small_settings,
    start_server,
    wait_for,
)

from flight_delay.features import MODEL_FEATURES
from retrain.core.db import ModelVersion, Prediction
from retrain.models import registry
from retrain.models import store as modelstore
from retrain.serving.httpapi import body_limit

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KEY = "e2e-secret"
FOLLOW_S = 1.0
WORKER_HEADER = "x-retrain-worker"  # the pid of the worker that answered a /predict (bentos/flight_delay/service.py)


@pytest.fixture(scope="session")
def home(tmp_path_factory: pytest.TempPathFactory) -> ServingHome:
    return build_serving_home(small_settings(tmp_path_factory.mktemp("serving"), serve_follow_seconds=FOLLOW_S))


@pytest.fixture(scope="module")
def server(home: ServingHome) -> Iterator[Server]:
    srv = start_server(home.settings, workers=2, api_key=KEY)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def sessions(home: ServingHome) -> sessionmaker[Session]:
    return sessions_for(home.settings)


SERVED: list[tuple[str, int]] = []  # (request_id, flights) of every 200 answer of the local server


def predict(srv: Server, flights: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    with srv.client() as c:
        r = c.post("/predict", json={"flights": flights}, **kw)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    SERVED.append((body["request_id"], len(flights)))
    return body


def tag_of(sessions: sessionmaker[Session], version: str) -> str:
    return registry.get_version(sessions, version).bento_model_tag


def champion_version(sessions: sessionmaker[Session]) -> str | None:
    row = registry.get_alias(sessions, "champion", "flight_delay")
    return row.version if row else None


def metric_sum(srv: Server, name: str) -> float:
    with srv.client() as c:
        text = c.get("/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def check_parity(srv: Server, home: ServingHome, sessions: sessionmaker[Session]) -> dict[str, Any]:
    """Served probabilities == the offline model on point-in-time features, flight by flight."""
    flights = home.parity_flights
    body = predict(srv, [flight_payload(r) for _, r in flights.iterrows()])
    preds = body["predictions"]
    expected = offline_scores(home.settings, tag_of(sessions, body["model_version"]), home.parity_features)
    got = np.array([p["delay_probability"] for p in preds])
    assert len(got) == len(flights) >= 30
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    assert [p["flight_id"] for p in preds] == flights["flight_id"].tolist()
    nan_cols = [[c for c in MODEL_FEATURES if pd.isna(row[c])] for _, row in home.parity_features.iterrows()]
    assert [p["missing_features"] for p in preds] == nan_cols
    return body


# ---------------------------------------------------------------------------------- local profile


def test_api_key_is_enforced_except_health(server: Server) -> None:
    import httpx

    flight = flight_payload(pd.Series({"carrier": "UA", "flight": 1, "tailnum": None, "origin": "EWR",
                                       "dest": "IAH", "sched_dep": pd.Timestamp("2013-02-10T11:00Z"),
                                       "distance": 1400.0}))
    with httpx.Client(base_url=server.url, timeout=10) as c:
        for path in ("/livez", "/readyz", "/healthz"):
            assert c.get(path).status_code == 200
        assert c.post("/predict", json={"flights": [flight]}).status_code == 401
        assert c.post("/predict", json={"flights": [flight]}, headers={"x-api-key": "nope"}).status_code == 401
        for path in ("/model", "/metrics", "/docs.json"):
            assert c.get(path).status_code == 401
        ok = c.post("/predict", json={"flights": [flight]}, headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200
        SERVED.append((ok.json()["request_id"], 1))
        spec = c.get("/docs.json", headers={"x-api-key": KEY}).json()
        assert {"/predict", "/model"} <= set(spec["paths"])


def test_train_serve_parity(server: Server, home: ServingHome, sessions: sessionmaker[Session]) -> None:
    body = check_parity(server, home, sessions)
    assert body["model_version"] == champion_version(sessions)


def test_unknown_tailnum_predicts_with_plane_features_missing(server: Server, home: ServingHome) -> None:
    flight = flight_payload(home.parity_flights.iloc[0]) | {"tailnum": "NZZZZZ"}
    pred = predict(server, [flight])["predictions"][0]
    assert {"plane_year", "plane_seats", "plane_engines"} <= set(pred["missing_features"])
    assert 0.0 < pred["delay_probability"] < 1.0 and pred["tailnum"] == "NZZZZZ"


BAD_INPUTS: list[tuple[str, Any, list[Any] | None, str]] = [
    ("missing field", {"drop": "origin"}, ["flights", 0, "origin"], "Field required"),
    ("wrong type", {"set": {"flight": "1545"}}, ["flights", 0, "flight"], "valid integer"),
    ("wrong type distance", {"set": {"distance": "far"}}, ["flights", 0, "distance"], "valid number"),
    ("unknown airport", {"set": {"dest": "ZZZ"}}, ["flights", 0, "dest"], "unknown airport code 'ZZZ'"),
    ("unknown carrier", {"set": {"carrier": "ZZ"}}, ["flights", 0, "carrier"], "unknown carrier 'ZZ'"),
    ("unparseable time", {"set": {"sched_dep": "next tuesday"}}, ["flights", 0, "sched_dep"], "valid datetime"),
    ("naive time", {"set": {"sched_dep": "2013-02-10T06:00:00"}}, ["flights", 0, "sched_dep"], "no UTC offset"),
    ("unknown key", {"set": {"gate": "B12"}}, ["flights", 0, "gate"], "Extra inputs are not permitted"),
    ("empty batch", {"body": {"flights": []}}, ["flights"], "at least 1 item"),
    ("oversize batch", {"n": 1001}, ["flights"], "batch of 1001 flights exceeds the limit of 1000"),
    ("not a list", {"body": {"flights": {"carrier": "UA"}}}, ["flights"], "valid array"),
    ("not JSON", {"raw": b"{flights: nope"}, [], "Invalid JSON"),
]


@pytest.mark.parametrize(("case", "change", "loc", "message"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_refused_and_server_keeps_serving(server: Server, home: ServingHome, case: str,
                                                       change: dict[str, Any], loc: list[Any] | None,
                                                       message: str) -> None:
    good = flight_payload(home.parity_flights.iloc[1])
    flight = dict(good)
    if "drop" in change:
        flight.pop(change["drop"])
    flight.update(change.get("set", {}))
    with server.client() as c:
        if "raw" in change:
            r = c.post("/predict", content=change["raw"], headers={"content-type": "application/json"})
        else:
            body = change.get("body", {"flights": [flight] * change.get("n", 1)})
            r = c.post("/predict", json=body)
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert detail[0]["loc"] == loc and message in detail[0]["msg"], detail
    again = predict(server, [good])  # the server still answers correctly
    assert again["predictions"][0]["flight_id"] == home.parity_flights.iloc[1]["flight_id"]


def test_every_answer_is_one_the_served_document_lists(server: Server, home: ServingHome) -> None:
    """Generated and hand-picked bad requests get only the statuses and bodies `/docs.json` documents (the
    in-process suite, tests/unit/test_openapi_conformance.py, runs many more)."""
    auth = {"x-api-key": KEY, "authorization": f"Bearer {KEY}"}
    alert = {"alerts": [{"labels": {"alertname": "AUCDrop"}, "startsAt": "2013-06-01T00:00:00Z"}]}
    valid: dict[str, dict[str, Any]] = {"/predict": {"flights": [flight_payload(home.parity_flights.iloc[1])]},
                                        "/alerts/alertmanager": alert}  # no PREFECT_API_URL here: a documented 503
    with httpx.Client(base_url=server.url, timeout=30) as c:  # no default key: the keyless cases stay keyless
        doc = c.get("/docs.json", headers=auth).json()
        counts = fuzz(c, doc, headers=auth, max_examples=10)
        seen = check_bad_requests(c, doc, bad_requests(doc, valid, body_limit=body_limit(1000), auth=auth))
    assert sum(counts.values()) > 300 and {400, 401, 413, 415} <= set(seen)


def test_model_endpoint_describes_the_champion(server: Server, sessions: sessionmaker[Session]) -> None:
    with server.client() as c:
        info = c.get("/model").json()
    row = registry.get_alias(sessions, "champion", "flight_delay")
    assert row is not None
    champ = info["champion"]
    assert champ["version"] == row.version and champ["bento_model_tag"] == row.bento_model_tag
    assert pd.Timestamp(champ["train_from"]) == pd.Timestamp(row.train_from)
    assert pd.Timestamp(champ["train_to"]) == pd.Timestamp(row.train_to)
    assert champ["promoted_at"] is not None and info["in_sync"] and info["follow_seconds"] == FOLLOW_S


def test_shadow_challenger_is_logged_beside_the_champion(server: Server, home: ServingHome,
                                                         sessions: sessionmaker[Session]) -> None:
    champ = champion_version(sessions)
    challenger = next(v for v in home.versions if v != champ)
    registry.set_challenger(sessions, challenger, reason="e2e shadow", actor="e2e")
    try:
        assert wait_for(lambda: all(_model_info(server)["challenger"] is not None for _ in range(6)), 4 * FOLLOW_S)
        body = predict(server, [flight_payload(r) for _, r in home.parity_flights.head(10).iterrows()])
        assert all("shadow" not in k for p in body["predictions"] for k in p)  # never in the answer
        rows = _wait_rows(home, body["request_id"], 10)
        matrix = np.array([[np.nan if r.features[c] is None else r.features[c] for c in MODEL_FEATURES]
                           for r in rows])
        expected = offline_scores(home.settings, tag_of(sessions, challenger),
                                  pd.DataFrame(matrix, columns=MODEL_FEATURES))
        assert {r.shadow_version for r in rows} == {challenger}
        np.testing.assert_allclose(np.array([r.shadow_score for r in rows], dtype="float64"), expected, rtol=1e-9)
        np.testing.assert_allclose([r.score for r in rows], [p["delay_probability"] for p in body["predictions"]])
        assert metric_sum(server, 'retrain_shadow_predictions_total{model_version="' + challenger) >= 10
    finally:
        registry.clear_challenger(sessions, "flight_delay", reason="e2e shadow done", actor="e2e")


def complete(logged: dict[str, int], expected: dict[str, int]) -> bool:
    """Every expected request has exactly its number of prediction rows."""
    return all(logged.get(k) == n for k, n in expected.items())


def _model_info(srv: Server) -> dict[str, Any]:
    with srv.client() as c:
        info: dict[str, Any] = c.get("/model").json()
    return info


def worker_pids(srv: Server, n: int, tries: int = 100) -> set[int]:
    """PIDs of the workers answering `/model` (asks until `n` distinct ones answered)."""
    pids: set[int] = set()
    for _ in range(tries):
        pids.add(_model_info(srv)["worker_pid"])
        if len(pids) >= n:
            break
    return pids


def _wait_rows(home: ServingHome, request_id: str, n: int, timeout: float = 10.0) -> list[Prediction]:
    s = sessions_for(home.settings)

    def rows() -> list[Prediction]:
        with s() as session:
            return list(session.scalars(select(Prediction).where(Prediction.request_id == request_id)
                                        .order_by(Prediction.id)))

    assert wait_for(lambda: len(rows()) == n, timeout), f"{len(rows())} of {n} rows logged"
    return rows()


@dataclass(frozen=True)
class Answer:
    """One `/predict` call of a client thread: when it was sent and answered (monotonic clock), its status,
    and for a 200 the version, the worker (pid) and the scores it reports; else the error."""

    sent: float
    received: float
    status: int
    version: str = ""
    worker: int = 0
    scores: tuple[float, ...] = ()
    error: str = ""


def swap_client(server: Server, payload: list[dict[str, Any]], answers: list[Answer],
                stop: threading.Event) -> None:
    """POST `payload` until `stop`, one connection per request (so the workers share the traffic); every
    exception is a failed request, recorded, never raised out of the thread."""
    with server.client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as c:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                r = c.post("/predict", json={"flights": payload})
                if r.status_code != 200:
                    answers.append(Answer(t0, time.monotonic(), r.status_code, error=r.text[:200]))
                    continue
                body = r.json()
                answers.append(Answer(t0, time.monotonic(), 200, version=body["model_version"],
                                      worker=int(r.headers[WORKER_HEADER]),
                                      scores=tuple(p["delay_probability"] for p in body["predictions"])))
                SERVED.append((body["request_id"], len(payload)))
            except Exception as exc:  # a dropped connection or a malformed answer is a failed request too
                answers.append(Answer(t0, time.monotonic(), -1, error=repr(exc)))


def test_swap_under_load_fails_no_request(server: Server, home: ServingHome,
                                          sessions: sessionmaker[Session]) -> None:
    """Five champion moves (promotions and rollbacks over all four versions) while four clients post to
    two workers: no request fails, every worker answers, each answer's scores are the offline scores of
    the version it names, each answer names a version that was champion while it was in flight (or the
    one just replaced, until its worker caught up), a worker never goes back to a replaced version, and
    every worker serves every champion."""
    start_version = champion_version(sessions)
    assert start_version is not None
    a, b, c = [v for v in home.versions if v != start_version][:3]
    n_rows = 5
    payload = [flight_payload(r) for _, r in home.parity_flights.head(n_rows).iterrows()]
    features = home.parity_features.head(n_rows)
    expected = {v: offline_scores(home.settings, home.tags[v], features) for v in home.versions}
    for i, v in enumerate(home.versions):  # the versions score these flights apart: a wrong label shows
        for other in home.versions[i + 1:]:
            assert not np.allclose(expected[v], expected[other], rtol=1e-6), (v, other)
    workers = worker_pids(server, 2)
    assert len(workers) == 2

    def promote(version: str) -> str:
        registry.promote(sessions, version, reason="e2e swap under load", actor="e2e")
        return version

    def rollback() -> str:
        return registry.rollback(sessions, reason="e2e swap under load", actor="e2e", model_name="flight_delay")[1]\
            .version

    moves: list[Any] = [lambda: promote(a), lambda: promote(b), rollback, lambda: promote(c),
                        lambda: promote(start_version)]
    answers: list[Answer] = []
    stop = threading.Event()
    epochs: list[tuple[float, str]] = [(-math.inf, start_version)]  # (moved at, champion from then on)

    def all_served(since: float, version: str) -> bool:
        return {x.worker for x in list(answers) if x.status == 200 and x.sent >= since and x.version == version} \
            >= workers

    threads = [threading.Thread(target=swap_client, args=(server, payload, answers, stop)) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        assert wait_for(partial(all_served, -math.inf, start_version), 30.0), "not every worker answered"
        for move in moves:
            t_move = time.monotonic()
            version = move()
            assert version != epochs[-1][1]
            epochs.append((t_move, version))
            assert wait_for(partial(all_served, t_move, version), 30.0), \
                f"a worker never served {version}: {Counter((x.worker, x.version) for x in answers)}"
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert champion_version(sessions) == start_version

    failed = [x for x in answers if x.status != 200]
    assert not failed, failed[:5]
    ok = list(answers)
    assert {x.worker for x in ok} == workers  # every worker served traffic
    assert {x.version for x in ok} == {v for _, v in epochs}  # every champion was served, nothing else
    for x in ok:  # the scores are the reported version's own
        np.testing.assert_allclose(x.scores, expected[x.version], rtol=1e-9, atol=1e-12,
                                   err_msg=f"{x.version} from worker {x.worker}")

    def epoch_at(t: float) -> int:
        return max(i for i, (moved, _) in enumerate(epochs) if moved <= t)

    for x in ok:  # champion while in flight, or the one it replaced (the worker had not caught up yet)
        allowed = {epochs[i][1] for i in range(max(epoch_at(x.sent) - 1, 0), epoch_at(x.received) + 1)}
        assert x.version in allowed, (x, epochs)
    for w in workers:  # once a worker answered with a new champion, it never answers with the old one
        mine = [x for x in ok if x.worker == w]
        for i in range(1, len(epochs)):
            t_move, version = epochs[i]
            t_next = epochs[i + 1][0] if i + 1 < len(epochs) else math.inf
            switched = min((x.received for x in mine if x.sent >= t_move and x.version == version), default=None)
            assert switched is not None, (w, version)
            stale = [x for x in mine if switched <= x.sent and x.received < t_next and x.version != version]
            assert not stale, (w, version, stale[:3])
    per_worker = Counter(x.worker for x in ok)
    print(f"\nswap under load: {len(ok)} requests, 0 failed, {len(moves)} champion moves "
          f"({' -> '.join(v for _, v in epochs)}), answers per worker {sorted(per_worker.values())}")


def test_corrupt_champion_is_not_swapped_in(server: Server, home: ServingHome,
                                            sessions: sessionmaker[Session]) -> None:
    serving = champion_version(sessions)
    assert serving is not None
    good = registry.get_version(sessions, serving)
    booster = modelstore.load_booster(home.settings, good.bento_model_tag, good.model_checksum)
    saved = modelstore.save_booster(home.settings, booster, metadata={}, labels={})
    data = saved.path.read_bytes()
    saved.path.write_bytes(data[: len(data) // 2])  # truncated after the checksum was taken
    fields = {c.key: getattr(good, c.key) for c in ModelVersion.__table__.columns
              if c.key not in ("id", "version", "status", "created_at", "bento_tag")}
    fields.update(bento_model_tag=saved.tag, model_checksum=saved.checksum)
    bad = registry.register_version(sessions, **fields).version
    pids_before = worker_pids(server, 2)
    failures_before = metric_sum(server, 'retrain_model_swap_failures_total{alias="champion"}')
    registry.promote(sessions, bad, reason="e2e corrupt model", actor="e2e")
    try:
        assert wait_for(lambda: metric_sum(server, 'retrain_model_swap_failures_total{alias="champion"}')
                        >= failures_before + 2, 10 * FOLLOW_S)  # both workers tried and refused
        for _ in range(10):
            assert predict(server, [flight_payload(home.parity_flights.iloc[2])])["model_version"] == serving
        info = _model_info(server)
        assert info["registry_champion"] == bad and not info["in_sync"]
        assert "checksum mismatch" in (info["last_error"] or "")
        assert info["champion"]["version"] == serving
        assert server.proc.poll() is None
        assert worker_pids(server, 2) == pids_before  # no worker died (a LightGBM abort would kill one)
    finally:
        registry.promote(sessions, serving, reason="e2e restore after corrupt model", actor="e2e")


def test_every_prediction_was_logged(server: Server, home: ServingHome) -> None:
    assert SERVED
    s = sessions_for(home.settings)

    def counts() -> dict[str, int]:
        with s() as session:
            stmt = select(Prediction.request_id, func.count()).group_by(Prediction.request_id)
            return dict(session.execute(stmt).tuples().all())

    expected = dict(SERVED)
    t0 = time.monotonic()
    assert wait_for(lambda: complete(counts(), expected), 10.0)
    got = counts()
    assert sum(got[k] for k in expected) == sum(expected.values())
    print(f"\nprediction log: {sum(expected.values())} predictions of {len(expected)} requests all logged "
          f"(waited {time.monotonic() - t0:.1f} s)")


# ---------------------------------------------------------------------------------- production profile


@pytest.fixture(scope="module")
def production(home: ServingHome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Any, Any]]:
    with production_stores() as stores:
        settings = build_production_home(home, tmp_path_factory.mktemp("serving_prod"), stores,
                                         serve_follow_seconds=FOLLOW_S, serve_log_flush_seconds=1.5,
                                         serve_log_retry_seconds=0.5)
        srv = start_server(settings, workers=1)
        try:
            yield srv, stores, settings
        finally:
            srv.stop()


PROD_SERVED: list[tuple[str, int]] = []


@pytest.mark.postgres
def test_production_profile_parity(production: tuple[Server, Any, Any], home: ServingHome) -> None:
    srv, stores, settings = production
    sessions = sessions_for(settings)
    with srv.client() as c:
        assert c.get("/model").json()["champion"]["version"] == champion_version(sessions)
    body = check_parity(srv, home, sessions)
    PROD_SERVED.append((body["request_id"], len(body["predictions"])))
    SERVED.pop()  # check_parity recorded it as a local request


@pytest.mark.postgres
def test_database_outage_loses_no_prediction(production: tuple[Server, Any, Any], home: ServingHome) -> None:
    srv, stores, settings = production
    payload = [flight_payload(r) for _, r in home.parity_flights.head(3).iterrows()]
    errors: list[str] = []  # every failed request: an error status or an exception in the client
    answered = [0]
    stop = threading.Event()

    def traffic() -> None:
        with srv.client() as c:
            while not stop.is_set():
                try:
                    r = c.post("/predict", json={"flights": payload})
                    if r.status_code == 200:
                        PROD_SERVED.append((r.json()["request_id"], len(payload)))
                        answered[0] += 1
                    else:
                        errors.append(f"{r.status_code}: {r.text[:200]}")
                except Exception as exc:  # a dropped connection or a malformed answer is a failed request too
                    errors.append(repr(exc))
                time.sleep(0.02)

    threads = [threading.Thread(target=traffic) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)
        stores.sql_down()
        during = len(PROD_SERVED)
        assert wait_for(lambda: metric_sum(srv, "retrain_predlog_spilled_rows_total") > 0, 15.0)
        time.sleep(2.0)
        served_while_down = len(PROD_SERVED) - during
        stores.sql_up()
        time.sleep(2.0)
    finally:
        stores.sql_up()
        stop.set()
        for t in threads:
            t.join()
    assert not errors, f"{len(errors)} of {answered[0] + len(errors)} requests failed: {errors[:3]}"
    assert served_while_down > 10  # answering went on while the database was gone
    sessions = sessions_for(settings)
    expected = dict(PROD_SERVED)

    def logged() -> dict[str, int]:
        with sessions() as s:
            stmt = select(Prediction.request_id, func.count()).group_by(Prediction.request_id)
            return dict(s.execute(stmt).tuples().all())

    assert wait_for(lambda: complete(logged(), expected), 30.0), \
        f"{sum(1 for k in expected if k not in logged())} requests not logged"
    spilled = metric_sum(srv, "retrain_predlog_spilled_rows_total")
    assert spilled > 0
    assert wait_for(lambda: metric_sum(srv, "retrain_predlog_replayed_rows_total") == spilled, 10.0)
    assert not list((settings.home / "spill").glob("predictions-*"))
    with sessions() as s:  # replay inserted nothing twice
        dupes = s.execute(select(Prediction.request_id, Prediction.entity_key, func.count())
                          .group_by(Prediction.request_id, Prediction.entity_key).having(func.count() > 1)).all()
    assert not dupes
    print(f"\ndatabase outage: {served_while_down} requests answered while down, {int(spilled)} rows spilled "
          "and replayed, 0 lost")


@pytest.mark.postgres
def test_shutdown_flushes_pending_predictions(production: tuple[Server, Any, Any], home: ServingHome) -> None:
    srv, stores, settings = production
    payload = [flight_payload(r) for _, r in home.parity_flights.head(20).iterrows()]
    with srv.client() as c:
        for _ in range(10):  # within one 1.5 s flush interval: still buffered when the stop comes
            r = c.post("/predict", json={"flights": payload})
            assert r.status_code == 200
            PROD_SERVED.append((r.json()["request_id"], len(payload)))
    sessions = sessions_for(settings)
    ids = [k for k, _ in PROD_SERVED[-10:]]
    with sessions() as s:
        before = s.scalar(select(func.count()).select_from(Prediction).where(Prediction.request_id.in_(ids)))
    srv.stop()
    with sessions() as s:
        got = dict(s.execute(select(Prediction.request_id, func.count())
                             .group_by(Prediction.request_id)).tuples().all())
    missing = {k: n for k, n in PROD_SERVED if got.get(k) != n}
    assert not missing, f"{len(missing)} requests not (fully) logged after shutdown"
    print(f"\nshutdown: {200 - (before or 0)} of the last 200 predictions were still buffered at SIGTERM; all logged")
