"""What a backtest shows: Rich tables for the terminal, a PNG of the metric per period per policy
(retrain and promotion markers), a PNG and a table of the label-free estimate against the realized
metric per period, and an HTML page with all of it plus the settings that produced them.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from retrain.evaluation.reports import html_table

if TYPE_CHECKING:
    from rich.table import Table

    from retrain.backtest.results import BacktestResult, PeriodRecord

ADVERB = {"day": "daily", "week": "weekly", "month": "monthly"}
PNG_NAME = "backtest.png"
ESTIMATE_PNG_NAME = "estimate.png"
HTML_NAME = "index.html"
JSON_NAME = "result.json"
SUMMARY_COLUMNS = ("policy", "mean", "periods in mean", "retrains", "promoted", "rejected", "refused", "bad promotions",
                   "train s", "alert periods", "alerts by kind", "estimate covered")


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def summary_rows(result: BacktestResult) -> list[dict[str, str]]:
    """One row per policy: the totals the issue asks for."""
    rows = []
    for run in result.runs:
        t = run.totals()
        rows.append({"policy": run.policy.name, "mean": _num(t["mean_metric"]),
                     "periods in mean": f"{t['periods_in_mean']}/{t['periods']}", "retrains": str(t["retrains"]),
                     "promoted": str(t["promotions"]), "rejected": str(t["rejections"]),
                     "refused": str(t["refused"]), "bad promotions": str(t["bad_promotions"]),
                     "train s": _num(t["train_seconds"], 1), "alert periods": str(t["periods_with_alerts"]),
                     "alerts by kind": ", ".join(f"{k} {v}" for k, v in t["alerts_by_kind"].items()) or "-",
                     "estimate covered": (f"{t['estimate_covered']}/{t['estimate_windows']}"
                                          if t["estimate_windows"] else "-")})
    return rows


def estimate_rows(result: BacktestResult) -> list[dict[str, str]]:
    """Per policy and period: the realized metric of the serving model against what monitoring said
    without labels (binary: the AUC estimated from calibrated scores, with the reference chunks'
    spread around it and the alert threshold; both: the extrapolated share, the drifted importance)."""
    rows = []
    for run in result.runs:
        for p in run.periods:
            m = p.monitoring
            if not m:
                continue
            row = {"policy": run.policy.name, "period": p.start[:10], "served": p.served,
                   "realized": _num(p.metric)}
            if result.higher_is_better:
                est, ref, lo, hi = (m.get(k) for k in ("estimated_auc", "reference_estimated_auc",
                                                      "estimated_auc_lower", "estimated_auc_upper"))
                known = [float(v) for v in (est, ref, lo, hi) if isinstance(v, int | float)]
                spread = "-"
                if len(known) == 4:
                    e, r, a, b = known
                    spread = f"{e - (r - a):.4f} .. {e + (b - r):.4f}"
                covered = m.get("estimate_covers_realized")
                row.update({"estimated": _num(est), "chunk spread": spread,
                            "covered": "-" if covered is None else ("yes" if covered else "no"),
                            "alert below": _num(m.get("estimated_auc_threshold"))})
            else:
                row["baseline"] = _num(m.get("baseline_rmse"))
            row.update({"out of range": _num(m.get("out_of_range_share"), 3),
                        "drifted importance": _num(m.get("drifted_importance"), 3),
                        "alerts": ", ".join(sorted({str(a.get("kind")) for a in p.alerts})) or "-"})
            rows.append(row)
    return rows


def cell(p: PeriodRecord) -> str:
    """A period's metric with its events: R retrained (r: refused/failed), P promoted, ! bad, A alerts."""
    marks = ""
    if p.alerts:
        marks += "A"
    if p.retrain is not None:
        marks += "R" if p.retrain.challenger is not None else "r"
    if p.promoted:
        marks += "P"
    if p.bad_promotion:
        marks += "!"
    return f"{_num(p.metric)} {marks}".rstrip()


def period_rows(result: BacktestResult) -> list[dict[str, str]]:
    """One row per period: each policy's metric and markers."""
    by_policy = {r.policy.name: {p.index: p for p in r.periods} for r in result.runs}
    indexes = sorted({p.index for r in result.runs for p in r.periods})
    rows = []
    for i in indexes:
        first = next(ps[i] for ps in by_policy.values() if i in ps)
        row = {"period": first.start[:10], "rows": f"{first.n_rows} (short)" if first.short else str(first.n_rows)}
        for name, ps in by_policy.items():
            row[name] = cell(ps[i]) if i in ps else "-"
        rows.append(row)
    return rows


