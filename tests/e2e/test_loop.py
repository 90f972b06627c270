"""End to end: alert events -> Prefect automation -> retrain deployment -> ledger, evaluation, decision.

One Prefect server and one process worker (free port, state under a temporary RETRAIN_HOME) serve
the whole module. The home holds January–February 2013 landed through the real ingest path, the
feature tables, `feast apply`, the online store materialized to 2013-03-01 and a champion trained
in-process on early January. The simulated clock stands at 2013-03-01, so every retrain plans the
same windows: train [2013-01-17, 2013-02-14), evaluate [2013-02-14, 2013-02-28).

Each worker flow run is a new Python process (imports Feast, catches up, trains, evaluates): about
30-40 s on 2 cores. The module runs three full retrains plus one deduplicated run.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from retrain.alerts.reconcile import CANCELLED, reconcile_cancelled
from retrain.core import clock, events, services
from retrain.core.config import Settings, get_settings
from retrain.core.db import Alert, Evaluation, ModelVersion, Promotion
from retrain.models import registry

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NOW = datetime(2013, 3, 1, tzinfo=UTC)
CHAMPION_WINDOW = (datetime(2013, 1, 1, tzinfo=UTC), datetime(2013, 1, 15, tzinfo=UTC))
TRAIN_WINDOW = (datetime(2013, 1, 17, tzinfo=UTC), datetime(2013, 2, 14, tzinfo=UTC))
EVAL_WINDOW = (datetime(2013, 2, 14, tzinfo=UTC), datetime(2013, 2, 28, tzinfo=UTC))
CONCURRENCY_MESSAGE = "Deployment concurrency limit reached."

# Settings of the test process and the worker (and so of every flow run): small models, no bento
# build, no cooldown (every test promotes or rejects on the same simulated day), a 28-day training
# window inside the landed data, size/latency gates loose so AUC and slices decide (a 40-round model
# can be several times the size of the early-stopped champion; latency on a busy machine is noise).
# With these settings the first retrain is promoted (AUC +0.05 on the eval window; carrier=MQ dips
# 0.021, inside the 0.05 slice tolerance) and every later retrain of the same window produces the
# same model again, which the evaluator must reject: both decisions run through the worker.
LOOP_ENV = {
    "RETRAIN_NUM_BOOST_ROUND": "40",
    "RETRAIN_EARLY_STOPPING_ROUNDS": "10",
    "RETRAIN_NUM_LEAVES": "15",
    "RETRAIN_NUM_THREADS": "2",
    "RETRAIN_RETRAIN_BUILD_BENTO": "false",
    "RETRAIN_RETRAIN_COOLDOWN_HOURS": "0",
    "RETRAIN_RETRAIN_TRAIN_DAYS": "28",
    "RETRAIN_RETRAIN_EVAL_DAYS": "14",
    "RETRAIN_RETRAIN_LABEL_LAG_HOURS": "12",
    "RETRAIN_GATE_SIZE_FACTOR": "1000",
    "RETRAIN_GATE_LATENCY_FACTOR": "1000",
    "RETRAIN_GATE_SLICE_TOLERANCE": "0.05",
    "RETRAIN_SIMULATED_CLOCK": "1",  # the home's clock stands at NOW for this process and the worker's runs
    # the whole loop runs behind Prefect's basic auth: the server requires it; deploy, the worker, its flow
    # runs (and the events they emit) and this test's client and event posts send it
    "RETRAIN_PREFECT_AUTH_STRING": "retrain:loop-s3cr3t",
    # OpenMP threads that spin made 2-thread LightGBM fits 3-5x slower on this shared 2-core machine
    "OMP_WAIT_POLICY": "PASSIVE",
}
RUN_TIMEOUT_S = 240.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Loop:
    """The running stack and helpers to talk to it."""

    settings: Settings
    sessions: sessionmaker[Session]
    api_url: str
    champion: str
    client: Any  # prefect SyncPrefectClient on this server (never the process-wide settings)

    def post(self, kind: str, payload: dict[str, Any], *, event: str | None = None) -> str:
        """POST one alert event to the server's `/api/events`; returns its id."""
        body = events.build_event(event or events.alert_event_name(kind),
                                  events.model_resource(self.settings.model_name), payload)
        assert events.post_events_http(self.api_url, [body], auth_string=self.settings.prefect_auth_value) == 204
        return str(body["id"])

    def retrain_runs(self) -> list[Any]:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
        from prefect.client.schemas.sorting import FlowRunSort

        return list(self.client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["retrain"])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=200))

    def wait_runs(self, event_ids: list[str], timeout: float = RUN_TIMEOUT_S) -> dict[str, list[Any]]:
        """Flow runs started by these events (by the `event_id` parameter), once every one is final."""
        deadline = time.monotonic() + timeout
        while True:
            runs: dict[str, list[Any]] = {e: [] for e in event_ids}
            for run in self.retrain_runs():
                eid = (run.parameters or {}).get("event_id")
                if eid in runs:
                    runs[eid].append(run)
            missing = [e for e, rs in runs.items() if not rs]
            pending = [r.name for rs in runs.values() for r in rs if r.state is None or not r.state.is_final()]
            if not missing and not pending:
                return runs
            if time.monotonic() > deadline:
                raise AssertionError(f"after {timeout:.0f} s: {len(missing)} event(s) without a run, pending "
                                     f"runs {pending}\n--- worker log ---\n{self.log_tail('prefect-worker')}")
            time.sleep(1.0)

    def alerts_of(self, run_ids: list[str]) -> list[Alert]:
        with self.sessions() as s:
            return list(s.scalars(select(Alert).where(Alert.flow_run_id.in_(run_ids)).order_by(Alert.id)))

    def count(self, model: type[Any]) -> int:
        with self.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(model)) or 0)

    def champion_version(self) -> str | None:
        row = registry.get_alias(self.sessions, registry.CHAMPION, self.settings.model_name)
        return row.version if row else None

    def events_named(self, name: str, match: Callable[[dict[str, Any]], bool],
                     timeout: float = 30.0) -> list[dict[str, Any]]:
        """Payloads of the server's `name` events that `match`, waiting for the (asynchronous) event store."""
        deadline = time.monotonic() + timeout
        while True:
            answer = httpx.post(f"{self.api_url}/events/filter", json={"filter": {"event": {"prefix": [name]}},
                                                                        "limit": 50},
                                headers=events.prefect_auth_headers(self.settings.prefect_auth_value), timeout=10)
            assert answer.status_code == 200, answer.text
            found = [e["payload"] for e in answer.json()["events"] if e["event"] == name and match(e["payload"])]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(1.0)

    def log_tail(self, name: str, n: int = 60) -> str:
        path = self.settings.home / "logs" / f"{name}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return "\n".join(lines[-n:])


