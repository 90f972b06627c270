"""The one-command demo: replay 2013 through the whole loop with real servers.

Setup ingests January–February, registers the features, trains and promotes the first champion
(through the Prefect deployments) and starts the BentoML service. The replay then walks the
simulated days: land what the clock released, refresh and materialize features, send the day's
flights to `/predict` over HTTP, and run monitoring on its simulated schedule. Monitoring alerts
travel as real Prefect events to the retrain deployment's trigger; the driver waits for the runs
they start, so the simulation stays causal. Per-day steps call the same functions the flows call
(a flow run per simulated day would cost more in overhead than the work).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from retrain import clock, services
from retrain.config import Settings
from retrain.jsonsafe import write_json_atomic

Say = Callable[[str], None]
STATE_FILE = "demo_state.json"


@dataclass(frozen=True)
class DemoPlan:
    """The simulated calendar of a demo run."""

    first_train: tuple[str, str] = ("2013-01-01", "2013-02-15")
    first_eval: tuple[str, str] = ("2013-02-15", "2013-03-01")
    replay_from: str = "2013-03-01"
    replay_to: str = "2014-01-01"
    monitor_every_days: int = 7
    batch_size: int = 250

    @classmethod
    def quick(cls) -> DemoPlan:
        """Two replayed months: enough for the first drift alerts and retrains."""
        return cls(replay_to="2013-05-01")


# The demo's retraining policy (each overridable by the same RETRAIN_* variable): weekly monitoring
# raises drift alerts almost every week as the seasons turn, so one retrain per champion per four
# simulated weeks and three weeks of cooldown after a promotion keep the year within budget.
DEMO_POLICY: dict[str, str] = {
    "RETRAIN_MONITOR_DEDUPE_POLICY": "champion_period",
    "RETRAIN_MONITOR_DEDUPE_PERIOD_HOURS": str(28 * 24),
    "RETRAIN_RETRAIN_COOLDOWN_HOURS": str(21 * 24),
}


def apply_demo_policy() -> dict[str, str]:
    """Set the demo policy in the environment (before settings are read; worker processes inherit it)."""
    for key, value in DEMO_POLICY.items():
        os.environ.setdefault(key, value)
    return {k: os.environ[k] for k in DEMO_POLICY}


@dataclass
class DemoState:
    """Where a demo got to, so a re-run can resume (kept in RETRAIN_HOME/demo_state.json)."""

    setup_done: bool = False
    first_version: str | None = None
    day: str | None = None  # the next simulated day to replay
    seconds: dict[str, float] = field(default_factory=dict)
    retrain_runs: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, settings: Settings, usecase: str | None = None) -> DemoState:
        path = state_path(settings, usecase)
        return cls(**json.loads(path.read_text())) if path.exists() else cls()

    def save(self, settings: Settings, usecase: str | None = None) -> None:
        write_json_atomic(state_path(settings, usecase), self.__dict__, indent=1)


def state_path(settings: Settings, usecase: str | None = None) -> Path:
    """The flights demo's state file, or a use case's (`demo_state_<name>.json`)."""
    return settings.home / (STATE_FILE if usecase is None else f"demo_state_{usecase}.json")


def utc(value: str | datetime) -> datetime:
    ts = pd.Timestamp(value)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()


def reset(settings: Settings) -> None:
    """Stop anything a previous run left and remove its state: a clean start."""
    for name in ("bentoml", "prefect-worker", "prefect-server"):
        services.stop(settings, name)
    if settings.home.exists():
        shutil.rmtree(settings.home)


# ------------------------------------------------------------------------------------------- setup


def setup(settings: Settings, plan: DemoPlan, state: DemoState, say: Say) -> None:
    """Servers, deployments, Jan–Feb data, features and the first champion (idempotent)."""
    from flight_delay.features import apply_repo, refresh_feature_tables
    from flight_delay.ingest import replay_until
    from retrain.feature_store import materialize_until, open_store
    from retrain.registry import open_registry

    start_prefect(settings, state, say)
    if state.setup_done:
        return
    sessions = open_registry(settings)
    start = utc(plan.replay_from)
    clock.set_now(settings, start)
    t0 = time.perf_counter()
    say(f"ingesting January–February 2013 (replay up to {start.date()})")
    counts = replay_until(settings, sessions, start, progress=say).counts()
    say(f"  landed {counts}")
    tables = refresh_feature_tables(settings, start)
    say(f"  feature tables: {tables}")
    say("feast apply")
    apply_repo(settings)
    say("materializing the online store")
    materialize_until(open_store(settings), settings, start)
    state.seconds["ingest_features"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    say(f"training the first model on [{plan.first_train[0]}, {plan.first_train[1]}) via the train deployment")
    trained = run_deployment(settings, "train/train",
                             {"window_from": plan.first_train[0], "window_to": plan.first_train[1]})
    version = str(trained["version"])
    say(f"evaluating {version} on [{plan.first_eval[0]}, {plan.first_eval[1]}) via the evaluate deployment")
    outcome = run_deployment(settings, "evaluate/evaluate", {
        "version": version, "window_from": plan.first_eval[0], "window_to": plan.first_eval[1],
        "promote": True, "build_bento": settings.retrain_build_bento, "actor": "demo:first-champion"})
    if outcome["decision"] != "promote":
        raise RuntimeError(f"the first model was rejected: {outcome['reasons']}")
    state.first_version = version
    state.seconds["first_champion"] = round(time.perf_counter() - t0, 1)
    state.setup_done = True
    state.day = plan.replay_from
    state.save(settings)


def start_prefect(settings: Settings, state: DemoState, say: Say) -> None:
    """The Prefect server (state under RETRAIN_HOME), the work pool and deployments, a process worker."""
    settings.ensure_dirs()
    os.environ.update(services.prefect_env(settings))
    t0 = time.perf_counter()
    say("starting the Prefect server (state under RETRAIN_HOME)")
    services.start(settings, services.prefect_server_spec(settings))
    say("creating the work pool and deploying prefect.yaml")
    services.ensure_pool_and_deploy(settings)
    services.start(settings, services.prefect_worker_spec(settings))
    state.seconds["servers"] = round(time.perf_counter() - t0, 1)


def run_deployment(settings: Settings, name: str, parameters: dict[str, Any], timeout: float = 900) -> Any:
    """Run a deployment on the worker and return its result (raises if the run did not complete)."""
    from prefect.deployments import run_deployment as prefect_run

    run: Any = prefect_run(name=name, parameters=parameters, timeout=timeout)  # sync call returns a FlowRun
    state = run.state
    if state is None or not state.is_completed():
        raise RuntimeError(f"{name} run {run.name} ended {state.type if state else 'unknown'}: "
                           f"{state.message if state else ''}; see the Prefect UI")
    return state.result()


def start_service(settings: Settings, say: Say) -> None:
    say(f"starting the BentoML service on {settings.serve_host}:{settings.serve_port}")
    services.start(settings, services.bento_spec(settings), timeout=240)


# ------------------------------------------------------------------------------------------ replay


def flight_requests(flights: pd.DataFrame) -> list[dict[str, Any]]:
    """The `/predict` body items for released flights (schedule facts only)."""
    tail = flights["tailnum"].astype("object")
    return [
        {"carrier": c, "flight": int(n), "tailnum": t if isinstance(t, str) else None, "origin": o, "dest": d,
         "sched_dep": s.isoformat().replace("+00:00", "Z"), "distance": float(dist)}
        for c, n, t, o, d, s, dist in zip(flights["carrier"], flights["flight"], tail, flights["origin"],
                                          flights["dest"], pd.to_datetime(flights["sched_dep"], utc=True),
                                          flights["distance"], strict=True)
    ]


def predict_day(client: httpx.Client, settings: Settings, flights: pd.DataFrame, batch: int) -> dict[str, int]:
    """POST the day's flights in batches; returns counts per answering model version."""
    versions: dict[str, int] = {}
    body = flight_requests(flights)
    headers = {"x-api-key": settings.api_key} if settings.api_key else {}
    for i in range(0, len(body), batch):
        resp = client.post("/predict", json={"flights": body[i:i + batch]}, headers=headers)
        resp.raise_for_status()
        for p in resp.json()["predictions"]:
            versions[p["model_version"]] = versions.get(p["model_version"], 0) + 1
    return versions