def overrides_note(result: BacktestResult) -> str:
    """The settings each triggered variant replaces ('' when none ran)."""
    parts = [f"{r.policy.name}: " + ", ".join(f"{k}={v}" for k, v in r.policy.overrides.items())
             for r in result.runs if r.policy.overrides]
    return ("; policies over the triggered replay with settings replaced: " + "; ".join(parts)) if parts else ""


def rich_tables(result: BacktestResult) -> list[Table]:
    from rich.table import Table

    metric = result.metric.upper()
    better = "higher" if result.higher_is_better else "lower"
    summary = Table(title=f"backtest: mean {metric} per {result.period} ({better} is better), bad promotion = "
                          f"worse by > {result.bad_margin:g} on the next period",
                    caption=result.means_note() + overrides_note(result))
    for col in SUMMARY_COLUMNS:
        summary.add_column(col, justify="left" if col == "policy" else "right")
    for row in summary_rows(result):
        summary.add_row(*(row[c] for c in SUMMARY_COLUMNS))
    periods = Table(title=f"{metric} per {result.period}: A alert, R retrained (r refused), P promoted, "
                          "! bad promotion")
    rows = period_rows(result)
    for col in (rows[0] if rows else {"period": ""}):
        periods.add_column(col, justify="left" if col == "period" else "right")
    for row in rows:
        periods.add_row(*row.values())
    return [summary, periods]