def build_home(settings: Settings) -> str:
    """Jan–Feb 2013 through the ingest path, features, `feast apply`, online store, an early champion."""
    from flight_delay import features as F
    from flight_delay.ingest import replay_until
    from flight_delay.pipeline import frame_provider
    from retrain.features import store as FS
    from retrain.models.train import train_version

    settings.ensure_dirs()
    settings.export_env()
    clock.set_now(settings, NOW)
    sessions = registry.open_registry(settings)
    replay_until(settings, sessions, NOW)
    F.refresh_feature_tables(settings, NOW)
    F.apply_repo(settings)
    FS.materialize_until(FS.open_store(settings), settings, NOW)
    first = train_version(settings, sessions, frame_provider(settings, shared=False), *CHAMPION_WINDOW,
                          label="late", time_col="sched_dep")
    registry.promote(sessions, first.version, reason="e2e loop fixture: first champion", actor="tests")
    return first.version


def start_prefect(settings: Settings) -> None:
    """Server, work pool + `prefect deploy --all`, worker (the worker gets LOOP_ENV)."""
    services.start(settings, services.prefect_server_spec(settings), timeout=120)
    services.ensure_pool_and_deploy(settings)
    services.start(settings, dataclasses.replace(services.prefect_worker_spec(settings), env=dict(LOOP_ENV)))


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    from prefect.client.orchestration import SyncPrefectClient

    home = tmp_path_factory.mktemp("loop")
    saved_env = dict(os.environ)
    os.environ.update(LOOP_ENV)
    os.environ.update({"RETRAIN_HOME": str(home), "RETRAIN_PREFECT_PORT": str(free_port())})
    get_settings.cache_clear()  # db.utcnow() stamps through get_settings(): the simulated clock of this home
    settings = get_settings()
    t0 = time.perf_counter()
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            servers = pool.submit(start_prefect, settings)  # subprocesses; overlaps the in-process build
            champion = build_home(settings)
            servers.result()
        print(f"loop stack ready in {time.perf_counter() - t0:.1f} s")
        api_url = services.prefect_api_url(settings)
        anonymous = httpx.post(f"{api_url}/flows/filter", json={}, timeout=10)
        assert anonymous.status_code == 401, "the loop's Prefect server must require basic auth"
        with SyncPrefectClient(api_url, auth_string=settings.prefect_auth_value) as client:
            yield Loop(settings, registry.open_registry(settings), api_url, champion, client)
    finally:
        for name in ("prefect-worker", "prefect-server"):
            services.stop(settings, name)
        os.environ.clear()
        os.environ.update(saved_env)
        get_settings.cache_clear()


