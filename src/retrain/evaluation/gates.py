"""Promotion gates and the decision: arrays in, `GateResult`s and a `Decision` out.

Pure on purpose (no database, no models, no clock): the evaluator and the backtest call `decide`
with the same arrays and get the same answer. Each gate reports its name, pass/fail, the measured
value, the threshold it was held to and a one-line detail with the numbers behind it.

The bootstraps are paired (both models scored on the same resampled rows) and resample either rows or,
when the caller passes `blocks` (one label per row, e.g. `day_blocks(event_times)`), whole blocks:
rows that share a day share its weather, so a row bootstrap understates the noise several-fold.
Slices are tested one-sided per slice and corrected across slices with Holm's step-down procedure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from retrain.core import metrics

if TYPE_CHECKING:
    from retrain.core.config import Settings


@dataclass(frozen=True)
class GateConfig:
    """Gate thresholds (the `gate_*` settings)."""

    auc_floor: float = 0.60
    metric: str = "auc"
    improvement_margin: float = 0.0
    bootstrap_resamples: int = 1000
    confidence: float = 0.95
    slice_min_rows: int = 500
    slice_tolerance: float = 0.02
    latency_factor: float = 3.0
    size_factor: float = 5.0
    decision_threshold: float = 0.5
    seed: int = 42
    block_hours: float = 24.0  # the block unit callers pass to `day_blocks` (a day: rows of one day share its weather)
    min_blocks: int = 5  # fewer distinct blocks than this: no honest interval, the improvement gate fails

    def __post_init__(self) -> None:
        if self.metric not in metrics.HIGHER_IS_BETTER:
            raise ValueError(f"gate_metric: {self.metric!r} is not one of auc, log_loss, brier")
        if self.bootstrap_resamples < 1000:
            raise ValueError(f"gate_bootstrap_resamples: {self.bootstrap_resamples} must be at least 1000")
        if not 0.5 < self.confidence < 1.0:
            raise ValueError(f"gate_confidence: {self.confidence} must be in (0.5, 1)")
        if self.slice_tolerance < 0 or self.latency_factor <= 0 or self.size_factor <= 0:
            raise ValueError("gate_slice_tolerance, gate_latency_factor, gate_size_factor: must be positive")
        if self.block_hours <= 0 or self.min_blocks < 2:
            raise ValueError(f"gate_block_hours: {self.block_hours} must be positive, gate_min_blocks: "
                             f"{self.min_blocks} at least 2")

    @property
    def alpha(self) -> float:
        """The one-sided error rate of every bootstrap test (1 - confidence)."""
        return 1.0 - self.confidence

    @classmethod
    def from_settings(cls, settings: Settings) -> GateConfig:
        return cls(
            auc_floor=settings.gate_auc_floor,
            metric=settings.gate_metric,
            improvement_margin=settings.gate_improvement_margin,
            bootstrap_resamples=settings.gate_bootstrap_resamples,
            confidence=settings.gate_confidence,
            slice_min_rows=settings.gate_slice_min_rows,
            slice_tolerance=settings.gate_slice_tolerance,
            latency_factor=settings.gate_latency_factor,
            size_factor=settings.gate_size_factor,
            decision_threshold=settings.decision_threshold,
            seed=settings.seed,
            # not Settings fields yet: read them once they exist, the defaults until then
            block_hours=settings.gate_block_hours,
            min_blocks=settings.gate_min_blocks,
        )


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict with its numbers."""

    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: _finite_or_none(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class SliceResult:
    """The gate metric of both models on one slice (e.g. store=north)."""

    slice: str
    n: int
    challenger: float
    champion: float
    delta: float  # improvement-signed: negative means the challenger is worse
    regressed: bool  # worse than the tolerance, significantly after Holm's correction across slices
    lower: float = math.nan  # bootstrap (1 - confidence) quantile of delta
    upper: float = math.nan  # bootstrap confidence quantile of delta
    p_value: float = math.nan  # one-sided: share of resamples where delta >= -tolerance
    p_adjusted: float = math.nan  # Holm-adjusted across the slices checked together
    blocks: int | None = None  # distinct blocks resampled (None: rows were resampled)

    def to_dict(self) -> dict[str, Any]:
        return {k: _finite_or_none(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class ServingStats:
    """Single-row latency (median ms) and model size of each model."""

    challenger_latency_ms: float
    challenger_size_bytes: int
    champion_latency_ms: float | None = None
    champion_size_bytes: int | None = None


@dataclass(frozen=True)
class Decision:
    """promote or reject, why, every gate, and the metrics behind them."""

    decision: str
    reasons: list[str]
    gates: list[GateResult]
    metrics: dict[str, Any]
    slices: list[SliceResult] = field(default_factory=list)

    @property
    def promote(self) -> bool:
        return self.decision == "promote"

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "reasons": list(self.reasons),
                "gates": [g.to_dict() for g in self.gates], "metrics": _clean(self.metrics),
                "slices": [s.to_dict() for s in self.slices]}


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def _clean(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return _finite_or_none(value)


# ---------------------------------------------------------------------------------- bootstrap

FloatArray = npt.NDArray[np.float64]
CHUNK_CELLS = 250_000
Statistic = Callable[[FloatArray], FloatArray]
"""Maps a (resamples, rows) matrix of resample weights (how often each row was drawn) to one gain per resample."""


def day_blocks(times: npt.ArrayLike | pd.Series | pd.Index, unit_hours: float = 24.0) -> npt.NDArray[np.int64]:
    """Block label per row: which `unit_hours`-long UTC period (days by default) holds its event time.

    Naive times are taken as UTC. Pass the result as `blocks` to the gates.
    """
    if unit_hours <= 0:
        raise ValueError(f"unit_hours: {unit_hours} must be positive")
    values = times if isinstance(times, pd.Series | pd.Index) else pd.Series(np.asarray(times))
    stamps = pd.DatetimeIndex(pd.to_datetime(values, utc=True))
    if stamps.hasnans:
        raise ValueError("day_blocks: every row needs an event time")
    periods = (stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(hours=unit_hours)
    return np.asarray(periods, dtype=np.int64)


def block_codes(blocks: npt.ArrayLike, n: int) -> tuple[npt.NDArray[np.intp], int]:
    """Each row's block as 0..B-1, and B (the number of distinct blocks)."""
    keys = np.asarray(blocks)
    if keys.shape != (n,):
        raise ValueError(f"blocks: need one block label per row ({n}), got shape {keys.shape}")
    if keys.dtype.kind == "f" and np.isnan(keys).any():
        raise ValueError("blocks: missing block labels")
    uniq, codes = np.unique(keys, return_inverse=True)
    return codes.astype(np.intp).reshape(n), int(uniq.size)


def count_blocks(blocks: npt.ArrayLike | None, n: int) -> int | None:
    """Distinct blocks among `n` rows, or None when rows are resampled."""
    return None if blocks is None else block_codes(blocks, n)[1]


def resample_weights(n: int, blocks: npt.ArrayLike | None = None, *, resamples: int, seed: int,
                     chunk: int | None = None) -> Iterator[FloatArray]:
    """Chunks of bootstrap weights, (k, n): how often each row is in each resample.

    Without blocks, n rows are drawn with replacement (the same draws as `metrics.paired_bootstrap`);
    with blocks, B whole blocks are drawn with replacement, so a resample keeps each block's rows together.
    Chunks hold at least 100 resamples and about `CHUNK_CELLS` weights (small slices go in one chunk).
    """
    if n < 1 or resamples < 1:
        raise ValueError("bootstrap: needs at least one row and one resample")
    codes, units = (None, n) if blocks is None else block_codes(blocks, n)
    chunk = chunk or max(100, CHUNK_CELLS // n)
    rng = np.random.default_rng(seed)
    for lo in range(0, resamples, chunk):
        k = min(chunk, resamples - lo)
        draws = rng.integers(0, units, size=(k, units))
        draws += (np.arange(k, dtype=draws.dtype) * units)[:, None]
        counts = np.bincount(draws.ravel(), minlength=k * units).reshape(k, units).astype("float64")
        yield counts if codes is None else counts[:, codes]


def paired_bootstrap(statistic: Statistic, n: int, blocks: npt.ArrayLike | None = None, *, resamples: int,
                     seed: int) -> FloatArray:
    """`statistic` on each paired resample (rows, or whole blocks when `blocks` is given); NaN where undefined."""
    return np.concatenate([statistic(w) for w in resample_weights(n, blocks, resamples=resamples, seed=seed)])


def mean_gain(gain: npt.ArrayLike) -> Statistic:
    """Resampled mean of a per-row gain (e.g. champion loss - challenger loss)."""
    g = np.asarray(gain, dtype="float64")
    return lambda w: np.asarray((w @ g) / w.sum(axis=1), dtype="float64")


def weighted_auc(y: metrics.BoolArray, scores: FloatArray) -> Statistic:
    """AUC of each weighted resample (ties count half); NaN when a resample holds one class only."""
    uniq, group = np.unique(scores, return_inverse=True)
    keys = (2 * group.reshape(-1) + y).astype(np.intp)
    groups = int(uniq.size)

    def auc(w: FloatArray) -> FloatArray:
        k = w.shape[0]
        flat = keys[None, :] + (np.arange(k, dtype=np.intp) * 2 * groups)[:, None]
        counts = np.bincount(flat.ravel(), weights=w.ravel(), minlength=k * 2 * groups).reshape(k, groups, 2)
        neg, pos = counts[:, :, 0], counts[:, :, 1]
        below = 2.0 * np.cumsum(neg, axis=1) - neg  # 2 * (negatives strictly below) + tied negatives
        numer = np.einsum("ij,ij->i", pos, below) / 2.0
        denom = pos.sum(axis=1) * neg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, numer / np.where(denom > 0, denom, 1.0), np.nan)

    return auc


def metric_gain(name: str, y: metrics.BoolArray, challenger: FloatArray, champion: FloatArray) -> Statistic:
    """Improvement-signed metric difference per resample (AUC: challenger - champion; losses: champion - challenger)."""
    if name == "auc":
        auc_a, auc_b = weighted_auc(y, challenger), weighted_auc(y, champion)
        return lambda w: auc_a(w) - auc_b(w)
    if name == "log_loss":
        pa, pb = np.clip(challenger, metrics.EPS, 1 - metrics.EPS), np.clip(champion, metrics.EPS, 1 - metrics.EPS)
        return mean_gain(np.where(y, np.log(pa) - np.log(pb), np.log1p(-pa) - np.log1p(-pb)))
    if name == "brier":
        return mean_gain((champion - y) ** 2 - (challenger - y) ** 2)
    raise ValueError(f"metric: {name!r} is not one of auc, log_loss, brier")


def bounds(diffs: FloatArray, confidence: float) -> tuple[FloatArray, float, float]:
    """The defined resamples and their one-sided bounds: the (1 - confidence) and confidence quantiles."""
    valid = diffs[~np.isnan(diffs)]
    if valid.size == 0:
        return valid, math.nan, math.nan
    return valid, float(np.quantile(valid, 1.0 - confidence)), float(np.quantile(valid, confidence))


def holm(p_values: Sequence[float] | npt.ArrayLike, alpha: float) -> tuple[metrics.BoolArray, FloatArray]:
    """Holm-Bonferroni step-down: which hypotheses are rejected at family-wise level `alpha`, and the adjusted
    p-values (min(1, running max of (m - i) * p_(i)) in ascending order, mapped back to the input order)."""
    p = np.asarray(p_values, dtype="float64").reshape(-1)
    if np.isnan(p).any():
        raise ValueError("holm: p-values must not be NaN")
    m = p.size
    order = np.argsort(p, kind="mergesort")
    adjusted = np.empty(m, dtype="float64")
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return adjusted <= alpha, adjusted


def slice_test(name: str, n: int, challenger: float, champion: float, delta: float, diffs: FloatArray,
               config: GateConfig, blocks: int | None) -> SliceResult:
    """One slice's bootstrap bounds and one-sided p-value of "no worse than the tolerance" (before Holm).

    A small p-value is evidence that the challenger is worse than the champion by more than the tolerance.
    """
    valid, lower, upper = bounds(diffs, config.confidence)
    p = float(np.mean(valid >= -config.slice_tolerance)) if valid.size else 1.0
    return SliceResult(name, n, challenger, champion, delta, False, lower, upper, p, math.nan, blocks)


def holm_slices(results: list[SliceResult], config: GateConfig) -> list[SliceResult]:
    """Mark the slices whose regression beyond the tolerance stays significant after Holm at 1 - confidence."""
    if not results:
        return results
    rejected, adjusted = holm([r.p_value for r in results], config.alpha)
    return [replace(r, regressed=bool(bad), p_adjusted=float(adj))
            for r, bad, adj in zip(results, rejected, adjusted, strict=True)]


def describe_slice(r: SliceResult, fmt: str) -> str:
    """A slice's change, bootstrap bounds and Holm-adjusted p-value, numbers in `fmt` (e.g. "+.4f", "+.2%")."""
    return (f"{r.slice} {r.delta:{fmt}} (lower bound {r.lower:{fmt}}, upper {r.upper:{fmt}}, "
            f"Holm p {r.p_adjusted:.3g}, n={r.n})")


def slice_gate_detail(results: list[SliceResult], config: GateConfig, fmt: str, label: str) -> GateResult:
    """The slice gate over Holm-tested slices: fails only for significant regressions beyond the tolerance."""
    worst = min(results, key=lambda r: r.delta)
    bad = [r for r in results if r.regressed]
    unit = "rows" if results[0].blocks is None else "blocks"
    detail = (f"{len(results)} slices checked, {config.confidence:.0%} one-sided {unit} bootstrap, Holm at "
              f"alpha {config.alpha:.3g}; worst {label} change {describe_slice(worst, fmt)}; tolerance "
              f"{-config.slice_tolerance:{fmt}}")
    if bad:
        detail += "; significantly regressed: " + ", ".join(describe_slice(r, fmt) for r in bad[:5])
    return GateResult("slices", not bad, worst.delta, -config.slice_tolerance, detail)


# ------------------------------------------------------------------------------------- gates


def floor_gate(auc: float, floor: float) -> GateResult:
    """Absolute quality: the challenger's AUC must reach the floor."""
    ok = not math.isnan(auc) and auc >= floor
    return GateResult("auc_floor", ok, auc, floor, f"challenger AUC {auc:.4f} {'>=' if ok else '<'} floor {floor:.4f}")


def improvement_gate(y: npt.ArrayLike, challenger: npt.ArrayLike, champion: npt.ArrayLike,
                     config: GateConfig, blocks: npt.ArrayLike | None = None) -> tuple[GateResult, dict[str, float]]:
    """Paired bootstrap of the metric difference (rows, or whole `blocks`); the lower bound must clear the margin."""
    yb = metrics.as_labels(y)
    a, b = metrics.as_scores(challenger, "challenger"), metrics.as_scores(champion, "champion")
    if not (yb.size == a.size == b.size) or yb.size == 0:
        raise ValueError("improvement gate: labels and both score arrays must be non-empty and of one length")
    n_blocks = count_blocks(blocks, yb.size)
    if n_blocks is not None and n_blocks < config.min_blocks:
        return too_few_blocks(n_blocks, config), {}
    diffs = paired_bootstrap(metric_gain(config.metric, yb, a, b), yb.size, blocks,
                             resamples=config.bootstrap_resamples, seed=config.seed)
    valid, lower, upper = bounds(diffs, config.confidence)
    if valid.size == 0:
        return GateResult("improvement", False, None, config.improvement_margin,
                          "bootstrap undefined (one class in the window)"), {}
    observed = metrics.improvement(config.metric, metrics.metric(config.metric, yb, a),
                                   metrics.metric(config.metric, yb, b))
    ok = lower > config.improvement_margin
    stats = bootstrap_stats(observed, valid, lower, upper, config, n_blocks)
    detail = (f"{config.metric} improvement {observed:+.4f}, {config.confidence:.0%} one-sided lower bound "
              f"{lower:+.4f} {'>' if ok else '<='} margin {config.improvement_margin:+.4f} "
              f"({resampled(valid.size, n_blocks)})")
    return GateResult("improvement", ok, lower, config.improvement_margin, detail), stats


def too_few_blocks(n_blocks: int, config: GateConfig) -> GateResult:
    """The improvement gate when the window holds too few blocks for a block bootstrap to mean anything."""
    return GateResult("improvement", False, None, config.improvement_margin,
                      f"only {n_blocks} distinct blocks in the window; a block bootstrap needs at least "
                      f"{config.min_blocks} (gate_min_blocks): no honest interval, no promotion")


def bootstrap_stats(observed: float, valid: FloatArray, lower: float, upper: float, config: GateConfig,
                    n_blocks: int | None) -> dict[str, float]:
    """The numbers behind an improvement gate (`blocks` 0 means rows were resampled)."""
    return {"observed": observed, "mean": float(valid.mean()), "sd": float(valid.std(ddof=1)) if valid.size > 1
            else math.nan, "lower": lower, "upper": upper, "resamples": float(valid.size),
            "confidence": config.confidence, "blocks": float(n_blocks or 0)}


def resampled(valid: int, n_blocks: int | None) -> str:
    """How the bootstrap resampled, for gate details."""
    return f"{valid} paired resamples " + ("of rows" if n_blocks is None else f"of {n_blocks} blocks")


def slice_results(y: npt.ArrayLike, challenger: npt.ArrayLike, champion: npt.ArrayLike,
                  slices: Mapping[str, npt.ArrayLike], config: GateConfig,
                  blocks: npt.ArrayLike | None = None) -> list[SliceResult]:
    """Gate metric per slice value with at least `slice_min_rows` rows, each with its paired bootstrap (rows,
    or whole `blocks`), one-sided p-value and Holm verdict. Skipped: single-class slices (AUC) and slices
    spread over fewer than `min_blocks` blocks."""
    yb = metrics.as_labels(y)
    a, b = metrics.as_scores(challenger), metrics.as_scores(champion)
    keys = None if blocks is None else np.asarray(blocks)
    if keys is not None:
        block_codes(keys, yb.size)
    out: list[SliceResult] = []
    for name, count, mask in slice_masks(slices, config.slice_min_rows):
        ys = yb[mask]
        if config.metric == "auc" and (ys.all() or not ys.any()):
            continue
        sb = None if keys is None else keys[mask]
        n_blocks = count_blocks(sb, count)
        if n_blocks is not None and n_blocks < config.min_blocks:
            continue
        ma, mb = metrics.metric(config.metric, ys, a[mask]), metrics.metric(config.metric, ys, b[mask])
        delta = metrics.improvement(config.metric, ma, mb)
        diffs = paired_bootstrap(metric_gain(config.metric, ys, a[mask], b[mask]), count, sb,
                                 resamples=config.bootstrap_resamples, seed=config.seed)
        out.append(slice_test(name, count, ma, mb, delta, diffs, config, n_blocks))
    return holm_slices(out, config)


def slice_masks(slices: Mapping[str, npt.ArrayLike], min_rows: int) -> Iterator[tuple[str, int, np.ndarray]]:
    """(`column=value`, rows, row mask) for every slice value with at least `min_rows` rows."""
    for column, raw in slices.items():
        keys = np.asarray(raw).astype(str)
        values, counts = np.unique(keys, return_counts=True)
        for value, count in zip(values, counts, strict=True):
            if count >= min_rows:
                yield f"{column}={value}", int(count), keys == value


def slice_gate(results: list[SliceResult], config: GateConfig) -> GateResult:
    """No slice may be significantly worse than the tolerance (one-sided bootstrap per slice, Holm across)."""
    if not results:
        return GateResult("slices", True, None, -config.slice_tolerance,
                          f"no slice has >= {config.slice_min_rows} rows with both classes", skipped=True)
    return slice_gate_detail(results, config, "+.4f", config.metric)


def latency_gate(challenger_ms: float, champion_ms: float, factor: float) -> GateResult:
    """Single-row prediction latency within `factor` times the champion's."""
    ratio = challenger_ms / champion_ms if champion_ms > 0 else math.inf
    ok = ratio <= factor
    return GateResult("latency", ok, ratio, factor, f"single-row median {challenger_ms:.3f} ms vs champion "
                      f"{champion_ms:.3f} ms: {ratio:.2f}x (limit {factor:.2f}x)")


def size_gate(challenger_bytes: int, champion_bytes: int, factor: float) -> GateResult:
    """Model file size within `factor` times the champion's."""
    ratio = challenger_bytes / champion_bytes if champion_bytes > 0 else math.inf
    ok = ratio <= factor
    return GateResult("model_size", ok, ratio, factor, f"{challenger_bytes:,} bytes vs champion "
                      f"{champion_bytes:,}: {ratio:.2f}x (limit {factor:.2f}x)")


def compatibility_gate(challenger_service: str, champion_service: str, migration: str | None = None) -> GateResult:
    """Same feature service as the champion, or an explicit recorded migration."""
    if challenger_service == champion_service:
        return GateResult("compatibility", True, None, None, f"both use feature service {challenger_service}")
    if migration and migration.strip():
        return GateResult("compatibility", True, None, None, f"feature service {champion_service} -> "
                          f"{challenger_service}: migration recorded: {migration.strip()}")
    return GateResult("compatibility", False, None, None, f"feature service differs ({champion_service} -> "
                      f"{challenger_service}) and no migration was recorded")


def skipped(name: str, why: str) -> GateResult:
    return GateResult(name, True, None, None, f"skipped: {why}", skipped=True)


# ------------------------------------------------------------------------------------ decide


def decide(
    y: npt.ArrayLike,
    challenger: npt.ArrayLike,
    champion: npt.ArrayLike | None = None,
    *,
    config: GateConfig,
    slices: Mapping[str, npt.ArrayLike] | None = None,
    serving: ServingStats | None = None,
    feature_services: tuple[str, str] | None = None,
    migration: str | None = None,
    blocks: npt.ArrayLike | None = None,
) -> Decision:
    """Run every gate and decide. With no champion only the absolute gates decide.

    `serving` and `feature_services` (challenger, champion) are optional so the backtest, which has
    neither a serving path nor feature services, can reuse this unchanged. `blocks` (one label per row,
    e.g. `day_blocks(event_times, config.block_hours)`) makes the bootstraps resample whole blocks.
    """
    yb = metrics.as_labels(y)
    a = metrics.as_scores(challenger, "challenger")
    if a.size != yb.size:
        raise ValueError("challenger scores and labels must have the same length")
    result_metrics: dict[str, Any] = {"challenger": metrics.summary(yb, a, config.decision_threshold)}
    gates = [floor_gate(result_metrics["challenger"]["auc"], config.auc_floor)]
    slice_rows: list[SliceResult] = []
    if champion is None:
        why = "no champion yet: absolute gates decide"
        gates += [skipped(n, why) for n in ("improvement", "slices", "latency", "model_size", "compatibility")]
    else:
        b = metrics.as_scores(champion, "champion")
        if b.size != yb.size:
            raise ValueError("champion scores and labels must have the same length")
        result_metrics["champion"] = metrics.summary(yb, b, config.decision_threshold)
        gate, stats = improvement_gate(yb, a, b, config, blocks)
        result_metrics["bootstrap"] = {"metric": config.metric, **stats}
        gates.append(gate)
        slice_rows = slice_results(yb, a, b, slices or {}, config, blocks)
        gates.append(slice_gate(slice_rows, config) if slices else skipped("slices", "no slice columns given"))
        gates += serving_gates(config, serving, feature_services, migration)
    return conclude(gates, result_metrics, slice_rows, serving)


def serving_gates(config: GateConfig, serving: ServingStats | None, feature_services: tuple[str, str] | None,
                  migration: str | None) -> list[GateResult]:
    """Latency, model size and feature-service compatibility against the champion (any objective)."""
    gates: list[GateResult] = []
    if serving is not None and serving.champion_latency_ms is not None:
        gates.append(latency_gate(serving.challenger_latency_ms, serving.champion_latency_ms, config.latency_factor))
    else:
        gates.append(skipped("latency", "no serving measurements given"))
    if serving is not None and serving.champion_size_bytes is not None:
        gates.append(size_gate(serving.challenger_size_bytes, serving.champion_size_bytes, config.size_factor))
    else:
        gates.append(skipped("model_size", "no model sizes given"))
    if feature_services is not None:
        gates.append(compatibility_gate(feature_services[0], feature_services[1], migration))
    else:
        gates.append(skipped("compatibility", "no feature services given"))
    return gates


def conclude(gates: list[GateResult], result_metrics: dict[str, Any], slice_rows: list[SliceResult],
             serving: ServingStats | None) -> Decision:
    """promote when every gate passed; the reasons name each failure, or each applicable gate's numbers."""
    if serving is not None:
        result_metrics["serving"] = asdict(serving)
    failed = [g for g in gates if not g.passed]
    if failed:
        reasons = [f"{g.name} failed: {g.detail}" for g in failed]
    else:
        reasons = [f"all {sum(not g.skipped for g in gates)} applicable gates passed"]
        reasons += [f"{g.name}: {g.detail}" for g in gates if not g.skipped]
    return Decision("reject" if failed else "promote", reasons, gates, result_metrics, slice_rows)
