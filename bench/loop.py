"""Benchmark: loop latency, from an alert event to the service answering with the new model version,
vs a bare pandas + LightGBM script doing the same training and evaluation (target: loop <= 2x bare).

    .venv/bin/python bench/loop.py [--train-days 350] [--home DIR] [--no-bento] [--repeats 2]
                                   [--out bench/out/bench_loop.md]

Setup (timed, reported, not part of the ratio): a RETRAIN_HOME with all of 2013 landed through the
ingest path as seen at 2014-01-01 (the simulated clock), feature tables, `feast apply`, the online
store materialized to 2014-01-01, a first champion trained in-process on January–February; a Prefect
server, the work pool, `prefect deploy --all` and a process worker on free ports; `bentoml serve`
(`services.bento_spec`) following the registry's champion.

Measured, in the same run:
- loop: POST one `retrain.alert.data_drift` event to `/api/events`, then poll `/predict` (one
  December flight, every 0.2 s) until the answer carries a model version other than the champion.
  In between: automation -> flow run -> worker process (imports Feast) -> catch-up -> point-in-time
  training set through Feast -> LightGBM -> registry -> challenger -> evaluation (point-in-time
  eval set, bootstrap gates, report) -> bento build (unless --no-bento) -> champion alias -> the
  service's follower swaps the booster.
- bare (a fresh `python` process, before and after the loop): read the landed flights, outcomes and
  the four feature tables from parquet, join them with pandas, add the request-time features, train
  LightGBM with the same parameters, time split and early stopping, score the evaluation window
  (AUC, log loss). Same windows as the loop: `retraining.plan_windows(now, settings)` with
  `--train-days` (350 = everything in 2013 before the evaluation window; the shipped policy is 56).
The bare model should match the loop's challenger exactly (same rows, same order, deterministic
LightGBM): the report checks row counts, the evaluation AUC and the feature cells of the eval window.
Size and latency gates are loosened (factor 1000) and per-slice regressions tolerated, so the
overall AUC gates (bootstrap CI, floor) decide: the benchmark needs a promotion to measure (a full-year
model regressed on carrier=MQ in late December in a trial and was rightly rejected). Cooldown is off.

Both sides run LightGBM with `num_threads` from settings (2) and, unless `--omp-active`, with
`OMP_WAIT_POLICY=PASSIVE` (inherited by the worker, its flow runs and the bare script): on this shared
2-core machine OpenMP's spinning threads made a 2-thread fit 3-5x slower than 1 thread whenever other
processes ran, which swamped the comparison either way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2014, 1, 1, tzinfo=UTC)
CHAMPION_WINDOW = (datetime(2013, 1, 1, tzinfo=UTC), datetime(2013, 3, 1, tzinfo=UTC))
POLL_S = 0.2


# ------------------------------------------------------------------------------ the bare script
# Runs in its own process (`bench/loop.py --bare SPEC.json`): pandas, numpy, LightGBM, scikit-learn only.


def _parts(directory: Path, columns: list[str]) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p, columns=columns) for p in sorted(directory.glob("part-*.parquet"))],
                     ignore_index=True)


def bare_frame(start: pd.Timestamp, end: pd.Timestamp, tables: dict[str, pd.DataFrame],
               flights: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """Labelled flights departing in [start, end) with their features, sorted by (sched_dep, flight_id)."""
    f = flights[(flights["sched_dep"] >= start) & (flights["sched_dep"] < end)].copy()
    f["hour_ts"] = f["sched_dep"].dt.floor("h")
    f["day_ts"] = f["sched_dep"].dt.floor("D")
    f["route"] = f["origin"] + "-" + f["dest"]
    f["tailnum"] = f["tailnum"].fillna("")
    w = tables["weather"].rename(columns={"event_timestamp": "hour_ts"})
    c = tables["carrier_stats"].rename(columns={"event_timestamp": "day_ts"})
    r = tables["route_stats"].rename(columns={"event_timestamp": "day_ts"})
    f = (f.merge(w, on=["origin", "hour_ts"], how="left")
          .merge(tables["planes"], on="tailnum", how="left")
          .merge(c, on=["carrier", "day_ts"], how="left")
          .merge(r, on=["route", "day_ts"], how="left"))
    local = f["sched_dep"].dt.tz_convert("America/New_York")
    f["dep_hour"] = local.dt.hour
    f["dep_weekday"] = local.dt.weekday
    f["dep_month"] = local.dt.month
    f["dep_minute_of_day"] = local.dt.hour * 60 + local.dt.minute
    f["flight_distance"] = f["distance"]
    f = f.sort_values(["sched_dep", "flight_id"], kind="mergesort").reset_index(drop=True)
    for col in features:
        f[col] = pd.to_numeric(f[col], errors="coerce").astype("float64")
    return f[["flight_id", "sched_dep", "carrier", "origin", "dest", *features, "late"]]


def bare(spec: dict[str, Any]) -> dict[str, Any]:
    """Train on the training window, evaluate on the evaluation window; returns timings and metrics."""
    t0 = time.perf_counter()
    import lightgbm as lgb
    from sklearn.metrics import log_loss, roc_auc_score

    home, features = Path(spec["home"]), list(spec["features"])
    t_import = time.perf_counter()
    cols = ["flight_id", "sched_dep", "carrier", "origin", "dest", "tailnum", "distance"]
    flights = _parts(home / "offline" / "flights", cols)
    outcomes = _parts(home / "offline" / "outcomes", ["flight_id", "late"]).drop_duplicates("flight_id", keep="last")
    flights = flights.merge(outcomes, on="flight_id", how="inner")
    for col in ("carrier", "origin", "dest", "tailnum", "flight_id"):
        flights[col] = flights[col].astype(object)
    flights["sched_dep"] = flights["sched_dep"].astype("datetime64[ns, UTC]")
    feat_dir = home / "offline" / "features"
    tables = {
        "weather": pd.read_parquet(feat_dir / "weather.parquet").drop(columns=["origin_hour", "created"]),
        "planes": pd.read_parquet(feat_dir / "planes.parquet").drop(columns=["event_timestamp", "created"]),
        "carrier_stats": pd.read_parquet(feat_dir / "carrier_stats.parquet").drop(columns=["carrier_day", "created"]),
        "route_stats": pd.read_parquet(feat_dir / "route_stats.parquet").drop(columns=["route_day", "created"]),
    }
    keys_of = {"weather": ["origin", "event_timestamp"], "planes": ["tailnum"],
               "carrier_stats": ["carrier", "event_timestamp"], "route_stats": ["route", "event_timestamp"]}
    for name, keys in keys_of.items():
        table = tables[name].drop_duplicates(keys, keep="last")
        for key in keys:
            table[key] = (table[key].astype("datetime64[ns, UTC]") if key == "event_timestamp"
                          else table[key].astype(object))
        tables[name] = table
    t_read = time.perf_counter()
    ts = {k: pd.Timestamp(v) for k, v in spec["windows"].items()}
    train = bare_frame(ts["train_from"], ts["train_to"], tables, flights, features)
    evalf = bare_frame(ts["eval_from"], ts["eval_to"], tables, flights, features)
    t_join = time.perf_counter()

    # the same time split as retrain.models.train.time_split: the last fraction by time, cut on a timestamp
    times = train["sched_dep"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    cut = min(int(np.floor(len(train) * (1.0 - spec["validation_fraction"]))), len(train) - 1)
    cut = int(np.searchsorted(times, times[cut], side="left"))
    fit_part, valid_part = train.iloc[:cut], train.iloc[cut:]
    params = {**spec["params"], "seed": spec["seed"], "deterministic": True, "force_row_wise": True,
              "num_threads": spec["num_threads"], "verbose": -1}
    dtrain = lgb.Dataset(fit_part[features], fit_part["late"].to_numpy(dtype="float64"), feature_name=features)
    dvalid = lgb.Dataset(valid_part[features], valid_part["late"].to_numpy(dtype="float64"), reference=dtrain)
    booster = lgb.train(params, dtrain, num_boost_round=spec["num_boost_round"], valid_sets=[dvalid],
                        valid_names=["valid"], callbacks=[lgb.early_stopping(spec["early_stopping_rounds"],
                                                                             verbose=False)])
    t_fit = time.perf_counter()
    best = int(booster.best_iteration) if booster.best_iteration > 0 else booster.current_iteration()
    scores = booster.predict(evalf[features], num_iteration=best)
    y = evalf["late"].to_numpy(dtype=bool)
    auc, ll = float(roc_auc_score(y, scores)), float(log_loss(y, np.clip(scores, 1e-15, 1 - 1e-15)))
    t_eval = time.perf_counter()
    if spec.get("dump"):
        evalf.to_parquet(spec["dump"])
    return {"seconds": {"imports": t_import - t0, "read": t_read - t_import, "join": t_join - t_read,
                        "fit": t_fit - t_join, "evaluate": t_eval - t_fit, "total_in_process": t_eval - t0},
            "n_train": len(fit_part), "n_valid": len(valid_part), "n_eval": len(evalf), "best_iteration": best,
            "auc": auc, "log_loss": ll}


def run_bare(spec: dict[str, Any], workdir: Path) -> tuple[float, dict[str, Any]]:
    """The bare script in a fresh interpreter; returns (wall seconds from spawn to exit, its report)."""
    path = workdir / "bare_spec.json"
    path.write_text(json.dumps(spec))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--bare", str(path)], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"bare script failed:\n{proc.stderr[-3000:]}")
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ the loop's setup


def bench_env(train_days: float, build_bento: bool) -> dict[str, str]:
    return {
        "RETRAIN_RETRAIN_TRAIN_DAYS": str(train_days),
        "RETRAIN_RETRAIN_EVAL_DAYS": "14",
        "RETRAIN_RETRAIN_LABEL_LAG_HOURS": "12",
        "RETRAIN_RETRAIN_COOLDOWN_HOURS": "0",
        "RETRAIN_RETRAIN_BUILD_BENTO": "true" if build_bento else "false",
        "RETRAIN_GATE_SIZE_FACTOR": "1000",
        "RETRAIN_GATE_LATENCY_FACTOR": "1000",
        "RETRAIN_GATE_SLICE_TOLERANCE": "1.0",
        "RETRAIN_SIMULATED_CLOCK": "1",  # the home's clock stands at NOW (2014-01-01) for every process
    }


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_home(settings: Any, say: Any) -> dict[str, Any]:
    """All of 2013 as seen at 2014-01-01, features, online store, a Jan–Feb champion (idempotent)."""
    from flight_delay import features as F
    from flight_delay.ingest import replay_until
    from flight_delay.pipeline import frame_provider
    from retrain.core import clock
    from retrain.features import store as FS
    from retrain.models import registry
    from retrain.models.train import train_version

    marker = settings.home / "bench_loop_home.json"
    sessions = registry.open_registry(settings)
    if marker.exists():
        info: dict[str, Any] = json.loads(marker.read_text())
        current = registry.get_alias(sessions, registry.CHAMPION, settings.model_name)
        if current is None or current.version != info["champion"]:  # an earlier bench promoted: back to the start
            registry.promote(sessions, info["champion"], reason="bench/loop.py: reset to the first champion",
                             actor="bench")
        return {**info, "reused": True}
    settings.export_env()
    clock.set_now(settings, NOW)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    say("landing all of 2013 through the ingest path")
    counts = replay_until(settings, sessions, NOW).counts()
    seconds["ingest"] = time.perf_counter() - t
    t = time.perf_counter()
    rows = F.refresh_feature_tables(settings, NOW)
    seconds["feature_tables"] = time.perf_counter() - t
    t = time.perf_counter()
    F.apply_repo(settings)
    seconds["feast_apply"] = time.perf_counter() - t
    t = time.perf_counter()
    say("materializing the online store to 2014-01-01")
    FS.materialize_until(FS.open_store(settings), settings, NOW)
    seconds["materialize"] = time.perf_counter() - t
    t = time.perf_counter()
    say("training the first champion on January-February")
    first = train_version(settings, sessions, frame_provider(settings, shared=False), *CHAMPION_WINDOW,
                          label="late", time_col="sched_dep")
    registry.promote(sessions, first.version, reason="bench/loop.py: first champion", actor="bench")
    seconds["champion"] = time.perf_counter() - t
    info = {"champion": first.version, "champion_tag": first.bento_model_tag, "landed": counts,
            "table_rows": rows, "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    marker.write_text(json.dumps(info, default=str))
    return {**info, "reused": False}


def start_prefect(settings: Any, env: dict[str, str]) -> None:
    from retrain.core import services

    services.start(settings, services.prefect_server_spec(settings), timeout=180)
    services.ensure_pool_and_deploy(settings)
    services.start(settings, dataclasses.replace(services.prefect_worker_spec(settings), env=dict(env)))


def probe_flight(settings: Any) -> dict[str, Any]:
    """One real December flight as a `/predict` item."""
    from flight_delay.features import landed_flights

    flights = landed_flights(settings, ["carrier", "flight", "tailnum", "origin", "dest", "sched_dep", "distance"])
    sched = pd.to_datetime(flights["sched_dep"], utc=True)
    row = flights[(sched >= pd.Timestamp("2013-12-30 15:00", tz="UTC"))].iloc[0]
    tail = row["tailnum"]
    return {"carrier": str(row["carrier"]), "flight": int(row["flight"]),
            "tailnum": None if pd.isna(tail) else str(tail), "origin": str(row["origin"]), "dest": str(row["dest"]),
            "sched_dep": pd.Timestamp(row["sched_dep"]).isoformat(), "distance": float(row["distance"])}


# ------------------------------------------------------------------------------ one loop pass


def served_version(client: Any, flight: dict[str, Any]) -> str:
    resp = client.post("/predict", json={"flights": [flight]})
    resp.raise_for_status()
    return str(resp.json()["predictions"][0]["model_version"])


def loop_once(settings: Any, prefect: Any, http: Any, flight: dict[str, Any], champion: str,
              timeout: float = 1800.0) -> dict[str, Any]:
    """Emit one alert, wait until the service answers with another version; phases from the Prefect API."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter, FlowRunFilterId

    from retrain.core import events, services

    assert served_version(http, flight) == champion, "the service must answer with the champion first"
    api = services.prefect_api_url(settings)
    body = events.build_event("retrain.alert.data_drift", events.model_resource(settings.model_name), {
        "metric": "psi:dep_hour", "value": 0.4, "threshold": 0.25, "reason": "bench/loop.py",
        "dedupe_key": f"bench-{time.time_ns()}", "source": "bench"})
    posted_at = datetime.now(UTC)
    t0 = time.perf_counter()
    events.post_events_http(api, [body])
    def finished_run() -> Any:
        runs = [r for r in prefect.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["retrain"])), limit=50)
            if (r.parameters or {}).get("event_id") == body["id"]]
        return runs[0] if runs and runs[0].state is not None and runs[0].state.is_final() else None

    served: str | None = None
    polls = 0
    run, ended_at = None, 0.0
    while time.perf_counter() - t0 < timeout:
        polls += 1
        version = served_version(http, flight)
        if version != champion:
            served = version
            break
        if polls % 10 == 0 and run is None and (run := finished_run()) is not None:
            ended_at = time.perf_counter()
        if run is not None and time.perf_counter() - ended_at > 30.0:  # the follower polls every 2 s
            raise RuntimeError(f"retrain run {run.name} ended {run.state.type.value} and the service still "
                               f"answers {champion} 30 s later (rejected? see the evaluations table)")
        time.sleep(POLL_S)
    latency = time.perf_counter() - t0
    if served is None:
        raise TimeoutError(f"the service still answers {champion} after {timeout:.0f} s")
    while run is None and time.perf_counter() - t0 < timeout:
        run = finished_run()
        time.sleep(0.5)
    assert run is not None and run.state.is_completed(), f"retrain run did not complete: {run}"
    tasks = prefect.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))

    def rel(when: datetime | None) -> float | None:
        return None if when is None else round((when - posted_at).total_seconds(), 2)

    phases = {"flow_run_created": rel(run.created), "flow_running": rel(run.start_time),
              "flow_end": rel(run.end_time), "served_new_version": round(latency, 2)}
    task_spans = {t.name.rsplit("-", 1)[0]: (rel(t.start_time), rel(t.end_time)) for t in tasks}
    return {"latency_s": latency, "served": served, "polls": polls, "phases": phases, "tasks": task_spans,
            "flow_run": run.name}


