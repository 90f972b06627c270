"""Benchmark: one monitoring pass over 100,000 logged predictions (target <= 2 s).

Builds a temporary SQLite system of record (Alembic schema), a champion with a reference profile
from 50,000 synthetic training rows, and a prediction log of N predictions whose `features` JSON
has every flights model input (realistic ranges, some nulls, a seasonal shift), plus outcomes of
which ~70% have matured. Times `run_monitoring` end to end (query + JSON decode + drift +
performance + rules + monitoring_runs write) and, in the same run, a floor: numpy-only PSI for every
feature plus AUC on the same arrays already in memory.

    .venv/bin/python bench/monitor.py [--rows 100000] [--repeat 3] [--out bench/out/bench_monitor.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import create_engine, insert, text
from sqlalchemy.orm import Session, sessionmaker
from tests.support.flights import flight_settings

from retrain.core import db
from retrain.core.config import Settings
from retrain.core.stats import build_reference_profile
from retrain.monitoring.monitor import run_monitoring

try:  # the real contract when available; the bench does not need Feast itself
    from flight_delay.features import MODEL_FEATURES
except Exception:  # pragma: no cover - fallback keeps the bench runnable on its own
    MODEL_FEATURES = [f"f{i}" for i in range(24)]

CATEGORICAL = ["carrier", "origin", "dest"]
CARRIERS = ["UA", "B6", "EV", "DL", "AA", "MQ", "US", "9E", "WN", "VX", "FL", "AS", "F9", "YV", "HA", "OO"]
AIRPORTS = ["EWR", "JFK", "LGA"]
DESTS = [f"D{i:02d}" for i in range(100)]


def synth_features(rng: np.random.Generator, n: int, shift: float) -> pd.DataFrame:
    """Feature columns with per-feature scales, ~5% nulls on weather/plane columns and a mean shift."""
    cols: dict[str, np.ndarray] = {}
    for i, name in enumerate(MODEL_FEATURES):
        scale = 1.0 + (i % 7) * 10.0
        if name in ("dep_hour",):
            values = rng.integers(5, 24, n).astype(float)
        elif name in ("dep_weekday",):
            values = rng.integers(0, 7, n).astype(float)
        elif name in ("dep_month",):
            values = np.full(n, 1.0 + shift * 6)
        else:
            values = np.round(rng.normal(scale * (1 + shift * 0.3), scale * 0.25, n), 3)
        if i % 3 == 0:
            values[rng.random(n) < 0.05] = np.nan
        cols[name] = values
    frame = pd.DataFrame(cols)
    frame["carrier"] = rng.choice(CARRIERS, n)
    frame["origin"] = rng.choice(AIRPORTS, n)
    frame["dest"] = rng.choice(DESTS, n)
    return frame


def scores_of(frame: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    z = frame[MODEL_FEATURES[0]].fillna(0).to_numpy() / 50 + rng.normal(-1.5, 1.0, len(frame))
    return 1 / (1 + np.exp(-z))


@dataclass
class Context:
    t0: datetime
    as_of: datetime
    cur: pd.DataFrame
    scores: np.ndarray
    labels: np.ndarray
    profile: dict[str, Any]


def build(tmp: Path, rows: int, seed: int, database_url: str | None = None
          ) -> tuple[Settings, sessionmaker[Session], Context]:
    settings = flight_settings(home=tmp, database_url=database_url)
    db.upgrade(settings.db_url)
    engine = db.make_engine(settings.db_url)
    sessions = db.session_factory(engine)
    rng = np.random.default_rng(seed)
    ref = synth_features(rng, 50_000, 0.0)
    ref_scores = scores_of(ref, rng)
    ref_labels = rng.random(len(ref)) < ref_scores
    profile = build_reference_profile(ref, MODEL_FEATURES + CATEGORICAL, ref_scores, labels=ref_labels)
    t0 = datetime(2013, 3, 1, tzinfo=UTC)
    with db.transaction(sessions) as s:
        mv = db.ModelVersion(
            model_name="flight_delay", version="v1", bento_model_tag="flight_delay:v1", feature_service="x",
            train_from=t0 - timedelta(days=60), train_to=t0, n_train=50_000, n_valid=0,
            data_fingerprint="x", model_checksum="x", model_size_bytes=1, params={}, metrics={},
            library_versions={}, reference_profile=profile,
        )
        s.add(mv)
        s.flush()
        s.add(db.Alias(model_name="flight_delay", alias="champion", version_id=mv.id))
    cur = synth_features(rng, rows, 0.5)
    cur_scores = scores_of(cur, rng)
    late = rng.random(rows) < np.clip(cur_scores + 0.1, 0, 1)
    minutes = np.sort(rng.integers(0, 7 * 24 * 60, rows))
    predicted_at = [t0 + timedelta(minutes=int(m)) for m in minutes]
    records = [{k: (None if v != v else v) for k, v in rec.items()}  # NaN -> JSON null
               for rec in cur[MODEL_FEATURES].to_dict("records")]
    pred_rows: list[dict[str, Any]] = [
        {"request_id": f"r{i}", "entity_key": f"f{i}", "model_name": "flight_delay", "model_version": "v1",
         "predicted_at": predicted_at[i], "event_time": predicted_at[i] + timedelta(hours=2),
         "attributes": {"carrier": cur["carrier"].iat[i], "origin": cur["origin"].iat[i],
                        "dest": cur["dest"].iat[i], "tailnum": "N1"},
         "features": records[i], "missing_features": [], "score": float(cur_scores[i])}
        for i in range(rows)
    ]
    as_of = t0 + timedelta(days=7)
    matured = rng.random(rows) < 0.7
    out_rows = [
        {"model_name": "flight_delay", "entity_key": f"f{i}", "event_time": predicted_at[i] + timedelta(hours=2),
         "available_at": (predicted_at[i] + timedelta(hours=5)) if matured[i] else as_of + timedelta(days=1),
         "label": float(late[i]), "detail": {"arr_delay": 30.0 if late[i] else 0.0}}
        for i in range(rows)
    ]
    with db.transaction(sessions) as s:
        for chunk in range(0, rows, 20_000):
            s.execute(insert(db.Prediction), pred_rows[chunk:chunk + 20_000])
            s.execute(insert(db.Outcome), out_rows[chunk:chunk + 20_000])
    return settings, sessions, Context(t0, as_of, cur, cur_scores, np.where(matured, late, np.nan), profile)


def floor(ctx: Context) -> float:
    """numpy-only PSI for every numeric feature + AUC on arrays already in memory (no DB, no JSON)."""
    profile = ctx.profile
    arrays = {n: ctx.cur[n].to_numpy(dtype=float) for n in MODEL_FEATURES}
    scores, labels = ctx.scores, ctx.labels
    t = time.perf_counter()
    total = 0.0
    for name, x in arrays.items():
        ref = profile["features"][name]
        edges = np.asarray(ref["edges"])
        e = np.maximum(np.asarray(ref["proportions"]), 1e-4)
        x = x[~np.isnan(x)]
        a = np.maximum(np.bincount(np.searchsorted(edges, x, side="right"), minlength=edges.size + 1) / x.size,
                       1e-4)
        total += float(np.sum((a - e) * np.log(a / e)))
    keep = ~np.isnan(labels)
    y, p = labels[keep], scores[keep]
    ranks = np.empty(p.size)
    ranks[np.argsort(p)] = np.arange(1, p.size + 1)
    n_pos = y.sum()
    _auc = (ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (y.size - n_pos))
    return time.perf_counter() - t


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A throwaway PostgreSQL database (created and dropped) for `--postgres`."""
    name = f"bench_monitor_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--postgres", metavar="ADMIN_URL", default=None,
                        help="run on a throwaway PostgreSQL database created via this admin URL, e.g. "
                        "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--out", type=Path, default=None, help="append a markdown result block here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp, ExitStack() as stack:
        url = stack.enter_context(postgres_database(args.postgres)) if args.postgres else None
        t = time.perf_counter()
        settings, sessions, ctx = build(Path(tmp), args.rows, args.seed, url)
        setup = time.perf_counter() - t
        runs = []
        cpu = []
        load_before = os.getloadavg()[0]
        for _ in range(args.repeat):
            t, c = time.perf_counter(), time.process_time()
            result = run_monitoring(sessions, settings, "flight_delay", ctx.t0, ctx.t0 + timedelta(days=7),
                                    ctx.as_of)
            runs.append((time.perf_counter() - t, result.seconds))
            cpu.append(time.process_time() - c)
        floors = [floor(ctx) for _ in range(args.repeat)]
        sessions.kw["bind"].dispose()
    backend = "PostgreSQL 15" if args.postgres else "SQLite (WAL)"
    totals = [r[0] for r in runs]
    best = min(runs, key=lambda r: r[0])
    lines = [
        f"## bench/monitor.py — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"command: `.venv/bin/python bench/monitor.py {' '.join(sys.argv[1:])}`",
        f"machine: {platform.machine()}, {os.cpu_count()} cores (shared), python {platform.python_version()}, "
        f"backend: {backend}; 1-min load average at start: {load_before:.1f} (other jobs share the machine)",
        f"setup (schema + {args.rows:,} predictions/outcomes inserted, not timed): {setup:.1f} s",
        f"predictions in window: {result.n_predictions:,}; labelled (matured): {result.n_labelled:,}; "
        f"features: {len(result.features)}; alerts: {[a.kind for a in result.alerts]}",
        "",
        "| measure | median s | min s |",
        "|---|---|---|",
        f"| run_monitoring end to end (read+decode+drift+perf+rules+write) | {statistics.median(totals):.3f} "
        f"| {min(totals):.3f} |",
        f"| ├ DB read + JSON decode (best run) | {best[1]['read']:.3f} | |",
        f"| ├ drift + performance + rules (best run) | {best[1]['compute']:.3f} | |",
        f"| └ monitoring_runs write (best run) | {best[1]['write']:.3f} | |",
        f"| run_monitoring CPU time (all threads of this process) | {statistics.median(cpu):.3f} "
        f"| {min(cpu):.3f} |",
        f"| floor: numpy PSI ({len(MODEL_FEATURES)} features) + AUC, arrays in memory | "
        f"{statistics.median(floors):.3f} | {min(floors):.3f} |",
        "",
        f"target ≤ 2 s: {'met' if statistics.median(totals) <= 2.0 else 'NOT met'} "
        f"(ratio to floor {statistics.median(totals) / max(statistics.median(floors), 1e-9):.0f}×)",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    print(json.dumps({"totals": totals, "floors": floors, "best_breakdown": best[1]}))
    if args.out:
        with args.out.open("a") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
