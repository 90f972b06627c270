"""Benchmark: the demo's per-simulated-day data work late in the year, incremental vs from scratch.

    .venv/bin/python bench/day_step.py [--from 2013-11-20] [--days 8] [--home DIR] [--out FILE]

Setup (timed, reported): a RETRAIN_HOME replayed like the demo: January–February in one batch, then
one day at a time up to `--from` (about two parts per simulated day, ~530 parts by late November).

Measured, in the same process, alternating day by day (same kind of work, nearly the same data):
- incremental: `replay_until(day)` + `refresh_feature_tables(day + 1)` with the process's caches warm
  (landed/recorded id lookups, joined outcome facts, the weather grid): what the
  demo does each simulated day;
- from scratch: the same step after dropping every in-process cache, so every landed part is read
  again and every join redone: what each simulated day cost before the caches (and what the first
  day of a resumed demo costs).
Reported: median seconds per day of each, and the ratio from-scratch / incremental.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def drop_caches() -> None:
    """Forget everything the process learned about the landed parts."""
    from flight_delay import delay_facts, features, ingest

    ingest._ID_CACHE.clear()
    delay_facts._STATE.clear()
    features._weather_grid.cache_clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="start", default="2013-11-20", help="first measured day")
    parser.add_argument("--days", type=int, default=8, help="measured days (alternating)")
    parser.add_argument("--home", type=Path, help="RETRAIN_HOME to build (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="bench_day_"))
    os.environ["RETRAIN_HOME"] = str(home)

    from flight_delay.data import ReplayClock
    from flight_delay.features import refresh_feature_tables
    from flight_delay.ingest import replay_until
    from retrain.core.config import get_settings
    from retrain.models.registry import open_registry

    settings = get_settings()
    settings.ensure_dirs()
    sessions = open_registry(settings)
    clock = ReplayClock()
    first = datetime(2013, 3, 1, tzinfo=UTC)
    start = datetime.fromisoformat(args.start).replace(tzinfo=UTC)
    t0 = time.perf_counter()
    day = first
    replay_until(settings, sessions, day, clock=clock)
    while day < start:
        replay_until(settings, sessions, day, clock=clock)
        refresh_feature_tables(settings, day + timedelta(days=1))
        day += timedelta(days=1)
    setup_s = time.perf_counter() - t0
    parts = len(list((settings.offline_dir / "flights").glob("part-*.parquet"))) + len(
        list((settings.offline_dir / "outcomes").glob("part-*.parquet")))

    timings: dict[str, list[float]] = {"incremental": [], "from scratch": []}
    for i in range(args.days):
        kind = "from scratch" if i % 2 == 0 else "incremental"
        if kind == "from scratch":
            drop_caches()
        t = time.perf_counter()
        replay_until(settings, sessions, day, clock=clock)
        refresh_feature_tables(settings, day + timedelta(days=1))
        timings[kind].append(time.perf_counter() - t)
        day += timedelta(days=1)

    inc, cold = statistics.median(timings["incremental"]), statistics.median(timings["from scratch"])
    lines = [
        "# Per-simulated-day data step: incremental vs from scratch (bench/day_step.py)",
        "",
        f"Command: `.venv/bin/python bench/day_step.py --from {args.start} --days {args.days}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average {tuple(round(x, 1) for x in os.getloadavg())}",
        "",
        f"- Setup: replayed 2013-03-01 .. {args.start} one day at a time: {setup_s:.1f} s; "
        f"{parts} landed parts before the first measured day",
        f"- incremental (warm caches): {', '.join(f'{x:.2f}' for x in timings['incremental'])} s "
        f"-> median **{inc:.2f} s** per day",
        f"- from scratch (caches dropped): {', '.join(f'{x:.2f}' for x in timings['from scratch'])} s "
        f"-> median **{cold:.2f} s** per day",
        f"- **Ratio from scratch / incremental: {cold / inc:.1f}x**",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
