"""The evaluator's gates for a regression challenger: the same decision rules as the binary gates,
on a loss instead of AUC.

- improvement: paired bootstrap of the per-row loss difference (squared error for RMSE, absolute
  error for MAE); the one-sided lower bound of the champion's loss minus the challenger's must clear
  `gate_improvement_margin`;
- slices: no slice with at least `gate_slice_min_rows` rows may get worse by more than
  `gate_slice_tolerance` of the champion's loss there (relative: losses have the label's units);
- latency, model size and feature-service compatibility as for any model (`gates.serving_gates`).
There is no absolute floor: a regression loss has no scale-free minimum quality.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from retrain.gates import (
    Decision,
    GateConfig,
    GateResult,
    ServingStats,
    SliceResult,
    conclude,
    serving_gates,
    skipped,
    slice_masks,
)

LOSSES = ("rmse", "mae")


def row_loss(metric: str, y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-row loss whose mean the metric is built on (squared error for RMSE, absolute for MAE)."""
    if metric not in LOSSES:
        raise ValueError(f"gate_regression_metric: {metric!r} is not one of {', '.join(LOSSES)}")
    err = pred - y
    return np.asarray(err**2 if metric == "rmse" else np.abs(err), dtype="float64")


def summarize(metric: str, loss: np.ndarray) -> float:
    """The metric from per-row losses."""
    return float(np.sqrt(loss.mean()) if metric == "rmse" else loss.mean())


def improvement_gate(gain: np.ndarray, metric: str, config: GateConfig) -> tuple[GateResult, dict[str, float]]:
    """Paired bootstrap of the mean loss gain (champion loss - challenger loss, per row)."""
    rng = np.random.default_rng(config.seed)
    diffs = np.empty(config.bootstrap_resamples)
    for lo in range(0, config.bootstrap_resamples, 100):
        k = min(100, config.bootstrap_resamples - lo)
        diffs[lo:lo + k] = gain[rng.integers(0, gain.size, size=(k, gain.size))].mean(axis=1)
    lower = float(np.quantile(diffs, 1.0 - config.confidence))
    upper = float(np.quantile(diffs, config.confidence))
    ok = lower > config.improvement_margin
    unit = "squared error" if metric == "rmse" else "absolute error"
    detail = (f"mean {unit} gain {float(gain.mean()):+.4g}, {config.confidence:.0%} one-sided lower bound "
              f"{lower:+.4g} {'>' if ok else '<='} margin {config.improvement_margin:+.4g} "
              f"({config.bootstrap_resamples} paired resamples)")
    stats = {"observed": float(gain.mean()), "mean": float(diffs.mean()), "lower": lower, "upper": upper,
             "resamples": float(config.bootstrap_resamples), "confidence": config.confidence}
    return GateResult("improvement", ok, lower, config.improvement_margin, detail), stats


def slice_results(metric: str, loss_a: np.ndarray, loss_b: np.ndarray, slices: Mapping[str, npt.ArrayLike],
                  config: GateConfig) -> list[SliceResult]:
    """The metric per slice value with enough rows; delta is the relative gain (negative = worse)."""
    out: list[SliceResult] = []
    for name, count, mask in slice_masks(slices, config.slice_min_rows):
        ma, mb = summarize(metric, loss_a[mask]), summarize(metric, loss_b[mask])
        delta = (mb - ma) / mb if mb > 0 else 0.0
        out.append(SliceResult(name, count, ma, mb, delta, delta < -config.slice_tolerance))
    return out


def slice_gate(results: list[SliceResult], metric: str, config: GateConfig) -> GateResult:
    """No qualifying slice may lose more than the tolerance (relative to the champion's loss there)."""
    if not results:
        return skipped("slices", f"no slice has >= {config.slice_min_rows} rows")
    worst = min(results, key=lambda r: r.delta)
    bad = [r for r in results if r.regressed]
    detail = (f"{len(results)} slices checked; worst {worst.slice} {metric} {worst.challenger:.4g} vs champion "
              f"{worst.champion:.4g} ({worst.delta:+.2%}, n={worst.n}); tolerance -{config.slice_tolerance:.2%}")
    if bad:
        detail += "; regressed: " + ", ".join(f"{r.slice} {r.delta:+.2%}" for r in bad[:5])
    return GateResult("slices", not bad, worst.delta, -config.slice_tolerance, detail)


def _summary(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    err = pred - y
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err))),
            "mean_predicted": float(pred.mean()), "observed_mean": float(y.mean()), "n": int(y.size)}


def decide_regression(
    y: npt.ArrayLike,
    challenger: npt.ArrayLike,
    champion: npt.ArrayLike | None = None,
    *,
    config: GateConfig,
    metric: str = "rmse",
    slices: Mapping[str, npt.ArrayLike] | None = None,
    serving: ServingStats | None = None,
    feature_services: tuple[str, str] | None = None,
    migration: str | None = None,
) -> Decision:
    """Every gate for a regression challenger, and the decision (a first model: no gate can fail)."""
    yv = np.asarray(y, dtype="float64")
    a = np.asarray(challenger, dtype="float64")
    if a.shape != yv.shape or not np.isfinite(yv).all() or not np.isfinite(a).all():
        raise ValueError("regression gates: labels and challenger predictions must be finite and of one length")
    loss_a = row_loss(metric, yv, a)
    result_metrics: dict[str, Any] = {"metric": metric, "challenger": _summary(yv, a)}
    gates = [skipped("floor", "regression: no absolute floor")]
    slice_rows: list[SliceResult] = []
    if champion is None:
        why = "no champion yet: absolute gates decide"
        gates += [skipped(n, why) for n in ("improvement", "slices", "latency", "model_size", "compatibility")]
    else:
        b = np.asarray(champion, dtype="float64")
        if b.shape != yv.shape:
            raise ValueError("champion predictions and labels must have the same length")
        loss_b = row_loss(metric, yv, b)
        result_metrics["champion"] = _summary(yv, b)
        gate, stats = improvement_gate(loss_b - loss_a, metric, config)
        result_metrics["bootstrap"] = {"metric": metric, **stats}
        gates.append(gate)
        slice_rows = slice_results(metric, loss_a, loss_b, slices or {}, config)
        gates.append(slice_gate(slice_rows, metric, config) if slices else skipped("slices", "no slice columns"))
        gates += serving_gates(config, serving, feature_services, migration)
    return conclude(gates, result_metrics, slice_rows, serving)
