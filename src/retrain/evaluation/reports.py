"""Evaluation reports people look at: a PNG (ROC curves, or predicted vs observed for regression, and
per-slice deltas), an HTML page, and the Prefect markdown + table artifacts that link to it when the
evaluation runs inside a flow run.
"""

from __future__ import annotations

import html
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrain.core import metrics
from retrain.evaluation.gates import Decision

log = logging.getLogger(__name__)

PNG_NAME = "evaluation.png"
HTML_NAME = "index.html"
METRIC_ROWS = ("auc", "log_loss", "brier", "accuracy", "ece", "predicted_rate", "observed_rate", "n")
REGRESSION_ROWS = ("rmse", "mae", "mean_predicted", "observed_mean", "n")
SCATTER_POINTS = 5000  # predicted-vs-observed points drawn per model (a seeded sample of the window)


def is_regression(decision: Decision) -> bool:
    """The decision of the regression gates (its metrics carry RMSE, not AUC)."""
    return "rmse" in decision.metrics.get("challenger", {})


@dataclass(frozen=True)
class ReportData:
    """What a report shows: who was compared, on which window, the labels, both score arrays."""

    model_name: str
    challenger: str
    champion: str | None
    window_from: str
    window_to: str
    y: np.ndarray
    challenger_scores: np.ndarray
    champion_scores: np.ndarray | None
    decision: Decision