def wait_for_retrains(settings: Settings, since: datetime, known: list[str], timeout: float = 900) -> list[str]:
    """Wait until every retrain flow run created after `since` is finished; returns their ids."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
    )

    deadline = time.monotonic() + timeout
    seen: list[str] = []
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=since)),
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["retrain"])))
            seen = [str(r.id) for r in runs]
            pending = [r for r in runs if r.state is None or not r.state.is_final()]
            if not pending or time.monotonic() > deadline:
                return [s for s in seen if s not in known]
            time.sleep(1.0)


def replay(settings: Settings, plan: DemoPlan, state: DemoState, say: Say,
           progress: Callable[[int, int, str], None]) -> None:
    """Walk the simulated days from `state.day` to `plan.replay_to`."""
    from flight_delay.data import ReplayClock
    from flight_delay.features import refresh_feature_tables
    from flight_delay.ingest import replay_until
    from retrain.feature_store import materialize_until, open_store
    from retrain.registry import open_registry

    sessions = open_registry(settings)
    store = open_store(settings)
    replay_clock = ReplayClock()
    first, end = utc(plan.replay_from), utc(plan.replay_to)
    day = utc(state.day or plan.replay_from)
    total = (end - first).days
    base = f"http://{settings.serve_host}:{settings.serve_port}"
    last_monitor = day
    t_replay = time.perf_counter()
    with httpx.Client(base_url=base, timeout=120) as client:
        while day < end:
            nxt = day + timedelta(days=1)
            clock.set_now(settings, day)
            with timed(state, "ingest"):
                replay_until(settings, sessions, day, clock=replay_clock)
            with timed(state, "features"):
                refresh_feature_tables(settings, nxt)
            with timed(state, "materialize"), quiet():
                materialize_until(store, settings, nxt)
            with timed(state, "predict"):
                flights = replay_clock.flights_between(day, nxt)
                versions = predict_day(client, settings, flights, plan.batch_size)
            if (nxt - last_monitor).days >= plan.monitor_every_days:
                clock.set_now(settings, nxt)
                with timed(state, "ingest"):
                    replay_until(settings, sessions, nxt, clock=replay_clock)  # outcomes matured by then
                with timed(state, "monitor_and_retrain"):
                    monitor_and_retrain(settings, state, nxt, say)
                last_monitor = nxt
            day = nxt
            state.day = day.date().isoformat()
            state.seconds["replay"] = round(time.perf_counter() - t_replay, 1)
            state.save(settings)
            progress((day - first).days, total, f"{day.date()} served by {', '.join(sorted(versions)) or '-'}")


@contextmanager
def timed(state: DemoState, key: str) -> Iterator[None]:
    """Accumulate the seconds of one kind of step in the demo state (the timing table)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        state.seconds[f"step_{key}"] = round(state.seconds.get(f"step_{key}", 0.0) + time.perf_counter() - t0, 2)