def render_png(result: BacktestResult, path: Path) -> Path:
    """Metric per period for each policy; markers where a retrain happened and where a model was promoted.

    A decision taken at the end of a period is drawn on the next period's point (the first one the
    new model serves, or the one the rejected challenger would have served).
    """
    from matplotlib.figure import Figure  # the OO API renders with Agg and keeps no global state

    fig = Figure(figsize=(11, 5.2), layout="constrained")
    ax = fig.subplots()
    for n, run in enumerate(result.runs):
        xs = pd.DatetimeIndex([p.start for p in run.periods]).tz_convert(None).to_numpy()
        ys = [float("nan") if p.metric is None else p.metric for p in run.periods]
        color = f"C{n}"
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.4, color=color, label=run.policy.name)
        for i, p in enumerate(run.periods[:-1]):
            if p.retrain is None:
                continue
            x, y = xs[i + 1 : i + 2], [ys[i + 1]]
            if p.promoted:
                ax.scatter(x, y, marker="^", s=70, color="red" if p.bad_promotion else color,
                           edgecolors="black", linewidths=0.6, zorder=4)
            else:
                ax.scatter(x, y, marker="x", s=40, color=color, zorder=4)
    ax.scatter([], [], marker="^", color="grey", edgecolors="black", label="promoted (red: bad)")
    ax.scatter([], [], marker="x", color="grey", label="retrained, not promoted")
    ax.set_ylabel(result.metric.upper())
    ax.set_title(f"{result.metric.upper()} per {result.period}: {result.history.get('source', '')}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def render_estimate_png(result: BacktestResult, path: Path) -> Path:
    """One panel per policy: the realized metric per period against the label-free view of it.

    Binary: the estimated AUC with the reference chunks' spread around it (shaded) and the alert
    threshold. Regression: the realized RMSE over the champion's validation RMSE, and the extrapolated
    share of inputs (right axis).
    """
    from matplotlib.figure import Figure

    runs = [r for r in result.runs if any(p.monitoring for p in r.periods)]
    fig = Figure(figsize=(11, 2.4 * max(len(runs), 1) + 0.6), layout="constrained")
    axes = fig.subplots(max(len(runs), 1), 1, sharex=True, squeeze=False)[:, 0]
    for ax, run in zip(axes, runs, strict=False):
        xs = pd.DatetimeIndex([p.start for p in run.periods]).tz_convert(None).to_numpy()

        def series(key: str, ps: list[PeriodRecord] = run.periods) -> list[float]:
            return [float("nan") if p.monitoring.get(key) is None else float(p.monitoring[key]) for p in ps]

        real = [float("nan") if p.metric is None else p.metric for p in run.periods]
        if result.higher_is_better:
            est, ref = series("estimated_auc"), series("reference_estimated_auc")
            lo, hi = series("estimated_auc_lower"), series("estimated_auc_upper")
            ax.plot(xs, real, marker="o", markersize=3, label="realized AUC")
            ax.plot(xs, est, marker="s", markersize=3, linestyle="--", label="estimated AUC")
            ax.fill_between(xs, [e - (r - a) for e, r, a in zip(est, ref, lo, strict=True)],
                            [e + (b - r) for e, r, b in zip(est, ref, hi, strict=True)], alpha=0.2,
                            label="reference chunks' spread")
            ax.plot(xs, series("estimated_auc_threshold"), linestyle=":", color="grey", label="alert below")
            ax.set_ylabel("AUC")
        else:
            base = series("baseline_rmse")
            ratio = [r / b if b and b == b else float("nan") for r, b in zip(real, base, strict=True)]
            ax.plot(xs, ratio, marker="o", markersize=3, label="realized RMSE / baseline")
            ax.set_ylabel("RMSE / baseline")
            twin = ax.twinx()
            twin.plot(xs, series("out_of_range_share"), color="C1", marker="s", markersize=3, linestyle="--",
                      label="out of range (right)")
            twin.set_ylabel("out of range")
            twin.legend(loc="upper right", fontsize=7)
        ax.set_title(run.policy.name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def decision_rows(result: BacktestResult) -> list[dict[str, str]]:
    """Every retrain of every policy: trigger, windows, outcome, the first reason."""
    rows = []
    for run in result.runs:
        for p in run.periods:
            r = p.retrain
            if r is None:
                continue
            rows.append({"policy": run.policy.name, "after period": p.start[:10], "trigger": r.trigger,
                         "train": f"{r.windows.get('train_from', '')[:10]} .. {r.windows.get('train_to', '')[:10]}",
                         "evaluate": f"{r.windows.get('eval_from', '')[:10]} .. {r.windows.get('eval_to', '')[:10]}",
                         "challenger": r.challenger or "-", "outcome": r.outcome,
                         "bad": "yes" if p.bad_promotion else ("" if p.bad_promotion is None else "no"),
                         "why": "; ".join(r.reasons)[:300]})
    return rows


def render_html(result: BacktestResult, path: Path, png_name: str = PNG_NAME) -> Path:
    data = result.to_dict()
    settings = [{"setting": k, "value": json.dumps(v)} for k, v in sorted(data["settings"].items())]
    history = [{"field": k, "value": json.dumps(v) if not isinstance(v, str) else v}
               for k, v in data["history"].items()]
    every = ADVERB.get(result.period, result.period)
    estimate_note = (
        "the AUC estimated from the serving model's calibrated scores; <i>covered</i> when the realized AUC "
        "lies within the spread of the estimate over the reference's chunks, shifted to the estimate. "
        if result.higher_is_better else "")
    estimate_note += ("<i>out of range</i>: the share of inputs (weighted by gain importance) outside the "
                      "training range; <i>drifted importance</i>: the importance of the features past their "
                      "learned drift thresholds.")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>retrain backtest</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:1.5em}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}}th{{background:#eee}}</style></head><body>
<h1>Backtest of retraining policies</h1>
<p>{html.escape(str(data['history']['source']))}: {data['history']['rows']:,} rows, {every} periods;
initial model {html.escape(result.initial['name'])} trained on {html.escape(result.initial['train_from'][:10])}
.. {html.escape(result.initial['train_to'][:10])}. Metric: {result.metric.upper()} on each period's labels.</p>
<img src="{html.escape(png_name)}" alt="metric per period" style="max-width:100%">
<h2>Totals</h2>{html_table(summary_rows(result), "(none)")}
<p>{html.escape(result.means_note() + overrides_note(result))}.</p>
<h2>Per period</h2><p>A alert, R retrained (r refused or failed), P promoted, ! bad promotion (worse than the
replaced champion by more than {result.bad_margin:g} on the next period; not judged on a short period).</p>
{html_table(period_rows(result), "(none)")}
<h2>Retrains and decisions</h2>{html_table(decision_rows(result), "(none)")}
<h2>Without labels: the estimate against the realized metric</h2>
<p>What monitoring knew of each period before its labels: {estimate_note}</p>
<img src="{html.escape(ESTIMATE_PNG_NAME)}" alt="estimate per period" style="max-width:100%">
{html_table(estimate_rows(result), "(none)")}
<h2>Data</h2>{html_table(history, "(none)")}
<h2>Settings (deploy these unchanged)</h2>{html_table(settings, "(none)")}
<p>Generated {datetime.now(UTC).isoformat(timespec='seconds')}.</p></body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path


def write_report(result: BacktestResult, reports_dir: Path, stamp: str | None = None) -> Path:
    """`reports_dir/backtest-<timestamp>/` with index.html, backtest.png and result.json; returns the HTML."""
    stamp = stamp or datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = reports_dir / f"backtest-{stamp}"
    target.mkdir(parents=True, exist_ok=False)
    render_png(result, target / PNG_NAME)
    render_estimate_png(result, target / ESTIMATE_PNG_NAME)
    (target / JSON_NAME).write_text(json.dumps(result.to_dict(), indent=1))
    return render_html(result, target / HTML_NAME)
