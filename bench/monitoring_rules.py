"""Benchmark: do the monitoring rules retrain for the right reasons? Both shipped use cases, monthly.

    .venv/bin/python -m bench.monitoring_rules [--usecase flight_delay --usecase bike_sharing]
        [--flights-home DIR] [--num-threads 1] [--out FILE]

Per use case, on its history through its feature service (as `retrain backtest --usecase` gets it):
static, periodic-always, periodic-gated and triggered on the default Settings, then triggered with
one rule changed at a time (the Settings field in brackets):

- drift alone: a drift alert does not need moved performance (`monitor_drift_requires_performance`);
- validation baseline: realized decay against the champion's validation AUC instead of the AUC its
  calibrated scores lead to expect (`monitor_decay_baseline`; binary only);
- no extrapolation: the out-of-range rule off (`monitor_out_of_range_share` = 1);
- labels withheld: monitoring never sees a matured label (`monitor_min_labels` huge), so only the
  label-free rules can start a retrain (the gates still judge on labels). The backtest refuses
  such settings up front for a binary label ("decay would never be judged"); this benchmark skips
  that check on purpose, for this variant only.

For a regression use case it also ranks the label-free signals against the realized error: for
the model of the initial window on every month, and for each monthly retrain on the month after its
training window, the monitoring pass's extrapolated share (`out_of_range_share`), score PSI and
drifted importance, each against the realized RMSE / the model's validation RMSE (Spearman).

Reported per run: mean metric, retrains, promotions, bad promotions, alerts by kind, and the goal
(recovers >= 90% of the monthly retrain's gain over static with <= 50% of its retrains and no bad
promotion) against periodic-always and periodic-gated; for binary use cases, how often the realized
AUC fell within the reference chunks' spread around the estimate, and the estimate's mean error.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from retrain.backtest import replay as backtest
from retrain.backtest.results import PolicyRun
from retrain.core.config import Settings, base_settings
from retrain.usecase.catalog import load_usecase, settings_for
from retrain.usecase.frames import History
from retrain.usecase.history import load_history

POLICIES = ("static", "periodic-always", "periodic-gated", "triggered")
VARIANTS: dict[str, dict[str, Any]] = {
    "triggered, drift alone": {"monitor_drift_requires_performance": False},
    "triggered, validation baseline": {"monitor_decay_baseline": "validation"},
    "triggered, no extrapolation": {"monitor_out_of_range_share": 1.0},
    "triggered, labels withheld": {"monitor_min_labels": 10**9},
}


class _NoVolumeCheck(backtest.Replay):
    """The replay without its up-front volume check (the labels-withheld variant needs it off)."""

    def _require_volume(self, n_periods: int) -> None:
        return None


def _run(history: History, settings: Settings, policy: str, *, check: bool = True) -> tuple[PolicyRun, float]:
    t0 = time.perf_counter()
    if check:
        result = backtest.run_backtest(history, settings, [policy], period="month")
        return result.runs[0], time.perf_counter() - t0
    replay = _NoVolumeCheck(history, settings, period="month")
    return replay.run(backtest.parse_policy(policy)), time.perf_counter() - t0


def row_of(run: PolicyRun, seconds: float) -> dict[str, Any]:
    totals = run.totals()
    kinds = Counter(str(a["kind"]) for p in run.periods for a in p.alerts)
    errors = [p.monitoring["estimated_auc"] - p.monitoring["auc"] for p in run.periods
              if p.monitoring.get("estimated_auc") is not None and p.monitoring.get("auc") is not None]
    return {**totals, "alerts": dict(sorted(kinds.items())), "seconds": round(seconds, 1),
            "estimate_mae": float(np.mean(np.abs(errors))) if errors else None,
            "estimate_bias": float(np.mean(errors)) if errors else None,
            "retrained_at": [f"{p.start[:7]} {p.retrain.trigger.removeprefix('alert:')} {p.retrain.outcome}"
                             for p in run.periods if p.retrain is not None]}


def label_free_signals(history: History, settings: Settings) -> dict[str, Any]:
    """Spearman rank correlation of each label-free signal with the realized RMSE ratio, over the
    initial model on every month and each monthly retrain on the month after it."""
    from scipy.stats import spearmanr

    from retrain.alerts.retraining import plan_windows

    replay = backtest.Replay(history, settings, period="month")
    months = range(replay.initial_periods, len(replay.bounds) - 1)
    pairs = [(replay.initial_model(), k) for k in months]
    for k in list(months)[:-1]:
        now = replay.bounds[k + 1]
        w = plan_windows(now.to_pydatetime(), replay.settings)
        pairs.append((replay.fit(w.train_from, w.train_to, now), k + 1))
    signals = ("out_of_range_share", "prediction_psi", "drifted_importance")
    table: dict[str, list[float]] = {key: [] for key in ("ratio", *signals)}
    for model, k in pairs:
        _alerts, summary = replay.monitor(model, k)
        if summary.get("rmse") is None or not summary.get("baseline_rmse"):
            continue
        table["ratio"].append(summary["rmse"] / summary["baseline_rmse"])
        for key in signals:
            table[key].append(float(summary.get(key) or 0.0))
    decayed = [r > 1 + settings.monitor_rmse_increase for r in table["ratio"]]
    return {"pairs": len(table["ratio"]), "decayed": sum(decayed),
            "spearman": {key: float(spearmanr(table[key], table["ratio"]).statistic) for key in signals},
            "hits": sum(d and v >= settings.monitor_out_of_range_share
                        for d, v in zip(decayed, table["out_of_range_share"], strict=True)),
            "false_alarms": sum(not d and v >= settings.monitor_out_of_range_share
                                for d, v in zip(decayed, table["out_of_range_share"], strict=True))}


def run_usecase(name: str, feature_home: Path | None, num_threads: int | None) -> dict[str, Any]:
    base = base_settings()
    spec = load_usecase(base, name)
    settings = settings_for(spec, base)
    if num_threads is not None:
        settings = settings.model_copy(update={"num_threads": num_threads})
    t0 = time.perf_counter()
    home = feature_home or Path(tempfile.mkdtemp(prefix=f"bench-rules-{name}-"))
    history = load_history(spec, settings, feature_home=home)
    data_s = time.perf_counter() - t0
    rows: dict[str, dict[str, Any]] = {}
    for policy in POLICIES:
        rows[policy] = row_of(*_run(history, settings, policy))
        print(f"{name} {policy}: {rows[policy]['mean_metric']:.4f}, {rows[policy]['retrains']} retrains", flush=True)
    for label, overrides in VARIANTS.items():
        if name != "flight_delay" and "monitor_decay_baseline" in overrides:
            continue
        s = backtest.with_overrides(settings, overrides)
        rows[label] = row_of(*_run(history, s, "triggered", check="monitor_min_labels" not in overrides))
        print(f"{name} {label}: {rows[label]['mean_metric']:.4f}, {rows[label]['retrains']} retrains", flush=True)
    signals = label_free_signals(history, settings) if history.objective == "regression" else None
    return {"rows": rows, "data_s": round(data_s, 1), "n_rows": len(history.frame), "signals": signals,
            "higher_is_better": history.objective == "binary", "num_threads": settings.num_threads}


def goal(rows: dict[str, dict[str, Any]], name: str, reference: str, higher: bool) -> str:
    sign = 1.0 if higher else -1.0
    base, ref, trig = rows["static"], rows[reference], rows[name]
    gain_ref = sign * (ref["mean_metric"] - base["mean_metric"])
    recovered = sign * (trig["mean_metric"] - base["mean_metric"]) / gain_ref if gain_ref > 0 else float("nan")
    share = trig["retrains"] / ref["retrains"] if ref["retrains"] else float("nan")
    met = recovered >= 0.9 and share <= 0.5 and trig["bad_promotions"] == 0
    return (f"{recovered:.0%} of the gain, {share:.0%} of the retrains, {trig['bad_promotions']} bad: "
            f"**{'met' if met else 'not met'}**")


def report(results: dict[str, dict[str, Any]], command: str) -> str:
    lines = [f"Command: `{command}`",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
             f"load average {tuple(round(x, 1) for x in os.getloadavg())}; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", ""]
    for name, res in results.items():
        rows, higher = res["rows"], res["higher_is_better"]
        metric = "AUC" if higher else "RMSE"
        lines += [f"### {name} ({res['n_rows']:,} rows, data {res['data_s']} s, num_threads {res['num_threads']})", "",
                  f"| policy | mean {metric} | retrains | promoted | bad | alerts by kind | vs periodic-always "
                  "| vs periodic-gated |", "|---|---:|---:|---:|---:|---|---|---|"]
        for label, r in rows.items():
            kinds = ", ".join(f"{k} {v}" for k, v in r["alerts"].items()) or "-"
            goals = ("", "") if not label.startswith("triggered") else (
                goal(rows, label, "periodic-always", higher), goal(rows, label, "periodic-gated", higher))
            lines.append(f"| {label} | {r['mean_metric']:.4f} | {r['retrains']} | {r['promotions']} | "
                         f"{r['bad_promotions']} | {kinds} | {goals[0]} | {goals[1]} |")
        lines += ["", "Retrains (period, trigger, outcome):", ""]
        for label, r in rows.items():
            if r["retrained_at"] and not label.startswith("periodic"):
                lines.append(f"- {label}: {'; '.join(r['retrained_at'])}")
        if higher:
            lines += ["", "Estimated AUC against the realized AUC of each period (model serving it):", ""]
            for label, r in rows.items():
                if r["estimate_windows"]:
                    lines.append(f"- {label}: within the chunk spread {r['estimate_covered']}/{r['estimate_windows']}, "
                                 f"mean |estimated - realized| {r['estimate_mae']:.4f}, mean estimated - realized "
                                 f"{r['estimate_bias']:+.4f}")
        if res.get("signals"):
            sig = res["signals"]
            lines += ["", "Label-free signals against the realized RMSE / validation RMSE "
                      f"({sig['pairs']} model-months, {sig['decayed']} past the decay rule): Spearman "
                      + ", ".join(f"{k} {v:.2f}" for k, v in sig["spearman"].items())
                      + f"; out_of_range_share >= its threshold in {sig['hits']} of the {sig['decayed']} decayed "
                      f"ones and in {sig['false_alarms']} of the {sig['pairs'] - sig['decayed']} others."]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--usecase", action="append", default=None, help="flight_delay and/or bike_sharing")
    parser.add_argument("--flights-home", type=Path, default=None, help="a landed flights home to reuse")
    parser.add_argument("--num-threads", type=int, default=None, help="LightGBM threads (default: Settings)")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = parser.parse_args()
    results = {}
    for name in args.usecase or ["flight_delay", "bike_sharing"]:
        home = args.flights_home if name == "flight_delay" else None
        results[name] = run_usecase(name, home, args.num_threads)
    text = report(results, ".venv/bin/python -m bench.monitoring_rules " + " ".join(sys.argv[1:]))
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