# ------------------------------------------------------------------------------ report


def reset_champion(settings: Any, http: Any, flight: dict[str, Any], first: str, timeout: float = 120.0) -> None:
    """Make the first champion the champion again and wait until the service answers with it."""
    from retrain.models import registry

    registry.promote(registry.open_registry(settings), first, reason="bench/loop.py: next pass", actor="bench")
    deadline = time.monotonic() + timeout
    while served_version(http, flight) != first:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the service did not return to {first} within {timeout:.0f} s")
        time.sleep(POLL_S)


def loop_facts(settings: Any, served: str) -> dict[str, Any]:
    from sqlalchemy import select

    from retrain.core.db import Evaluation, ModelVersion
    from retrain.models import registry

    sessions = registry.open_registry(settings)
    with sessions() as s:
        mv = s.scalars(select(ModelVersion).where(ModelVersion.version == served)).one()
        ev = s.scalars(select(Evaluation).where(Evaluation.challenger_id == mv.id)).one()
        return {"version": mv.version, "tag": mv.bento_model_tag, "bento_tag": mv.bento_tag, "n_train": mv.n_train,
                "n_valid": mv.n_valid, "train_from": mv.train_from.isoformat(), "train_to": mv.train_to.isoformat(),
                "best_iteration": mv.metrics.get("best_iteration"), "phase_seconds": mv.metrics.get("phase_seconds"),
                "eval_rows": ev.n_rows, "eval_from": ev.window_from.isoformat(), "eval_to": ev.window_to.isoformat(),
                "decision": ev.decision, "auc": ev.metrics["challenger"]["auc"],
                "champion_auc": ev.metrics["champion"]["auc"], "log_loss": ev.metrics["challenger"]["log_loss"]}


