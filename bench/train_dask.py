"""Benchmark: training time, single process vs Dask (`train_dask_address`), on the same synthetic frame.

    .venv/bin/python -m bench.train_dask [--rows 300000] [--features 10] [--rounds 200] [--workers 2]
        [--repeats 2] [--out FILE]

Starts a LocalCluster (`--workers` processes, 1 thread each, no dashboard), then fits the same frame
with `train.fit` in process (`num_threads` = `--workers`, and 1 thread) and through the cluster,
`--repeats` times each, alternating. Reported: the cluster's start-up, per-fit seconds (median), kept round and AUC on
later held-out rows. The Dask fit grows every round (its early stopping happens after the fit), so its
time covers `--rounds` rounds; the in-process one stops early.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retrain.core import metrics
from retrain.models import train


def synthetic_frame(rows: int, features: int, seed: int = 0) -> pd.DataFrame:
    """Time-ordered rows with a binary label depending non-linearly on a few features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features))
    logit = -0.5 + 1.2 * x[:, 0] - 0.8 * x[:, 1] ** 2 + 0.6 * x[:, 2] * x[:, 3 % features] + 0.3 * x[:, -1]
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(features)])
    frame["ts"] = pd.date_range("2024-01-01", periods=rows, freq="min", tz="UTC")
    frame["y"] = rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))
    return frame


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from distributed import LocalCluster

    whole = synthetic_frame(args.rows, args.features)
    cut = int(len(whole) * 0.8)
    frame, held_out = whole.iloc[:cut], whole.iloc[cut:]
    feats = [c for c in whole.columns if c.startswith("f")]
    kwargs: dict[str, Any] = dict(label="y", time_col="ts", num_boost_round=args.rounds, early_stopping_rounds=20)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, memory_limit="2GiB",
                           dashboard_address=None)
    startup = time.perf_counter() - t0
    variants = (("single", None, args.workers), ("single_1_thread", None, 1), ("dask", cluster.scheduler_address, 1))
    runs: dict[str, list[tuple[float, int, float]]] = {name: [] for name, _, _ in variants}
    try:
        for _ in range(args.repeats):
            for name, address, threads in variants:
                started = time.perf_counter()
                result = train.fit(frame, feats, dask_address=address, num_threads=threads, **kwargs)
                seconds = time.perf_counter() - started
                auc = metrics.roc_auc(held_out["y"].to_numpy(), result.booster.predict(held_out[feats]))
                runs[name].append((seconds, int(result.metadata["best_iteration"]), auc))
    finally:
        cluster.close()
    report = {
        "command": "python -m bench.train_dask " + " ".join(argv or []),
        "rows_train": len(frame), "rows_held_out": len(held_out), "features": len(feats), "rounds": args.rounds,
        "workers": args.workers, "cluster_startup_seconds": round(startup, 2),
        "machine": {"cpus": os.cpu_count(), "load_average_before": round(load_before, 2),
                    "load_average_after": round(os.getloadavg()[0], 2), "python": platform.python_version()},
        **{name: {"seconds_median": round(statistics.median(r[0] for r in rs), 2),
                  "seconds": [round(r[0], 2) for r in rs], "best_iteration": [r[1] for r in rs],
                  "auc_held_out": [round(r[2], 4) for r in rs]} for name, rs in runs.items()},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
