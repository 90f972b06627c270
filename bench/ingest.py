"""Benchmark: ingest the full 2013 year (336,776 rows) from a CSV file into a fresh RETRAIN_HOME.

Times `ingest.ingest_file` end to end (read CSV, coerce + content hash, pandera contract,
duplicate check against the store, atomic parquet parts, 327k outcomes into SQLite, batch row)
and, in the same run on the same file, a floor: `pandas.read_csv` + `DataFrame.to_parquet` of the
same rows. Reports rows/s, the ratio to the floor, a phase breakdown, and the time to recognise
the same file again (duplicate batch: read + hash + lookup).

    .venv/bin/python bench/ingest.py [--repeat 3] [--format csv|parquet] [--out bench/out/bench_ingest.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from tests.support.flights import flight_settings

from flight_delay.data import load_flights_raw
from flight_delay.ingest import ingest_file
from retrain.core import db
from retrain.core.config import Settings

EXPECTED_ROWS = 336_776
EXPECTED_OUTCOMES = 327_346


def _fresh_home(root: Path) -> tuple[Settings, Any]:
    settings = flight_settings(home=root, database_url=f"sqlite:///{root / 'retrain.db'}")
    settings.ensure_dirs()
    db.upgrade(settings.db_url)
    return settings, db.session_factory(db.make_engine(settings.db_url))


PHASES = {
    "reading ": "read file", "checking": "coerce + content hash", "reading already": "landed-id lookup",
    "validating": "contract (pandera + duplicates)", "landing": "land (parquet parts + SQL)",
}


def _phase(step: str) -> str:
    """Short name of an ingest progress step (longest matching prefix)."""
    hits = [k for k in PHASES if step.startswith(k)]
    return PHASES[max(hits, key=len)] if hits else step


def run_ingest(path: Path, root: Path) -> dict[str, Any]:
    """One full-year ingest into a fresh home; returns seconds, phases and counts."""
    settings, sessions = _fresh_home(root)
    marks: list[tuple[str, float]] = []
    start = time.perf_counter()
    result = ingest_file(path, settings=settings, sessions=sessions,
                         progress=lambda step: marks.append((step, time.perf_counter())))
    total = time.perf_counter() - start
    marks.append(("done", time.perf_counter()))
    phases = {_phase(marks[i][0]): marks[i + 1][1] - marks[i][1] for i in range(len(marks) - 1)}
    assert result.status == "landed", result
    assert result.accepted == EXPECTED_ROWS and result.quarantined == 0, result
    assert result.outcomes == EXPECTED_OUTCOMES, result
    again_start = time.perf_counter()
    again = ingest_file(path, settings=settings, sessions=sessions)
    again_s = time.perf_counter() - again_start
    assert again.status == "duplicate" and again.accepted == 0
    return {"seconds": total, "phases": phases, "duplicate_seconds": again_s}


def run_floor(path: Path, root: Path, fmt: str) -> float:
    """Plain pandas: read the same file, write the same rows as one parquet file."""
    start = time.perf_counter()
    df = pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path, low_memory=False)
    df.to_parquet(root / "floor.parquet", index=False)
    seconds = time.perf_counter() - start
    assert len(df) == EXPECTED_ROWS
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side (median reported)")
    parser.add_argument("--format", choices=["csv", "parquet"], default="csv", help="input file format")
    parser.add_argument("--out", type=Path, default=None, help="write a markdown result section here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        tmp_path = Path(tmp)
        source = tmp_path / f"flights2013.{args.format}"
        flights = load_flights_raw()
        if args.format == "parquet":
            flights.to_parquet(source, index=False)
        else:
            flights.to_csv(source, index=False)
        ingests: list[dict[str, Any]] = []
        floors: list[float] = []
        for i in range(args.repeat):  # interleaved so background load hits both sides alike
            floors.append(run_floor(source, tmp_path, args.format))
            ingests.append(run_ingest(source, tmp_path / f"home{i}"))
            print(f"run {i + 1}: ingest {ingests[-1]['seconds']:.2f} s, floor {floors[-1]:.2f} s", file=sys.stderr)

    ingest_s = statistics.median(r["seconds"] for r in ingests)
    floor_s = statistics.median(floors)
    dup_s = statistics.median(r["duplicate_seconds"] for r in ingests)
    best = min(ingests, key=lambda r: r["seconds"])
    phases = "; ".join(f"{k} {v:.2f} s" for k, v in best["phases"].items())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cmd = f".venv/bin/python bench/ingest.py --repeat {args.repeat}"
    if args.format != "csv":
        cmd += f" --format {args.format}"
    lines = [
        "## Ingestion: full 2013 year",
        "",
        f"Command: `{cmd}` ({platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} at the end; "
        f"median of {args.repeat} interleaved runs).",
        "",
        "| what | seconds | rows/s |",
        "|---|---:|---:|",
        f"| `retrain ingest` path (`ingest_file`, {args.format}, fresh home, SQLite) | {ingest_s:.2f} | "
        f"{EXPECTED_ROWS / ingest_s:,.0f} |",
        f"| floor: `pandas.read_{'parquet' if args.format == 'parquet' else 'csv'}` + `to_parquet` | {floor_s:.2f} | "
        f"{EXPECTED_ROWS / floor_s:,.0f} |",
        f"| same file again (recognised as duplicate, nothing written) | {dup_s:.2f} | - |",
        "",
        f"Ratio ingest / floor: **{ingest_s / floor_s:.1f}x**. {EXPECTED_ROWS:,} rows accepted, 0 quarantined, "
        f"{EXPECTED_OUTCOMES:,} outcomes written to parquet and to the SQL `outcomes` table.",
        "",
        f"Phases of the fastest run: {phases}. The landing phase includes the two atomic parquet "
        "parts and the 327k-row outcomes insert in the same transaction as the batch row.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
