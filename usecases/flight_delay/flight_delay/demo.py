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

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from retrain.core import clock
from retrain.core.config import Settings
from retrain.demo import common as demo
from retrain.demo.common import (
    DemoState,
    Say,
    add_loop_counts,
    monitor_and_retrain,
    quiet,
    run_deployment,
    start_prefect,
    timed,
    utc,
)

_console = Console(stderr=True)
REPORT = demo.ReportLabels(baseline="never retrained (Jan–Feb model)",
                           title="Flight delay model: served vs never retrained (green: months with promotions)",
                           heading="retrain demo: 2013 replay")


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


def setup(settings: Settings, plan: DemoPlan, state: DemoState, say: Say) -> None:
    """Servers, deployments, Jan–Feb data, features and the first champion (idempotent)."""
    from flight_delay.features import apply_repo, refresh_feature_tables
    from flight_delay.ingest import replay_until
    from retrain.features.store import materialize_until, open_store
    from retrain.models.registry import open_registry

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
    headers = {"x-api-key": key} if (key := settings.api_key_value) else {}
    for i in range(0, len(body), batch):
        resp = client.post("/predict", json={"flights": body[i:i + batch]}, headers=headers)
        resp.raise_for_status()
        for p in resp.json()["predictions"]:
            versions[p["model_version"]] = versions.get(p["model_version"], 0) + 1
    return versions


def replay(settings: Settings, plan: DemoPlan, state: DemoState, say: Say,
           progress: Callable[[int, int, str], None]) -> None:
    """Walk the simulated days from `state.day` to `plan.replay_to`."""
    from flight_delay.data import ReplayClock
    from flight_delay.features import refresh_feature_tables
    from flight_delay.ingest import replay_until
    from retrain.features.store import materialize_until, open_store
    from retrain.models.registry import open_registry

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


def monthly_table(settings: Settings, baseline_version: str) -> pd.DataFrame:
    """Per month: AUC of what was served vs the never-retrained first model, alerts, retrains, promotions."""
    from sqlalchemy import select

    from retrain.core.db import Alert, ModelVersion, Prediction, Promotion
    from retrain.core.metrics import roc_auc
    from retrain.models.registry import open_registry
    from retrain.models.store import load_booster

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



def run(settings: Settings, policy: dict[str, str], *, quick: bool, until: str | None, fresh: bool,
        exit_after: bool) -> None:
    """The 2013 flights demo (`make demo`: `retrain demo`, this use case's `pipeline.demo`)."""
    if fresh:
        demo.reset(settings)
    _console.print(f"demo retraining policy: {policy}")
    plan = DemoPlan.quick() if quick else DemoPlan()
    if until:
        plan = dataclasses.replace(plan, replay_to=until)
    state = demo.DemoState.load(settings)
    t0 = time.perf_counter()
    say = _console.print
    try:
        setup(settings, plan, state, say)
        demo.start_service(settings, say)
        with demo.replay_progress() as progress:
            replay(settings, plan, state, progress.say, progress)
        state.seconds["total_this_run"] = round(time.perf_counter() - t0, 1)
        state.save(settings)
        table = monthly_table(settings, state.first_version or "")
        out = Table(title="2013 replay: served model vs the never-retrained Jan–Feb model")
        for col in ("month", "flights", "late rate", "AUC served", "AUC never retrained", "alerts", "retrains",
                    "promotions", "versions"):
            out.add_column(col, no_wrap=True)
        for row in table.itertuples():
            out.add_row(str(row.month), f"{row.flights:,}", f"{row.late_rate:.1%}", f"{row.auc_served:.4f}",
                        f"{row.auc_never_retrained:.4f}", str(row.alerts), str(row.retrains),
                        str(row.promotions), str(row.versions))
        # a pipe reports 80 columns and rich truncates cells to fit: print the table at full width
        Console(stderr=True, width=max(_console.width, 140)).print(out)
        if len(table):
            served, never = table["auc_served"].mean(), table["auc_never_retrained"].mean()
            better = int((table["auc_served"] > table["auc_never_retrained"]).sum())
            _console.print(f"mean monthly AUC: served {served:.4f} vs never retrained {never:.4f} "
                          f"({served - never:+.4f}); served model better in {better} of {len(table)} months")
        report = demo.write_report(settings, table, state, REPORT)
        demo.finish(settings, report, state.seconds, exit_after)
    except KeyboardInterrupt:
        _console.print("interrupted; `retrain demo` resumes from the last finished day (--fresh starts clean)")
    finally:
        demo.stop_all(settings)