@dataclass(frozen=True)
class FirstRetrain:
    event_id: str
    dedupe_key: str
    run: Any
    evaluations_before: int
    champion_before: str | None
    seconds: float


@pytest.fixture(scope="module")
def first_retrain(loop: Loop) -> FirstRetrain:
    """One fully typed data_drift alert and the retrain run it starts."""
    before, champion = loop.count(Evaluation), loop.champion_version()
    key = f"e2e-first-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    eid = loop.post("data_drift", {
        "kind": "data_drift", "metric": "psi:dep_hour", "value": 0.41, "threshold": 0.25,
        "window_from": "2013-02-22T00:00:00Z", "window_to": "2013-03-01T00:00:00Z", "dedupe_key": key,
        "reason": "e2e: weekly drift check", "source": "monitor"})
    runs = loop.wait_runs([eid])
    seconds = time.perf_counter() - t0
    print(f"alert event -> finished retrain run: {seconds:.1f} s")
    return FirstRetrain(eid, key, runs[eid], before, champion, seconds)


# ------------------------------------------------------------------------------------------ tests


def test_alert_event_runs_one_retrain_with_an_evaluation_and_a_decision(loop: Loop,
                                                                        first_retrain: FirstRetrain) -> None:
    runs = first_retrain.run
    assert len(runs) == 1, f"one event must start exactly one run, got {[r.name for r in runs]}"
    run = runs[0]
    assert run.state.is_completed(), f"{run.state.type}: {run.state.message}\n{loop.log_tail('prefect-worker')}"
    params = run.parameters
    assert params["kind"] == "data_drift" and params["dedupe_key"] == first_retrain.dedupe_key
    assert float(params["value"]) == pytest.approx(0.41) and float(params["threshold"]) == pytest.approx(0.25)
    raised = datetime.fromisoformat(str(params["raised_at"]))  # the server's receive time, rendered
    assert raised.tzinfo is not None and raised <= run.start_time

    [alert] = loop.alerts_of([str(run.id)])
    assert alert.outcome == "run" and alert.dedupe_key == first_retrain.dedupe_key
    assert (alert.kind, alert.metric, alert.source) == ("data_drift", "psi:dep_hour", "monitor")
    assert alert.value == pytest.approx(0.41) and alert.threshold == pytest.approx(0.25)
    assert alert.window_from == datetime(2013, 2, 22, tzinfo=UTC)
    assert alert.received_at == NOW  # stamped by the simulated clock

    assert loop.count(Evaluation) == first_retrain.evaluations_before + 1
    ev, challenger, champion_then, moves = evaluation_of(loop, alert)
    assert champion_then is not None and champion_then.version == first_retrain.champion_before == loop.champion
    assert (challenger.train_from, challenger.train_to) == TRAIN_WINDOW
    assert (ev.window_from, ev.window_to) == EVAL_WINDOW and ev.n_rows >= 10_000
    # promoted: the champion alias moved, the old champion is archived, both moves cite the evaluation
    assert ev.decision == "promote", ev.reasons
    assert ev.metrics["challenger"]["auc"] > ev.metrics["champion"]["auc"]
    assert loop.champion_version() == challenger.version and challenger.status == "champion"
    assert [(m.alias, m.action) for m in moves] == [("champion", "promote"), ("challenger", "clear")]
    assert (moves[0].from_version_id, moves[0].to_version_id) == (champion_then.id, challenger.id)
    assert registry.get_version(loop.sessions, champion_then.version).status == "archived"
    # the decision reached the Prefect server as an event, from the worker's flow run (basic auth on)
    [promoted] = loop.events_named(events.EVENT_PROMOTED, lambda p: p.get("version") == challenger.version)
    assert promoted["previous"] == champion_then.version and promoted["evaluation_id"] == ev.id


