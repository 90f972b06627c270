"""Benchmark: backtest retraining policies on the full 2013 flights, monthly.

    .venv/bin/python bench/backtest.py [--home DIR] [--num-threads 2] [--out bench/out/bench_backtest.md]

The history comes through the feature store contract exactly as `retrain backtest` gets it
(`backtest.load_flights`: land the year, build the feature tables, `feast apply`, one
`features.training_set` for the year). Without `--home` that happens in a temporary home and is
timed; with `--home` a landed home is reused.

Then, each in its own `Replay` (no challenger shared between policies, so each policy's wall time
is what a lone `retrain backtest --policy X` costs): static, periodic-always (monthly retrain),
periodic-gated, triggered on production's default Settings, and triggered with the drift rules
switched off (performance decay only). Scored months: March-December (the initial window is
January-February). Reported per policy: mean AUC, retrains, promotions, bad promotions, training
compute seconds, wall seconds; and the goal: triggered recovers >= 90% of the monthly retrain's AUC
gain over static with <= 50% of its retrains and no bad promotions; one policy's full-year
backtest (data + run) within 2 minutes.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from flight_delay.history import load_history
from retrain.backtest import replay as backtest
from retrain.core.config import base_settings
from retrain.usecase.catalog import load_usecase, settings_for

# name -> (policy, Settings overrides)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "static": ("static", {}),
    "periodic-always (monthly)": ("periodic-always", {}),
    "periodic-gated (monthly)": ("periodic-gated", {}),
    "triggered (production defaults)": ("triggered", {}),
    "triggered (decay only)": ("triggered", {"monitor_psi_threshold": 1e6, "monitor_ks_threshold": 1.0,
                                             "monitor_prediction_psi_threshold": 1e6}),
}
BASELINE, MONTHLY = "static", "periodic-always (monthly)"


def run(home: Path | None, num_threads: int | None) -> dict[str, Any]:
    base = base_settings()
    settings = settings_for(load_usecase(base, "flight_delay"), base)
    if num_threads is not None:
        settings = settings.model_copy(update={"num_threads": num_threads})
    t0 = time.perf_counter()
    history = load_history(settings, feature_home=home,
                                    progress=lambda m: print(f"  {time.perf_counter() - t0:6.1f}s {m}", flush=True))
    data_s = time.perf_counter() - t0
    rows: dict[str, dict[str, Any]] = {}
    for name, (policy, overrides) in VARIANTS.items():
        s = backtest.with_overrides(settings, overrides)
        t1 = time.perf_counter()
        result = backtest.run_backtest(history, s, [policy], period="month")
        wall = time.perf_counter() - t1
        runs = result.runs[0]
        months = [p.start[:7] for p in runs.periods]
        rows[name] = {**runs.totals(), "wall_s": round(wall, 1), "months": f"{months[0]}..{months[-1]}",
                      "auc_by_month": [None if p.metric is None else round(p.metric, 4) for p in runs.periods],
                      "initial_fit_s": result.seconds["initial_fit"]}
        print(f"{name}: mean AUC {rows[name]['mean_metric']:.4f}, retrains {rows[name]['retrains']}, "
              f"bad {rows[name]['bad_promotions']}, wall {wall:.1f}s", flush=True)
    return {"rows": rows, "data_s": round(data_s, 1), "n_rows": len(history.frame), "excluded": history.n_excluded,
            "source": history.source, "num_threads": settings.num_threads, "load_avg": os.getloadavg()}


def goal(rows: dict[str, dict[str, Any]], name: str, reference: str) -> dict[str, Any]:
    base, ref, trig = rows[BASELINE], rows[reference], rows[name]
    gain_ref = ref["mean_metric"] - base["mean_metric"]
    gain = trig["mean_metric"] - base["mean_metric"]
    recovered = gain / gain_ref if gain_ref > 0 else float("nan")
    share = trig["retrains"] / ref["retrains"] if ref["retrains"] else float("nan")
    ok = recovered >= 0.9 and share <= 0.5 and trig["bad_promotions"] == 0
    return {"recovered": recovered, "retrain_share": share, "bad": trig["bad_promotions"], "met": ok}


def report(result: dict[str, Any], command: str) -> str:
    rows = result["rows"]
    lines = [
        "# Backtest of retraining policies on the 2013 flights (bench/backtest.py)",
        "",
        f"Command: `{command}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, LightGBM "
        f"num_threads={result['num_threads']}; load average {tuple(round(x, 1) for x in result['load_avg'])}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"Data: {result['n_rows']:,} labelled flights ({result['excluded']:,} without outcome left out), "
        f"{result['source']}; landing + feature tables + `feast apply` + one `training_set` for the year: "
        f"**{result['data_s']} s**. Monthly periods; initial window Jan-Feb; scored months Mar-Dec; production "
        "Settings (56-day training window, 14-day evaluation window, 12 h label lag, gates with slices by carrier "
        "and origin) unless noted.",
        "",
        "| policy | mean AUC Mar-Dec | retrains | promotions | rejected | bad promotions | train compute s "
        "| wall s (initial fit + run) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['mean_metric']:.4f} | {r['retrains']} | {r['promotions']} | {r['rejections']} "
                     f"| {r['bad_promotions']} | {r['train_seconds']:.1f} | {r['wall_s']:.1f} |")
    lines += ["", "AUC by month (Mar..Dec):", ""]
    for name, r in rows.items():
        lines.append(f"- {name}: {r['auc_by_month']}")
    lines += ["", "## Goal: triggered recovers >= 90% of the monthly retrain's AUC gain over static, with <= 50% "
              "of its retrains and no bad promotions", ""]
    for name in (n for n in rows if n.startswith("triggered")):
        for ref in (MONTHLY, "periodic-gated (monthly)"):
            g = goal(rows, name, ref)
            lines.append(f"- {name} vs {ref}: recovers {g['recovered']:.0%} of the gain, "
                         f"{g['retrain_share']:.0%} of the retrains, {g['bad']} bad promotion(s): "
                         f"**{'met' if g['met'] else 'not met'}**")
    worst = max(r["wall_s"] for r in rows.values())
    lines += ["", f"One policy, full year, end to end (data {result['data_s']} s + slowest policy {worst:.1f} s): "
              f"**{result['data_s'] + worst:.1f} s** (target <= 120 s)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=None, help="a RETRAIN_HOME to land into / reuse")
    parser.add_argument("--num-threads", type=int, default=None, help="LightGBM threads (default: Settings)")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = parser.parse_args()
    result = run(args.home, args.num_threads)
    text = report(result, ".venv/bin/python " + " ".join(sys.argv))
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
