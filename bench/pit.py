"""Benchmark: point-in-time training set for all 2013 flights through Feast vs a DuckDB ASOF floor.

Lands the whole year (as seen at 2014-01-02, so every flight that landed has its outcome) in a
temporary RETRAIN_HOME, refreshes the feature tables and applies the Feast repo. Then, in the same
run, times
- Feast: `features.training_set()` over [2013-01-01, 2014-01-01) through `flight_delay_v1`;
- the floor: the same labelled flights and entity rows, one DuckDB query with four ASOF LEFT JOINs
  over the same parquet feature tables (weather by origin, planes by tailnum, carrier stats by
  carrier, route stats by route, each view's TTL from the registry), plus the request-time
  features in pandas;
checks that both produce the same values (mismatching cells) and reports both times, their ratio
(target <= 3x) and each phase's peak RSS. With `--profile` it also breaks Feast's time down.

    .venv/bin/python bench/pit.py [--repeat 3] [--home DIR] [--profile] [--out bench/out/bench_pit.md]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import pandas as pd
from tests.support.flights import flight_settings

from flight_delay import features as F
from flight_delay.data import ReplayClock, enrich_flights, load_flights, outcomes_of
from flight_delay.landed import register_parts
from retrain.core.config import Settings
from retrain.features import store as FS

if TYPE_CHECKING:
    from feast import FeatureStore

T = TypeVar("T")
START, END = pd.Timestamp("2013-01-01", tz="UTC"), pd.Timestamp("2014-01-01", tz="UTC")
SEEN_AT = pd.Timestamp("2014-01-02", tz="UTC")
# feature table -> (feature view, join key, features)
VIEWS: dict[str, tuple[str, str, list[str]]] = {
    "weather": ("weather_hourly", "origin", F.WEATHER_FEATURES),
    "planes": ("plane_attributes", "tailnum", F.PLANE_FEATURES),
    "carrier_stats": ("carrier_stats", "carrier", F.CARRIER_FEATURES),
    "route_stats": ("route_stats", "route", F.ROUTE_FEATURES),
}


# ------------------------------------------------------------------ measuring


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False when not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measured(fn: Callable[[], T]) -> tuple[T, float, float]:
    """(result, seconds, peak RSS MB during the call; the process's RSS before it is included)."""
    reset_peak_rss()
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, peak_rss_mb()


# ------------------------------------------------------------------ setup


def prepare_home(settings: Settings) -> dict[str, Any]:
    """Land every 2013 flight and its outcome, refresh the feature tables, `feast apply`."""
    settings.ensure_dirs()
    t0 = time.perf_counter()
    flights = enrich_flights(ReplayClock(load_flights()).flights_between(None, SEEN_AT))
    register_parts(settings, flights=flights, outcomes=outcomes_of(flights, settings.delay_threshold_minutes),
                   source="benchmark home")
    t_land = time.perf_counter() - t0
    rows, t_refresh, _ = measured(lambda: F.refresh_feature_tables(settings))
    _, t_apply, _ = measured(lambda: F.apply_repo(settings))
    return {"flights_landed": len(flights), "table_rows": rows, "land_s": round(t_land, 2),
            "refresh_s": round(t_refresh, 2), "apply_s": round(t_apply, 2)}


# ------------------------------------------------------------------ the floor


def ttl_of(store: FeatureStore, view: str) -> timedelta | None:
    ttl = store.get_feature_view(view).ttl
    return ttl if ttl and ttl > timedelta(0) else None


def floor_sql(settings: Settings, ttls: dict[str, timedelta | None]) -> str:
    """One query: entities ASOF LEFT JOIN each table on key and event_timestamp >= row time; a row
    older than the view's TTL yields nulls (the latest row is too old, so every row is)."""
    selects, joins = ["e.flight_id"], []
    for i, (table, (_view, key, feats)) in enumerate(VIEWS.items()):
        alias = f"t{i}"
        path = (F.features_dir(settings) / f"{table}.parquet").as_posix()
        cols = ", ".join([key, "event_timestamp AS ts", *feats])
        joins.append(f"ASOF LEFT JOIN (SELECT {cols} FROM read_parquet('{path}')) {alias} "
                     f"ON e.{key} = {alias}.{key} AND e.event_timestamp >= {alias}.ts")
        ttl = ttls[table]
        for feat in feats:
            if ttl is None:
                selects.append(f"{alias}.{feat}")
            else:
                secs = int(ttl.total_seconds())
                selects.append(f"CASE WHEN {alias}.ts >= e.event_timestamp - INTERVAL {secs} SECOND "
                               f"THEN {alias}.{feat} END AS {feat}")
    return f"SELECT {', '.join(selects)} FROM entities e {' '.join(joins)}"


def floor_training_set(settings: Settings, ttls: dict[str, timedelta | None], start: pd.Timestamp,
                       end: pd.Timestamp) -> pd.DataFrame:
    """The same frame as `training_set().frame`, computed with DuckDB ASOF joins + pandas."""
    flights, _excluded = F.labelled_flights(settings, start, end)
    return floor_join(settings, ttls, flights, F.entity_frame(flights))


def floor_join(settings: Settings, ttls: dict[str, timedelta | None], flights: pd.DataFrame,
               entities: pd.DataFrame) -> pd.DataFrame:
    """The point-in-time part of the floor: given the labelled flights and their entity rows."""
    import duckdb

    con = duckdb.connect()
    try:
        con.execute(f"SET threads TO {settings.num_threads}")
        con.register("entities", entities)
        feats = con.execute(floor_sql(settings, ttls)).df()
    finally:
        con.close()
    feats = feats.set_index("flight_id").reindex(entities["flight_id"])
    local = pd.DatetimeIndex(entities["event_timestamp"]).tz_convert("America/New_York")
    frame = flights[["flight_id", "sched_dep", "carrier", "origin", "dest"]].copy()
    frame["sched_dep"] = pd.to_datetime(frame["sched_dep"], utc=True)
    request = {
        "dep_hour": local.hour, "dep_weekday": local.weekday, "dep_month": local.month,
        "dep_minute_of_day": local.hour * 60 + local.minute, "flight_distance": entities["distance"],
    }
    for col in F.MODEL_FEATURES:
        values = request[col] if col in request else feats[col]
        frame[col] = np.asarray(values, dtype="float64")
    frame["late"] = flights["late"].to_numpy()
    return frame


# ------------------------------------------------------------------ compare, profile


def mismatching_cells(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, int]:
    out = {}
    for col in F.MODEL_FEATURES:
        x, y = a[col].to_numpy(dtype="float64"), b[col].to_numpy(dtype="float64")
        out[col] = int((~np.isclose(x, y, rtol=1e-12, atol=1e-12, equal_nan=True)).sum())
    return out


def profile_feast(store: FeatureStore, settings: Settings) -> dict[str, Any]:
    """Where Feast's time goes: entity prep, job construction, query execution, ODFV, post-processing."""
    flights, _ = F.labelled_flights(settings, START, END)
    entities = F.entity_frame(flights)
    fs = F.service(store, settings.feature_service)
    t0 = time.perf_counter()
    job = store.get_historical_features(entity_df=entities, features=fs)
    t_job = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = cast(Any, job).table.to_pyarrow()  # the ibis/DuckDB point-in-time join alone (IbisRetrievalJob)
    t_query = time.perf_counter() - t0
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    job = store.get_historical_features(entity_df=entities, features=fs)
    job.to_df()
    profiler.disable()
    t_to_df = time.perf_counter() - t0
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).sort_stats("cumulative").print_stats(25)
    # one view at a time through Feast (a single feature each), and the ODFV alone
    per_view = {}
    for ref in ("weather_hourly:temp", "plane_attributes:plane_year", "carrier_stats:carrier_late_rate_7d",
                "route_stats:route_late_rate_28d", "request_time_features:dep_hour"):
        t0 = time.perf_counter()
        store.get_historical_features(entity_df=entities, features=[ref]).to_df()
        per_view[ref.split(":")[0]] = round(time.perf_counter() - t0, 2)
    return {"get_historical_features_s": round(t_job, 2), "ibis_query_to_arrow_s": round(t_query, 2),
            "query_rows": table.num_rows, "job_plus_to_df_s": round(t_to_df, 2), "per_view_s": per_view,
            "weather_join_shapes": weather_join_shapes(settings, entities), "cprofile_top": buf.getvalue()}