def evaluation_of(loop: Loop, alert: Alert) -> tuple[Evaluation, ModelVersion, ModelVersion | None, list[Promotion]]:
    """The evaluation an admitted alert's retrain recorded (its id is in the alert's detail), the
    challenger and champion it compared, and the alias moves that cite it."""
    found = re.search(r"evaluation (\d+): (promote|reject)", alert.detail or "")
    assert found, f"no evaluation in the alert's detail: {alert.detail!r}"
    with loop.sessions() as s:
        ev = s.get(Evaluation, int(found.group(1)))
        assert ev is not None and ev.decision == found.group(2)
        challenger = s.get(ModelVersion, ev.challenger_id)
        champion = s.get(ModelVersion, ev.champion_id) if ev.champion_id else None
        moves = list(s.scalars(select(Promotion).where(Promotion.evaluation_id == ev.id).order_by(Promotion.id)))
    assert challenger is not None
    return ev, challenger, champion, moves


def test_alert_storm_runs_one_retrain_and_records_the_rest(loop: Loop) -> None:
    """20 alerts in a burst: half share a dedupe key, half have their own. One retrain; every other
    alert is cancelled by the concurrency limit or deduplicated by the ledger, and recorded."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    evaluations_before = loop.count(Evaluation)
    tag = uuid.uuid4().hex[:8]
    shared = f"storm-{tag}"
    keys = [shared if i % 2 == 0 else f"storm-{tag}-{i}" for i in range(20)]
    t0 = time.perf_counter()
    ids = [loop.post("data_drift", {"metric": "psi:distance", "value": 0.3 + i / 100, "threshold": 0.25,
                                    "dedupe_key": k, "source": "monitor"})
           for i, k in enumerate(keys)]
    posting = time.perf_counter() - t0
    by_event = loop.wait_runs(ids)  # always wait: a run left behind would cancel the next tests' runs
    # The storm must land while the first retrain still runs (~20 s): on a loaded machine posting took
    # 3.5 s, which is still a storm; only a post slower than a retrain would change the scenario.
    assert posting < 10.0, f"posting 20 events took {posting:.2f} s: not a storm any more"
    print(f"storm: 20 events posted in {posting:.2f} s, all runs final after {time.perf_counter() - t0:.1f} s")

    assert all(len(rs) == 1 for rs in by_event.values()), "each event starts exactly one flow run"
    runs = [rs[0] for rs in by_event.values()]
    key_of = {str(rs[0].id): keys[ids.index(e)] for e, rs in by_event.items()}
    cancelled = [r for r in runs if r.state.is_cancelled()]
    completed = [r for r in runs if r.state.is_completed()]
    assert len(cancelled) + len(completed) == 20, [(r.name, r.state.type) for r in runs]
    assert all(r.state.message == CONCURRENCY_MESSAGE for r in cancelled)
    assert all(r.start_time is None or r.total_run_time.total_seconds() == 0 for r in cancelled)

    # exactly one retrain: one admitted alert, one evaluation
    ledger = {str(a.flow_run_id): a for a in loop.alerts_of([str(r.id) for r in completed])}
    assert set(ledger) == {str(r.id) for r in completed}
    admitted = [a for a in ledger.values() if a.outcome == "run"]
    assert len(admitted) == 1, [(a.dedupe_key, a.outcome) for a in ledger.values()]
    assert loop.count(Evaluation) == evaluations_before + 1
    winner = next(r for r in completed if str(r.id) == admitted[0].flow_run_id)
    for run in completed:  # a straggler that got a slot after the winner finished
        if run is not winner:
            alert = ledger[str(run.id)]
            assert alert.outcome == "deduplicated", (alert.outcome, alert.detail)
            # its own key: answered by the winner, which started after this alert was raised
            assert alert.dedupe_key == shared or (alert.detail or "").startswith(
                f"covered by the retrain of alert {admitted[0].id}"), alert.detail

    # the winner's flow recorded every run cancelled before it looked (the reconcile task)
    task_runs = loop.client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[winner.id])))
    [rec] = [t for t in task_runs if t.name.startswith("reconcile_task")]
    assert rec.state.is_completed() and rec.start_time is not None
    recorded = {str(a.flow_run_id): a for a in loop.alerts_of([str(r.id) for r in cancelled])}
    seen_by_flow = {str(r.id) for r in cancelled if r.state.timestamp < rec.start_time}
    assert seen_by_flow <= set(recorded), "cancelled runs the winner's reconcile should have recorded"
    print(f"storm: {len(completed)} completed ({len(completed) - 1} deduplicated), {len(cancelled)} cancelled, "
          f"{len(seen_by_flow)} recorded by the winning flow run")

    # whatever was cancelled later is picked up by the next reconcile; a second pass adds nothing
    first = reconcile_cancelled(loop.settings, loop.sessions, NOW, client=loop.client)
    again = reconcile_cancelled(loop.settings, loop.sessions, NOW, client=loop.client)
    assert len(first.recorded) == len(cancelled) - len(recorded)
    assert again.recorded == [] and again.freed == [] and again.already == again.seen
    rows = loop.alerts_of([str(r.id) for r in cancelled])
    assert sorted(str(a.flow_run_id) for a in rows) == sorted(str(r.id) for r in cancelled)  # one row each
    for a in rows:
        assert a.outcome == CANCELLED and a.kind == "data_drift" and a.dedupe_key == key_of[str(a.flow_run_id)]
        assert CONCURRENCY_MESSAGE in (a.detail or "") and a.value is not None and a.value >= 0.3
    # the storm in the ledger: one row per alert, one of them a retrain
    outcomes = sorted(a.outcome for a in loop.alerts_of([str(r.id) for r in runs]))
    assert len(outcomes) == 20 and outcomes.count("run") == 1
    assert set(outcomes) <= {"run", "deduplicated", CANCELLED}


def test_event_missing_optional_fields_still_starts_a_run(loop: Loop, first_retrain: FirstRetrain) -> None:
    """An empty payload: the trigger's defaults fill every parameter and the retrain runs in full. The
    window is the one the first retrain promoted a model from, so the same model comes out again and
    the evaluator rejects it (no improvement); the champion stays."""
    evaluations_before, champion = loop.count(Evaluation), loop.champion_version()
    eid = loop.post("performance_decay", {})
    [run] = loop.wait_runs([eid])[eid]
    assert run.state.is_completed(), f"{run.state.type}: {run.state.message}\n{loop.log_tail('prefect-worker')}"
    params = dict(run.parameters)
    assert datetime.fromisoformat(str(params.pop("raised_at"))).tzinfo is not None  # server-stamped, always there
    assert params == {
        "kind": "performance_decay", "model_name": "flight_delay", "metric": "", "value": "", "threshold": "",
        "window_from": "", "window_to": "", "dedupe_key": "", "reason": "", "source": "event", "event_id": eid}
    [alert] = loop.alerts_of([str(run.id)])
    # no key from the sender: the ledger's time-bucket key (model:kind:source:b<bucket>) dedupes keyless storms
    assert (alert.outcome, alert.kind, alert.source) == ("run", "performance_decay", "event")
    assert alert.dedupe_key.startswith("flight_delay:performance_decay:event:b"), alert.dedupe_key
    assert alert.metric is None and alert.value is None and alert.threshold is None and alert.window_from is None
    assert loop.count(Evaluation) == evaluations_before + 1
    ev, challenger, champion_then, moves = evaluation_of(loop, alert)
    assert champion_then is not None and champion_then.version == champion
    assert challenger.data_fingerprint == champion_then.data_fingerprint  # same window, same rows
    assert ev.decision == "reject" and any(r.startswith("improvement failed") for r in ev.reasons), ev.reasons
    assert loop.champion_version() == champion and challenger.status == "rejected"
    assert [(m.alias, m.action, m.from_version_id) for m in moves] == [("challenger", "clear", challenger.id)]
    [rejected] = loop.events_named(events.EVENT_REJECTED, lambda p: p.get("evaluation_id") == ev.id)
    assert rejected["version"] == challenger.version and rejected["champion"] == champion


def test_retrain_alert_cli_starts_a_run(loop: Loop, first_retrain: FirstRetrain) -> None:
    """`retrain alert` from a shell pointed at the server: its event starts a retrain run. It reuses the
    first retrain's dedupe key, so the run is admitted by nobody: the ledger records a dedupe."""
    evaluations_before = loop.count(Evaluation)
    env = services.child_env(loop.settings)  # RETRAIN_HOME, RETRAIN_PREFECT_PORT, PREFECT_API_URL of the test stack
    proc = subprocess.run(
        [services.bin_path("retrain"), "alert", "--kind", "manual", "--reason", "X",
         "--dedupe-key", first_retrain.dedupe_key, "--json"],
        env=env, cwd=Path(loop.settings.home), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    sent = json.loads(proc.stdout.strip().splitlines()[-1])
    [eid] = sent["sent"]
    [run] = loop.wait_runs([eid])[eid]
    assert run.state.is_completed(), f"{run.state.type}: {run.state.message}"
    params = run.parameters
    assert (params["kind"], params["reason"], params["source"], params["dedupe_key"]) == (
        "manual", "X", "cli", first_retrain.dedupe_key)
    [alert] = loop.alerts_of([str(run.id)])
    [first] = loop.alerts_of([str(first_retrain.run[0].id)])
    assert (alert.outcome, alert.kind, alert.source) == ("deduplicated", "manual", "cli")
    assert alert.payload["reason"] == "X" and alert.dedupe_key == first_retrain.dedupe_key
    assert f"alert {first.id}" in (alert.detail or "")
    assert loop.count(Evaluation) == evaluations_before  # a dedupe trains nothing


def test_monitor_flow_raises_the_alert_that_starts_a_retrain(loop: Loop, first_retrain: FirstRetrain) -> None:
    """The loop as the mission states it, with no event posted by the test: the champion's last week of
    predictions turns bad once their labels mature; the monitor deployment's run finds the decay and
    emits the alert itself; the "retrain on alert" automation starts a retrain, which the ledger records."""
    import numpy as np

    from retrain.core.db import Outcome, Prediction

    champion = loop.champion_version()
    assert champion is not None
    rng = np.random.default_rng(11)
    scores = rng.uniform(0.02, 0.98, 1200)
    with loop.sessions.begin() as s:
        for i, score in enumerate(scores):
            at = NOW - timedelta(days=6, hours=12) + timedelta(minutes=7 * i)
            key = f"e2e-monitor-{i}"
            s.add(Prediction(request_id=f"e2e-monitor-{i // 10}", model_name=loop.settings.model_name,
                             model_version=champion, predicted_at=at, entity_key=key, event_time=at, features={},
                             attributes={}, score=float(score)))
            # the outcome contradicts the score: the champion's matured AUC collapses
            s.add(Outcome(model_name=loop.settings.model_name, entity_key=key, event_time=at,
                          available_at=at + timedelta(hours=3), label=float(score < 0.5)))
    deployment = loop.client.read_deployment_by_name("monitor/monitor")
    started = datetime.now(UTC)
    monitor_run = loop.client.create_flow_run_from_deployment(
        deployment.id, parameters={"model_name": loop.settings.model_name, "as_of": NOW.isoformat()})
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (state := loop.client.read_flow_run(monitor_run.id).state) or not state.is_final():
        assert time.monotonic() < deadline, f"monitor run not done\n{loop.log_tail('prefect-worker')}"
        time.sleep(1.0)
    assert state.is_completed(), f"{state.type}: {state.message}\n{loop.log_tail('prefect-worker')}"
    from retrain.core.db import MonitoringRun

    with loop.sessions() as s:
        monitored = s.scalars(select(MonitoringRun).order_by(MonitoringRun.id.desc()).limit(1)).one()
    assert monitored.model_version == champion and monitored.n_labelled >= 1000
    assert any(a["kind"] == "performance_decay" for a in monitored.alerts), monitored.alerts
    # the automation turns the monitor's event into a retrain run
    while True:
        runs = [r for r in loop.retrain_runs() if (r.parameters or {}).get("source") == "monitor"
                and r.created and r.created >= started]
        if runs and all(r.state is not None and r.state.is_final() for r in runs):
            break
        assert time.monotonic() < deadline, f"no retrain from the monitor's alert\n{loop.log_tail('prefect-worker')}"
        time.sleep(1.0)
    [run] = runs
    assert run.state.is_completed(), f"{run.state.type}: {run.state.message}"
    assert run.parameters["kind"] in ("performance_decay", "data_drift", "estimated_decay")
    [alert] = loop.alerts_of([str(run.id)])
    assert alert.source == "monitor" and alert.outcome == "run", (alert.outcome, alert.detail)
    assert alert.detail and alert.detail.startswith("trained ")


def test_a_retrain_killed_during_training_is_recorded_and_the_next_alert_retrains(loop: Loop) -> None:
    """`kill -9` of the flow-run process while it trains: Prefect marks the run Crashed, the champion keeps
    serving, the ledger row ends "crashed" (not stuck as running), and the next alert with the same key
    retrains."""
    import signal

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    champion = loop.champion_version()
    key = f"e2e-kill-{uuid.uuid4().hex[:8]}"
    eid = loop.post("manual", {"reason": "e2e: killed while training", "dedupe_key": key, "source": "tests"})
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:  # the run is up and its training task is running
        runs = [r for r in loop.retrain_runs() if (r.parameters or {}).get("event_id") == eid]
        if runs and runs[0].state is not None and runs[0].state.is_running() and runs[0].infrastructure_pid:
            tasks = loop.client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[runs[0].id])))
            if any(t.name.startswith("train_task") and t.state is not None and t.state.is_running() for t in tasks):
                break
        assert time.monotonic() < deadline, f"the retrain never reached training\n{loop.log_tail('prefect-worker')}"
        time.sleep(0.2)
    run = runs[0]
    os.kill(int(str(run.infrastructure_pid).rsplit(":", 1)[-1]), signal.SIGKILL)
    while not (state := loop.client.read_flow_run(run.id).state) or not state.is_final():
        assert time.monotonic() < deadline, f"the killed run never ended\n{loop.log_tail('prefect-worker')}"
        time.sleep(0.5)
    assert state.is_crashed(), f"{state.type}: {state.message}"
    assert loop.champion_version() == champion  # promotion only happens inside a passing evaluation

    eid2 = loop.post("manual", {"reason": "e2e: after the crash", "dedupe_key": key, "source": "tests"})
    [run2] = loop.wait_runs([eid2])[eid2]
    assert run2.state.is_completed(), f"{run2.state.type}: {run2.state.message}"
    [dead] = loop.alerts_of([str(run.id)])
    assert dead.outcome == "crashed" and dead.dedupe_key == key, (dead.outcome, dead.detail)
    [alive] = loop.alerts_of([str(run2.id)])
    assert alive.outcome == "run" and alive.dedupe_key == key and (alive.detail or "").startswith("trained "), \
        (alive.outcome, alive.detail)