def render_png(data: ReportData, path: Path) -> Path:
    """ROC curves of both models and the per-slice metric deltas (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    slices = sorted(data.decision.slices, key=lambda s: s.delta)
    fig, (ax_roc, ax_sl) = plt.subplots(1, 2, figsize=(13, max(4.5, 0.25 * len(slices) + 1.5)))
    try:
        models = [(label, scores) for label, scores in ((data.challenger, data.challenger_scores),
                                                         (data.champion, data.champion_scores))
                  if scores is not None and label is not None]
        if is_regression(data.decision):
            _scatter(ax_roc, data.y, models)
        else:
            for label, scores in models:
                fpr, tpr = metrics.roc_curve(data.y, scores)
                ax_roc.plot(fpr, tpr, label=f"{label} (AUC {metrics.roc_auc(data.y, scores):.4f})")
            ax_roc.plot([0, 1], [0, 1], ls=":", c="grey")
            ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, evaluation window")
            ax_roc.legend(loc="lower right")
        if slices:
            tol = next((g.threshold for g in data.decision.gates if g.name == "slices"), None)
            colors = ["tab:red" if s.regressed else "tab:green" for s in slices]
            ax_sl.barh([s.slice for s in slices], [s.delta for s in slices], color=colors)
            if tol is not None:
                ax_sl.axvline(tol, ls="--", c="tab:red", lw=1)
            ax_sl.axvline(0, c="black", lw=0.8)
            metric_name = data.decision.metrics.get("bootstrap", {}).get("metric", "metric")
            ax_sl.set(title=f"per-slice {metric_name} change (challenger vs champion)", xlabel="improvement")
            ax_sl.tick_params(axis="y", labelsize=7)
        else:
            ax_sl.text(0.5, 0.5, "no slice comparison\n(no champion or no slice large enough)",
                       ha="center", va="center")
            ax_sl.set_axis_off()
        fig.tight_layout()
        fig.savefig(path, dpi=90)
    finally:
        plt.close(fig)
    return path


def _scatter(ax: Any, y: np.ndarray, models: list[tuple[str, np.ndarray]]) -> None:
    """Predicted vs observed for each model (a seeded sample), the diagonal, RMSE in the legend."""
    observed = np.asarray(y, dtype="float64")
    pick = np.random.default_rng(0).permutation(observed.size)[:SCATTER_POINTS]
    for label, pred in models:
        p = np.asarray(pred, dtype="float64")
        rmse = float(np.sqrt(np.mean((p - observed) ** 2)))
        ax.scatter(observed[pick], p[pick], s=4, alpha=0.35, label=f"{label} (RMSE {rmse:.4g})")
    lo, hi = float(np.nanmin(observed)), float(np.nanmax(observed))
    ax.plot([lo, hi], [lo, hi], ls=":", c="grey")
    ax.set(xlabel="observed", ylabel="predicted", title="predicted vs observed, evaluation window")
    ax.legend(loc="upper left")


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if np.isnan(value) else f"{value:.4f}"
    return str(value)


def metrics_table(decision: Decision) -> list[dict[str, str]]:
    """Metrics side by side: one row per metric, a column per model."""
    chal = decision.metrics.get("challenger", {})
    champ = decision.metrics.get("champion", {})
    rows = REGRESSION_ROWS if is_regression(decision) else METRIC_ROWS
    return [{"metric": m, "challenger": _fmt(chal.get(m)), "champion": _fmt(champ.get(m))} for m in rows]


def gates_table(decision: Decision) -> list[dict[str, str]]:
    return [{"gate": g.name, "passed": "skipped" if g.skipped else ("yes" if g.passed else "NO"),
             "value": _fmt(g.value), "threshold": _fmt(g.threshold), "detail": g.detail} for g in decision.gates]


def html_table(rows: list[dict[str, str]], empty: str = "none") -> str:
    """An escaped HTML table of uniform dict rows (used by the evaluation and backtest reports)."""
    if not rows:
        return f"<p>{html.escape(empty)}</p>"
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(data: ReportData, path: Path, evaluation_id: int) -> Path:
    """A self-contained page (the PNG sits next to it)."""
    d = data.decision
    slices = [{"slice": s.slice, "n": str(s.n), "challenger": _fmt(s.challenger), "champion": _fmt(s.champion),
               "delta": f"{s.delta:+.4f}", "regressed": "YES" if s.regressed else "no"}
              for s in sorted(d.slices, key=lambda s: s.delta)]
    verdict = d.decision.upper()
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>Evaluation {evaluation_id}: {html.escape(data.challenger)} – {verdict}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}.promote{{color:#080}}.reject{{color:#b00}}</style>
</head><body>
<h1>Evaluation {evaluation_id} <span class="{d.decision}">{verdict}</span></h1>
<p>Model <b>{html.escape(data.model_name)}</b>: challenger <b>{html.escape(data.challenger)}</b> vs champion
<b>{html.escape(data.champion or "none")}</b> on rows from {html.escape(data.window_from)} to
{html.escape(data.window_to)} ({len(data.y):,} labelled rows).</p>
<h2>Reasons</h2><ul>{"".join(f"<li>{html.escape(r)}</li>" for r in d.reasons)}</ul>
<h2>Gates</h2>{html_table(gates_table(d))}
<h2>Metrics</h2>{html_table(metrics_table(d))}
<img src="{PNG_NAME}" alt="both models on the window, and per-slice deltas" style="max-width:100%">
<h2>Slices</h2>{html_table(slices)}
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path


def markdown_summary(data: ReportData, evaluation_id: int, html_path: Path | None) -> str:
    """The Prefect markdown artifact: verdict, gates with numbers, metrics, link to the HTML report."""
    d = data.decision
    lines = [f"# Evaluation {evaluation_id}: **{d.decision.upper()}**", "",
             f"Challenger `{data.challenger}` vs champion `{data.champion or 'none'}`, window "
             f"{data.window_from} → {data.window_to}, {len(data.y):,} labelled rows.", ""]
    lines += ["| gate | passed | value | threshold | detail |", "|---|---|---|---|---|"]
    lines += [f"| {r['gate']} | {r['passed']} | {r['value']} | {r['threshold']} | {r['detail']} |"
              for r in gates_table(d)]
    lines += ["", "| metric | challenger | champion |", "|---|---|---|"]
    lines += [f"| {r['metric']} | {r['challenger']} | {r['champion']} |" for r in metrics_table(d)]
    if html_path is not None:
        lines += ["", f"Full report: [{html_path}]({html_path.resolve().as_uri()})"]
    return "\n".join(lines)


def in_prefect_run() -> bool:
    """True inside a Prefect flow or task run (never imports Prefect when it is not loaded)."""
    if "prefect" not in sys.modules:
        return False
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def publish_artifacts(data: ReportData, evaluation_id: int, html_path: Path | None) -> bool:
    """Create the markdown and table artifacts when running in a Prefect run; False otherwise."""
    if not in_prefect_run():
        log.info("not in a Prefect run: evaluation %s artifacts not published", evaluation_id)
        return False
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = f"evaluation-{evaluation_id}"
    create_markdown_artifact(markdown=markdown_summary(data, evaluation_id, html_path), key=key,
                             description=f"{data.challenger}: {data.decision.decision}")
    table = [{"row": f"gate {r['gate']}", "challenger": r["value"], "champion": "", "threshold": r["threshold"],
              "result": r["passed"], "detail": r["detail"]} for r in gates_table(data.decision)]
    table += [{"row": f"metric {r['metric']}", "challenger": r["challenger"], "champion": r["champion"],
               "threshold": "", "result": "", "detail": ""} for r in metrics_table(data.decision)]
    create_table_artifact(table=table, key=f"{key}-table",
                          description=f"gates and metrics; report {html_path or 'not written'}")
    return True