def weather_join_shapes(settings: Settings, entities: pd.DataFrame) -> dict[str, float]:
    """DuckDB on the weather table: the join shape Feast's ibis PIT join generates (equality on
    origin + range predicates, executed as a hash join on 3 origins with a residual filter) vs ASOF."""
    import duckdb

    path = (F.features_dir(settings) / "weather.parquet").as_posix()
    con = duckdb.connect()
    try:
        con.execute(f"SET threads TO {settings.num_threads}")
        con.register("e", entities[["origin", "event_timestamp"]])
        queries = {
            "range_hash_join_s": f"SELECT count(*) FROM e JOIN read_parquet('{path}') w ON w.origin = e.origin "
                                 "AND w.event_timestamp <= e.event_timestamp "
                                 "AND w.event_timestamp + INTERVAL 3 HOUR >= e.event_timestamp",
            "asof_join_s": f"SELECT count(w.temp) FROM e ASOF LEFT JOIN read_parquet('{path}') w "
                           "ON w.origin = e.origin AND e.event_timestamp >= w.event_timestamp",
        }
        out = {}
        for name, sql in queries.items():
            t0 = time.perf_counter()
            con.execute(sql).fetchall()
            out[name] = round(time.perf_counter() - t0, 2)
        return out
    finally:
        con.close()


