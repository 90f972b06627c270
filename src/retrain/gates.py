"""Promotion gates and the decision: arrays in, `GateResult`s and a `Decision` out.

Pure on purpose (no database, no models, no clock): the evaluator and the backtest call `decide`
with the same arrays and get the same answer. Each gate reports its name, pass/fail, the measured
value, the threshold it was held to and a one-line detail with the numbers behind it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from retrain import metrics

if TYPE_CHECKING:
    from retrain.config import Settings


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

    def __post_init__(self) -> None:
        if self.metric not in metrics.HIGHER_IS_BETTER:
            raise ValueError(f"gate_metric: {self.metric!r} is not one of auc, log_loss, brier")
        if self.bootstrap_resamples < 1000:
            raise ValueError(f"gate_bootstrap_resamples: {self.bootstrap_resamples} must be at least 1000")
        if not 0.5 < self.confidence < 1.0:
            raise ValueError(f"gate_confidence: {self.confidence} must be in (0.5, 1)")
        if self.slice_tolerance < 0 or self.latency_factor <= 0 or self.size_factor <= 0:
            raise ValueError("gate_slice_tolerance, gate_latency_factor, gate_size_factor: must be positive")

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
    regressed: bool

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


# ------------------------------------------------------------------------------------- gates


def floor_gate(auc: float, floor: float) -> GateResult:
    """Absolute quality: the challenger's AUC must reach the floor."""
    ok = not math.isnan(auc) and auc >= floor
    return GateResult("auc_floor", ok, auc, floor, f"challenger AUC {auc:.4f} {'>=' if ok else '<'} floor {floor:.4f}")


def improvement_gate(y: npt.ArrayLike, challenger: npt.ArrayLike, champion: npt.ArrayLike,
                     config: GateConfig) -> tuple[GateResult, dict[str, float]]:
    """Paired bootstrap of the metric difference; the lower confidence bound must clear the margin."""
    diffs = metrics.paired_bootstrap(y, challenger, champion, metric_name=config.metric,
                                     resamples=config.bootstrap_resamples, seed=config.seed)
    valid = diffs[~np.isnan(diffs)]
    if valid.size == 0:
        return GateResult("improvement", False, None, config.improvement_margin,
                          "bootstrap undefined (one class in the window)"), {}
    lower = float(np.quantile(valid, 1.0 - config.confidence))
    upper = float(np.quantile(valid, config.confidence))
    mean = float(valid.mean())
    observed = metrics.improvement(config.metric, metrics.metric(config.metric, y, challenger),
                                   metrics.metric(config.metric, y, champion))
    ok = lower > config.improvement_margin
    stats = {"observed": observed, "mean": mean, "lower": lower, "upper": upper, "resamples": float(valid.size),
             "confidence": config.confidence}
    detail = (f"{config.metric} improvement {observed:+.4f}, {config.confidence:.0%} one-sided lower bound "
              f"{lower:+.4f} {'>' if ok else '<='} margin {config.improvement_margin:+.4f} "
              f"({valid.size} paired resamples)")
    return GateResult("improvement", ok, lower, config.improvement_margin, detail), stats


def slice_results(y: npt.ArrayLike, challenger: npt.ArrayLike, champion: npt.ArrayLike,
                  slices: Mapping[str, npt.ArrayLike], config: GateConfig) -> list[SliceResult]:
    """Gate metric per slice value with at least `slice_min_rows` rows (single-class slices skipped)."""
    yb = metrics.as_labels(y)
    a, b = metrics.as_scores(challenger), metrics.as_scores(champion)
    out: list[SliceResult] = []
    for name, count, mask in slice_masks(slices, config.slice_min_rows):
        ys = yb[mask]
        if config.metric == "auc" and (ys.all() or not ys.any()):
            continue
        ma, mb = metrics.metric(config.metric, ys, a[mask]), metrics.metric(config.metric, ys, b[mask])
        delta = metrics.improvement(config.metric, ma, mb)
        out.append(SliceResult(name, count, ma, mb, delta, delta < -config.slice_tolerance))
    return out


def slice_masks(slices: Mapping[str, npt.ArrayLike], min_rows: int) -> Iterator[tuple[str, int, np.ndarray]]:
    """(`column=value`, rows, row mask) for every slice value with at least `min_rows` rows."""
    for column, raw in slices.items():
        keys = np.asarray(raw).astype(str)
        values, counts = np.unique(keys, return_counts=True)
        for value, count in zip(values, counts, strict=True):
            if count >= min_rows:
                yield f"{column}={value}", int(count), keys == value


def slice_gate(results: list[SliceResult], config: GateConfig) -> GateResult:
    """No qualifying slice may regress by more than the tolerance."""
    if not results:
        return GateResult("slices", True, None, -config.slice_tolerance,
                          f"no slice has >= {config.slice_min_rows} rows with both classes", skipped=True)
    worst = min(results, key=lambda r: r.delta)
    bad = [r for r in results if r.regressed]
    detail = (f"{len(results)} slices checked; worst {worst.slice} {config.metric} {worst.delta:+.4f} "
              f"(n={worst.n}); tolerance -{config.slice_tolerance:.4f}")
    if bad:
        detail += "; regressed: " + ", ".join(f"{r.slice} {r.delta:+.4f}" for r in bad[:5])
    return GateResult("slices", not bad, worst.delta, -config.slice_tolerance, detail)


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
) -> Decision:
    """Run every gate and decide. With no champion only the absolute gates decide.

    `serving` and `feature_services` (challenger, champion) are optional so the backtest, which has
    neither a serving path nor feature services, can reuse this unchanged.
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
        gate, stats = improvement_gate(yb, a, b, config)
        result_metrics["bootstrap"] = {"metric": config.metric, **stats}
        gates.append(gate)
        slice_rows = slice_results(yb, a, b, slices or {}, config)
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
