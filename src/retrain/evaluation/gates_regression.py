"""The evaluator's gates for a regression challenger: the same decision rules as the binary gates,
on a loss instead of AUC.

- improvement: paired bootstrap (rows, or whole `blocks` such as days) of the per-row loss difference
  (squared error for RMSE, absolute error for MAE); the one-sided lower bound of the champion's loss
  minus the challenger's must clear `gate_improvement_margin`;
- slices: no slice with at least `gate_slice_min_rows` rows may be significantly worse (one-sided
  bootstrap per slice, Holm across slices) by more than `gate_slice_tolerance` of the champion's
  loss there (relative: losses have the label's units);
- latency, model size and feature-service compatibility as for any model (`gates.serving_gates`).
There is no absolute floor: a regression loss has no scale-free minimum quality.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from retrain.evaluation.gates import (
    Decision,
    FloatArray,
    GateConfig,
    GateResult,
    ServingStats,
    SliceResult,
    Statistic,
    block_codes,
    bootstrap_stats,
    bounds,
    conclude,
    count_blocks,
    holm_slices,
    mean_gain,
    paired_bootstrap,
    resampled,
    serving_gates,
    skipped,
    slice_gate_detail,
    slice_masks,
    slice_test,
    too_few_blocks,
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


def improvement_gate(gain: np.ndarray, metric: str, config: GateConfig,
                     blocks: npt.ArrayLike | None = None) -> tuple[GateResult, dict[str, float]]:
    """Paired bootstrap (rows, or whole `blocks`) of the mean loss gain (champion loss - challenger loss, per row)."""
    gain = np.asarray(gain, dtype="float64")
    n_blocks = count_blocks(blocks, gain.size)
    if n_blocks is not None and n_blocks < config.min_blocks:
        return too_few_blocks(n_blocks, config), {}
    diffs = paired_bootstrap(mean_gain(gain), gain.size, blocks, resamples=config.bootstrap_resamples,
                             seed=config.seed)
    valid, lower, upper = bounds(diffs, config.confidence)
    ok = lower > config.improvement_margin
    unit = "squared error" if metric == "rmse" else "absolute error"
    detail = (f"mean {unit} gain {float(gain.mean()):+.4g}, {config.confidence:.0%} one-sided lower bound "
              f"{lower:+.4g} {'>' if ok else '<='} margin {config.improvement_margin:+.4g} "
              f"({resampled(valid.size, n_blocks)})")
    stats = bootstrap_stats(float(gain.mean()), valid, lower, upper, config, n_blocks)
    return GateResult("improvement", ok, lower, config.improvement_margin, detail), stats


def relative_gain(metric: str, loss_a: np.ndarray, loss_b: np.ndarray) -> Statistic:
    """Per resample, (champion metric - challenger metric) / champion metric (0 when the champion is perfect)."""

    def gain(w: FloatArray) -> FloatArray:
        total = w.sum(axis=1)
        ma, mb = (w @ loss_a) / total, (w @ loss_b) / total
        if metric == "rmse":
            ma, mb = np.sqrt(ma), np.sqrt(mb)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(np.where(mb > 0, (mb - ma) / np.where(mb > 0, mb, 1.0), 0.0), dtype="float64")

    return gain


def slice_results(metric: str, loss_a: np.ndarray, loss_b: np.ndarray, slices: Mapping[str, npt.ArrayLike],
                  config: GateConfig, blocks: npt.ArrayLike | None = None) -> list[SliceResult]:
    """The metric per slice value with enough rows; delta is the relative gain (negative = worse), with its
    paired bootstrap (rows, or whole `blocks`), one-sided p-value and Holm verdict. Slices spread over fewer
    than `min_blocks` blocks are skipped."""
    keys = None if blocks is None else np.asarray(blocks)
    if keys is not None:
        block_codes(keys, loss_a.size)
    out: list[SliceResult] = []
    for name, count, mask in slice_masks(slices, config.slice_min_rows):
        sb = None if keys is None else keys[mask]
        n_blocks = count_blocks(sb, count)
        if n_blocks is not None and n_blocks < config.min_blocks:
            continue
        ma, mb = summarize(metric, loss_a[mask]), summarize(metric, loss_b[mask])
        delta = (mb - ma) / mb if mb > 0 else 0.0
        diffs = paired_bootstrap(relative_gain(metric, loss_a[mask], loss_b[mask]), count, sb,
                                 resamples=config.bootstrap_resamples, seed=config.seed)
        out.append(slice_test(name, count, ma, mb, delta, diffs, config, n_blocks))
    return holm_slices(out, config)


def slice_gate(results: list[SliceResult], metric: str, config: GateConfig) -> GateResult:
    """No slice may be significantly worse than the tolerance (relative to the champion's loss there)."""
    if not results:
        return skipped("slices", f"no slice has >= {config.slice_min_rows} rows")
    return slice_gate_detail(results, config, "+.2%", f"relative {metric}")


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
    blocks: npt.ArrayLike | None = None,
) -> Decision:
    """Every gate for a regression challenger, and the decision (a first model: no gate can fail).

    `blocks` (one label per row, e.g. `gates.day_blocks(event_times)`) makes the bootstraps resample whole blocks.
    """
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
        gate, stats = improvement_gate(loss_b - loss_a, metric, config, blocks)
        result_metrics["bootstrap"] = {"metric": metric, **stats}
        gates.append(gate)
        slice_rows = slice_results(metric, loss_a, loss_b, slices or {}, config, blocks)
        gates.append(slice_gate(slice_rows, metric, config) if slices else skipped("slices", "no slice columns"))
        gates += serving_gates(config, serving, feature_services, migration)
    return conclude(gates, result_metrics, slice_rows, serving)