# ------------------------------------------------------------------ run


def run(home: Path, repeat: int, profile: bool) -> dict[str, Any]:
    settings = flight_settings(home=home)
    settings.export_env()
    setup = prepare_home(settings) if not (F.features_dir(settings) / "weather.parquet").exists() else {}
    if not setup:
        F.apply_repo(settings)
    store = FS.open_store(settings)
    ttls = {table: ttl_of(store, view) for table, (view, _, _) in VIEWS.items()}
    # warm both paths on one day (imports, registry load, DuckDB extension load)
    day = (START, START + pd.Timedelta(days=1))
    F.training_set(store, settings, *day)
    floor_training_set(settings, ttls, *day)

    runs: dict[str, list[float]] = {k: [] for k in (
        "feast_s", "floor_s", "prep_s", "feast_join_s", "floor_join_s", "feast_rss", "floor_rss")}
    feast_frame = floor_frame = pd.DataFrame()
    n_flights = n_excluded = 0
    baseline_rss = rss_mb()
    fs_name = settings.feature_service
    for _ in range(repeat):
        # end to end: landed parquet -> training frame
        floor_frame, t, rss = measured(lambda: floor_training_set(settings, ttls, START, END))
        runs["floor_s"].append(t)
        runs["floor_rss"].append(rss)
        ts, t, rss = measured(lambda: F.training_set(store, settings, START, END))
        runs["feast_s"].append(t)
        runs["feast_rss"].append(rss)
        feast_frame, n_flights, n_excluded = ts.frame, ts.n_flights, ts.n_excluded
        del ts
        # the point-in-time join alone, on the same prepared entity rows (shared prep timed apart)
        t0 = time.perf_counter()
        flights = F.labelled_flights(settings, START, END)[0]
        entities = F.entity_frame(flights)
        runs["prep_s"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        floor_join(settings, ttls, flights, entities)
        runs["floor_join_s"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        F.historical_features(store, entities, fs_name)
        runs["feast_join_s"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in runs.items()}
    same_rows = feast_frame["flight_id"].tolist() == floor_frame["flight_id"].tolist()
    bad = mismatching_cells(feast_frame, floor_frame) if same_rows else {"rows differ": -1}
    same_labels = same_rows and bool((feast_frame["late"].to_numpy() == floor_frame["late"].to_numpy()).all())
    result: dict[str, Any] = {
        "flights": n_flights, "labelled_rows": len(feast_frame), "excluded": n_excluded,
        "features": len(F.MODEL_FEATURES), "repeat": repeat,
        "runs": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        "feast_median_s": round(med["feast_s"], 2), "floor_median_s": round(med["floor_s"], 2),
        "ratio": round(med["feast_s"] / med["floor_s"], 2),
        "prep_median_s": round(med["prep_s"], 2),
        "feast_join_median_s": round(med["feast_join_s"], 2), "floor_join_median_s": round(med["floor_join_s"], 2),
        "join_ratio": round(med["feast_join_s"] / med["floor_join_s"], 2),
        "baseline_rss_mb": round(baseline_rss),
        "feast_peak_rss_mb": round(max(runs["feast_rss"])), "floor_peak_rss_mb": round(max(runs["floor_rss"])),
        "peak_rss_reset_supported": reset_peak_rss(),
        "same_rows_same_order": same_rows, "same_labels": same_labels,
        "mismatching_cells": sum(v for v in bad.values() if v > 0),
        "mismatch_by_column": {k: v for k, v in bad.items() if v},
        "null_fraction": {k: round(float(v), 4) for k, v in feast_frame[F.MODEL_FEATURES].isna().mean().items() if v},
        "ttl": {k: str(v) for k, v in ttls.items()},
        "load_avg": os.getloadavg(),
        "setup": setup,
    }
    if profile:
        result["profile"] = profile_feast(store, settings)
    return result


def report(result: dict[str, Any], command: str) -> str:
    r = result
    lines = [
        "# Point-in-time training set: Feast vs DuckDB ASOF floor (bench/pit.py)",
        "",
        f"Command: `{command}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"- Rows: {r['flights']:,} flights departing in 2013, {r['labelled_rows']:,} labelled "
        f"({r['excluded']:,} without outcome excluded), {r['features']} features",
        f"- Feast `features.training_set` (flight_delay_v1, DuckDB offline store), end to end: "
        f"median **{r['feast_median_s']} s** (runs {r['runs']['feast_s']}), peak RSS {r['feast_peak_rss_mb']} MB",
        f"- Floor, end to end (same labelled flights + entity rows, one DuckDB query with 4 ASOF LEFT JOINs "
        f"+ TTL, request-time features in pandas): median **{r['floor_median_s']} s** "
        f"(runs {r['runs']['floor_s']}), peak RSS {r['floor_peak_rss_mb']} MB",
        f"- **Ratio Feast / floor: {r['ratio']}x** end to end (target <= 3x)",
        f"- Point-in-time join alone (shared prep `labelled_flights` + `entity_frame` = {r['prep_median_s']} s "
        f"excluded): Feast `historical_features` {r['feast_join_median_s']} s vs floor {r['floor_join_median_s']} s "
        f"= **{r['join_ratio']}x**",
        f"- Values: same rows in the same order: {r['same_rows_same_order']}, same labels: {r['same_labels']}; "
        f"mismatching feature cells: **{r['mismatching_cells']}** {r['mismatch_by_column'] or ''}",
        f"- Peak RSS includes the process baseline before the runs ({r['baseline_rss_mb']} MB; "
        f"peak reset per phase via /proc/self/clear_refs: {r['peak_rss_reset_supported']}); "
        f"load average during the run {tuple(round(x, 1) for x in r['load_avg'])} on a shared machine",
        f"- TTLs used by the floor (from the registry): {r['ttl']}",
        f"- Null fraction per feature (Feast frame): {r['null_fraction']}",
    ]
    if r["setup"]:
        s = r["setup"]
        lines.append(f"- Setup (not timed above): land {s['flights_landed']:,} flights {s['land_s']} s, "
                     f"refresh tables {s['refresh_s']} s ({s['table_rows']}), feast apply {s['apply_s']} s")
    if "profile" in r:
        p = r["profile"]
        lines += ["", "## Where Feast's time goes", "",
                  f"- `get_historical_features` (job construction): {p['get_historical_features_s']} s",
                  f"- ibis/DuckDB PIT join to Arrow alone: {p['ibis_query_to_arrow_s']} s ({p['query_rows']:,} rows)",
                  f"- job + `to_df` (join + ODFV + pandas): {p['job_plus_to_df_s']} s",
                  f"- one view at a time through Feast (s): {p['per_view_s']}",
                  f"- weather join alone in DuckDB, Feast's shape vs ASOF (s): {p['weather_join_shapes']}", "",
                  "```", p["cprofile_top"].strip()[:6000], "```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--home", type=Path, default=None, help="reuse/keep this RETRAIN_HOME (default: temp dir)")
    parser.add_argument("--profile", action="store_true", help="break Feast's time down (cProfile)")
    parser.add_argument("--out", type=Path, default=None, help="write a markdown report here")
    args = parser.parse_args()
    exe = Path(sys.executable)
    command = " ".join([os.path.relpath(exe) if exe.is_relative_to(Path.cwd()) else str(exe), *sys.argv])
    if args.home is not None:
        result = run(args.home.resolve(), args.repeat, args.profile)
    else:
        with tempfile.TemporaryDirectory(prefix="bench_pit_") as tmp:
            result = run(Path(tmp), args.repeat, args.profile)
    text = report(result, command)
    print(text)
    print(json.dumps({k: v for k, v in result.items() if k != "profile"}, default=str))
    if args.out:
        args.out.write_text(text)
    return 0 if result["mismatching_cells"] == 0 and result["same_labels"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