def eval_cells_match(settings: Any, dump: Path, start: datetime, end: datetime) -> dict[str, Any]:
    """The bare eval frame vs Feast's point-in-time frame for the same window (untimed check)."""
    from flight_delay import features as F
    from retrain.features import store as FS

    feast = F.training_set(FS.open_store(settings), settings, start, end).frame
    mine = pd.read_parquet(dump)
    same_rows = feast["flight_id"].astype(str).tolist() == mine["flight_id"].astype(str).tolist()
    bad = {}
    if same_rows:
        for col in F.MODEL_FEATURES:
            x, y = feast[col].to_numpy("float64"), mine[col].to_numpy("float64")
            n = int((~np.isclose(x, y, rtol=1e-9, atol=1e-12, equal_nan=True)).sum())
            if n:
                bad[col] = n
    return {"rows_feast": len(feast), "rows_bare": len(mine), "same_rows_same_order": same_rows,
            "mismatching_cells": bad}


def report(r: dict[str, Any], command: str) -> str:
    lp, bares, facts = r["loop"], r["bare"], r["facts"]
    bare_walls = [b["wall_s"] for b in bares]
    loop_lat = [x["latency_s"] for x in r["loops"]]
    ratio = statistics.median(loop_lat) / statistics.median(bare_walls)
    b0 = bares[0]["report"]
    tasks = "; ".join(f"{k} {a}-{b} s" for k, (a, b) in sorted(lp["tasks"].items(), key=lambda kv: kv[1][0] or 0))
    setup = r["setup"]
    lines = [
        "# Loop latency: alert event -> service answers with the new model (bench/loop.py)",
        "",
        f"Command: `{command}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; 1-min load average before/after each loop pass {r['load']} "
        "(shared machine: other sessions' tests and demos ran meanwhile)",
        "",
        f"- Data: all of 2013 landed through the ingest path as seen at {NOW.date()} ({setup['landed']}); "
        f"simulated clock {NOW.isoformat()}",
        f"- Windows (`plan_windows`, retrain_train_days={r['train_days']}, eval 14 d, label lag 12 h): train "
        f"[{facts['train_from'][:10]}, {facts['train_to'][:10]}), evaluate [{facts['eval_from'][:10]}, "
        f"{facts['eval_to'][:10]}); champion trained on [2013-01-01, 2013-03-01)",
        f"- **Loop: {', '.join(f'{x:.1f}' for x in loop_lat)} s** (median {statistics.median(loop_lat):.1f}) from "
        f"`POST /api/events` to `/predict` answering the new version (last pass {lp['served']}, was "
        f"{r['champion']}); bento build on promotion: {r['build_bento']}; LightGBM "
        f"num_threads 2, OMP_WAIT_POLICY {r['omp_wait_policy']} on both sides",
        f"- **Bare script: {', '.join(f'{w:.1f}' for w in bare_walls)} s** (median "
        f"{statistics.median(bare_walls):.1f}; a fresh process before, between and after the loop passes; "
        f"in-process phases of the first: "
        + ", ".join(f"{k} {v:.1f}" for k, v in b0["seconds"].items()) + ")",
        f"- **Ratio loop / bare (medians): {ratio:.2f}x** (target <= 2x): "
        + ("met" if ratio <= 2.0 else "NOT met"),
        f"- Same work: loop challenger n_train/n_valid/eval rows {facts['n_train']}/{facts['n_valid']}/"
        f"{facts['eval_rows']}, bare {b0['n_train']}/{b0['n_valid']}/{b0['n_eval']}; eval AUC loop "
        f"{facts['auc']:.6f} vs bare {b0['auc']:.6f}; best iteration loop {facts['best_iteration']} vs bare "
        f"{b0['best_iteration']}; eval-window feature cells bare vs Feast: {r['cells']}",
        f"- Decision: {facts['decision']} (challenger AUC {facts['auc']:.4f} vs champion "
        f"{facts['champion_auc']:.4f})",
        "",
        "## Where the loop's time goes (last pass, seconds after the POST)",
        "",
        f"- flow run created by the automation: {lp['phases']['flow_run_created']}; flow Running (worker "
        f"picked it up, new process, imports, pull step): {lp['phases']['flow_running']}; flow run ended: "
        f"{lp['phases']['flow_end']}; service answered the new version: {lp['phases']['served_new_version']} "
        f"({lp['polls']} polls every {POLL_S} s)",
        f"- task spans: {tasks}",
        f"- inside train (registry metrics, s): {facts['phase_seconds']}",
    ]
    if r.get("bento_build_s") is not None:
        lines.append(f"- `bentoml build` for the new model measured separately after the loop: "
                     f"{r['bento_build_s']:.1f} s (part of the evaluate task above)")
    lines += [
        "",
        "## Setup (not in the ratio)",
        "",
        f"- home: {'reused' if setup['reused'] else 'built'} {setup.get('seconds')}; table rows "
        f"{setup.get('table_rows')}",
        f"- Prefect server + pool + deploy --all + worker, and bentoml serve: {r['stack_s']:.1f} s",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bare", help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help="RETRAIN_HOME to build or reuse (default: a temporary one)")
    parser.add_argument("--train-days", type=float, default=350.0,
                        help="retrain_train_days: 350 = all of 2013 before the eval window; the policy ships 56")
    parser.add_argument("--no-bento", action="store_true", help="promote without `bentoml build`")
    parser.add_argument("--repeats", type=int, default=2, help="loop passes; the bare script runs before, "
                        "between and after them")
    parser.add_argument("--omp-active", action="store_true", help="leave OMP_WAIT_POLICY alone (spinning threads)")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    args = parser.parse_args(argv)
    if args.bare:
        print(json.dumps(bare(json.loads(Path(args.bare).read_text()))))
        return 0

    def say(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    tmp = None if args.home else Path(tempfile.mkdtemp(prefix="bench_loop_"))
    home = (args.home or tmp).resolve()  # type: ignore[union-attr]
    env = bench_env(args.train_days, not args.no_bento)
    if not args.omp_active:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ.update(env)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below: stop what we started
    os.environ.update({"RETRAIN_HOME": str(home), "RETRAIN_PREFECT_PORT": str(free_port()),
                       "RETRAIN_SERVE_PORT": str(free_port())})

    import httpx

    from retrain.alerts.retraining import plan_windows
    from retrain.core import services
    from retrain.core.config import get_settings
    from retrain.models.train import default_params

    settings = get_settings()
    settings.ensure_dirs()
    result: dict[str, Any] = {"train_days": args.train_days, "build_bento": not args.no_bento,
                              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default (active)")}
    started: list[str] = []
    try:
        t = time.perf_counter()
        stack_error: list[BaseException] = []

        def stack() -> None:
            try:
                start_prefect(settings, env)
            except BaseException as exc:  # reported by the main thread
                stack_error.append(exc)

        say(f"RETRAIN_HOME={home}; starting Prefect (port {settings.prefect_port}) while the home is built")
        thread = threading.Thread(target=stack)
        thread.start()
        started += ["prefect-worker", "prefect-server"]
        result["setup"] = build_home(settings, say)
        thread.join()
        if stack_error:
            raise stack_error[0]
        say(f"starting bentoml serve on port {settings.serve_port}")
        services.start(settings, services.bento_spec(settings), timeout=300)
        started.insert(0, "bentoml")
        result["stack_s"] = time.perf_counter() - t
        result["champion"] = result["setup"]["champion"]

        windows = plan_windows(NOW, settings)
        spec: dict[str, Any] = {"home": str(home), "features": _model_features(), "windows": windows.as_json(),
                "params": default_params(settings), "seed": settings.seed, "num_threads": settings.num_threads,
                "validation_fraction": settings.validation_fraction, "num_boost_round": settings.num_boost_round,
                "early_stopping_rounds": settings.early_stopping_rounds, "dump": str(home / "bare_eval.parquet")}
        from prefect.client.orchestration import SyncPrefectClient

        flight = probe_flight(settings)
        base = f"http://{settings.serve_host}:{settings.serve_port}"
        result["bare"], result["loops"], result["load"] = [], [], []
        with SyncPrefectClient(services.prefect_api_url(settings)) as prefect, \
                httpx.Client(base_url=base, timeout=60) as http:
            for i in range(args.repeats):
                if i:
                    reset_champion(settings, http, flight, result["champion"])
                say(f"bare script ({i + 1}/{args.repeats + 1})")
                wall, rep = run_bare({**spec, "dump": spec["dump"] if i == 0 else None}, home)
                result["bare"].append({"wall_s": wall, "report": rep})
                say(f"  {wall:.1f} s, eval AUC {rep['auc']:.4f}, phases {rep['seconds']}")
                load = [round(x, 1) for x in os.getloadavg()]
                say(f"loop {i + 1}/{args.repeats}: POST the alert event, poll /predict for the new version")
                one = loop_once(settings, prefect, http, flight, result["champion"])
                result["loops"].append(one)
                result["load"].append((load[0], round(os.getloadavg()[0], 1)))
                say(f"  {one['latency_s']:.1f} s to serve {one['served']}")
        say(f"bare script ({args.repeats + 1}/{args.repeats + 1})")
        wall, rep = run_bare({**spec, "dump": None}, home)
        result["bare"].append({"wall_s": wall, "report": rep})
        say(f"  {wall:.1f} s, phases {rep['seconds']}")
        result["loop"] = result["loops"][-1]
        result["facts"] = loop_facts(settings, result["loop"]["served"])
        result["cells"] = eval_cells_match(settings, home / "bare_eval.parquet", windows.eval_from, windows.eval_to)
        result["bento_build_s"] = None
        if not args.no_bento:
            from retrain.models.promotion import build_bento, delete_bento

            t = time.perf_counter()
            tag = build_bento(settings, result["facts"]["tag"])
            result["bento_build_s"] = time.perf_counter() - t
            delete_bento(settings, tag)
        command = ".venv/bin/python bench/loop.py " + " ".join(argv or sys.argv[1:])
        text = report(result, command.strip())
        print(text)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
        return 0
    finally:
        for name in started:
            services.stop(settings, name)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _model_features() -> list[str]:
    from flight_delay.features import MODEL_FEATURES

    return list(MODEL_FEATURES)


if __name__ == "__main__":
    raise SystemExit(main())