@contextmanager
def quiet() -> Iterator[None]:
    """Feast prints a progress line per view and day, and ibis a DeprecationWarning per query; the
    demo shows its own progress instead."""
    with open(os.devnull, "w") as sink, redirect_stdout(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def monitor_and_retrain(settings: Settings, state: DemoState, now: datetime, say: Say) -> None:
    """Run the monitor flow (its alerts become events); wait for the retrains the trigger starts."""
    import sys

    from retrain.config import REPO_ROOT

    if str(REPO_ROOT) not in sys.path:  # flows/ is not part of the installed package
        sys.path.insert(0, str(REPO_ROOT))
    from flows.monitor import monitor_flow

    started = datetime.now(UTC) - timedelta(seconds=2)
    result = monitor_flow(model_name=settings.model_name, as_of=now.isoformat())
    if result["events"]["sent"]:
        kinds = ", ".join(a["kind"] for a in result["alerts"])
        say(f"{now.date()}: monitoring raised {kinds}; waiting for the retrain run(s)")
        time.sleep(3.0)  # the trigger reacts to the event within a second or two
        state.retrain_runs += wait_for_retrains(settings, started, state.retrain_runs)


# ----------------------------------------------------------------------------------------- summary


def monthly_table(settings: Settings, baseline_version: str) -> pd.DataFrame:
    """Per month: AUC of what was served vs the never-retrained first model, alerts, retrains, promotions."""
    from sqlalchemy import select

    from retrain.db import Alert, ModelVersion, Prediction, Promotion
    from retrain.metrics import roc_auc
    from retrain.modelstore import load_booster
    from retrain.registry import open_registry

    sessions = open_registry(settings)
    with sessions() as s:
        preds = pd.DataFrame(s.execute(select(Prediction.entity_key, Prediction.event_time, Prediction.score,
                                              Prediction.features, Prediction.model_version)
                                       .where(Prediction.model_name == settings.model_name)).all(),
                             columns=["flight_id", "sched_dep", "score", "features", "model_version"])
        base = s.scalars(select(ModelVersion).where(ModelVersion.version == baseline_version)).one()
        alerts = pd.DataFrame(s.execute(select(Alert.received_at, Alert.outcome)).all(),
                              columns=["at", "outcome"])
        promos = pd.DataFrame(s.execute(select(Promotion.created_at, Promotion.action, Promotion.alias)).all(),
                              columns=["at", "action", "alias"])
    from flight_delay.features import landed_outcomes

    outcomes = landed_outcomes(settings)[["flight_id", "late"]]
    preds = preds.drop_duplicates("flight_id", keep="last").merge(outcomes, on="flight_id")
    booster = load_booster(settings, base.bento_model_tag, base.model_checksum)
    names = booster.feature_name()
    matrix = np.array([[f.get(n) if f.get(n) is not None else np.nan for n in names] for f in preds["features"]],
                      dtype="float64")
    preds["baseline"] = booster.predict(matrix, num_threads=settings.num_threads)
    preds["month"] = pd.to_datetime(preds["sched_dep"], utc=True).dt.strftime("%Y-%m")
    rows = []
    for month, grp in preds.groupby("month"):
        y = grp["late"].to_numpy(bool)
        rows.append({"month": month, "flights": len(grp), "late_rate": float(y.mean()),
                     "auc_served": roc_auc(y, grp["score"].to_numpy()),
                     "auc_never_retrained": roc_auc(y, grp["baseline"].to_numpy()),
                     "versions": ",".join(sorted(grp["model_version"].unique()))})
    return add_loop_counts(pd.DataFrame(rows), alerts, promos)


def add_loop_counts(table: pd.DataFrame, alerts: pd.DataFrame, promos: pd.DataFrame) -> pd.DataFrame:
    """Per month of `table`: alerts received, retrains run (admitted alerts), champion promotions.

    `alerts` has columns `at`, `outcome`; `promos` `at`, `action`, `alias` (times in simulated UTC)."""
    if table.empty:
        return table

    def per_month(frame: pd.DataFrame, at: str) -> pd.Series:
        return frame.assign(month=pd.to_datetime(frame[at], utc=True).dt.strftime("%Y-%m")).groupby("month").size()

    alerts_m = per_month(alerts, "at") if len(alerts) else pd.Series(dtype=int)
    runs_m = per_month(alerts[alerts["outcome"] == "run"], "at") if len(alerts) else pd.Series(dtype=int)
    champ = promos[(promos["alias"] == "champion") & (promos["action"] == "promote")]
    promo_m = per_month(champ, "at") if len(champ) else pd.Series(dtype=int)
    table["alerts"] = table["month"].map(alerts_m).fillna(0).astype(int)
    table["retrains"] = table["month"].map(runs_m).fillna(0).astype(int)
    table["promotions"] = table["month"].map(promo_m).fillna(0).astype(int)
    return table


@dataclass(frozen=True)
class ReportLabels:
    """What a demo report says: where it goes, the metric columns, titles (defaults: the flights demo)."""

    folder: str = "demo"
    metric: str = "auc"  # columns <metric>_served and <metric>_never_retrained
    ylabel: str = "ROC AUC"
    baseline: str = "never retrained (Jan–Feb model)"
    title: str = "Flight delay model: served vs never retrained (green: months with promotions)"
    heading: str = "retrain demo: 2013 replay"


def write_report(settings: Settings, table: pd.DataFrame, state: DemoState,
                 labels: ReportLabels | None = None) -> Path:
    """HTML page + PNG of the monthly metric (served vs never retrained), marking alerts and promotions."""
    from matplotlib.figure import Figure

    lab = labels or ReportLabels()
    served, never = f"{lab.metric}_served", f"{lab.metric}_never_retrained"
    out = settings.reports_dir / lab.folder
    out.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(9, 4.5))
    ax = fig.add_subplot()
    x = np.arange(len(table))
    ax.plot(x, table[served], marker="o", label="served (retrained by the loop)")
    ax.plot(x, table[never], marker="s", label=lab.baseline)
    for i, row in table.iterrows():
        if row["promotions"]:
            ax.axvline(float(str(i)), color="green", alpha=0.3, lw=6)
        if row["alerts"]:
            ax.annotate(f"{row['alerts']} alert(s)", (float(str(i)), row[served]), fontsize=7,
                        xytext=(0, 8), textcoords="offset points", ha="center", color="red")
    ax.set_xticks(x, table["month"], rotation=45, fontsize=8)
    ax.set_ylabel(lab.ylabel)
    ax.set_title(lab.title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = out / f"{lab.metric}_by_month.png"
    fig.savefig(png, dpi=110)
    html = out / "index.html"
    html.write_text(
        "<html><head><meta charset='utf-8'><title>retrain demo</title></head><body>"
        f"<h1>{lab.heading}</h1>"
        f"<p>Timings (s): {json.dumps(state.seconds)}</p>"
        f"<img src='{png.name}' alt='{lab.ylabel} by month'>"
        f"{table.to_html(index=False, float_format=lambda v: f'{v:.4f}')}</body></html>")
    return html
