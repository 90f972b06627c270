"""The monitoring math, pure numpy: reference profiles, drift statistics and score metrics.

A reference profile is computed once, at training time, and stored (JSON) with the model version,
so monitoring never rescans the training data. Per numeric feature it keeps quantile bin edges and
the training proportions (for PSI), the null rate, and a quantile sketch (for KS); per categorical
feature the top-K category frequencies plus `__other__`; the same numeric profile for the model's
scores. `monitor.py` re-exports the public names. What monitoring learns beyond distributions
(gain importance, the score calibrator, thresholds learned from reference chunks) is added to the
profile by `retrain.core.estimate.monitoring_baseline`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from retrain.core import metrics
from retrain.core.config import Settings
from retrain.core.jsonsafe import json_safe

FloatArray = npt.NDArray[np.float64]

PROFILE_VERSION = 2  # 2: importance, calibration, learned thresholds (core.estimate)
EPS = 1e-4
OTHER = "__other__"
SCORE = "__score__"
# Quantiles are real data values (`inverted_cdf`), so the CDF read back at ties is exact (discrete data).
_QUANTILE_METHOD: Final = "inverted_cdf"


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


# ----------------------------------------------------------------------------------- profiles


def as_float_array(values: Any) -> FloatArray:
    """Float array with every missing, unparseable or non-finite value as NaN."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        arr = values.astype(float, copy=False)
    else:
        try:
            arr = np.asarray(values, dtype=float)
        except (TypeError, ValueError):
            arr = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(dtype=float)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    return np.where(np.isfinite(arr), arr, np.nan)


def is_categorical(series: pd.Series) -> bool:
    """Object, string and category columns are categorical; numbers and booleans are numeric."""
    return not (pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series))


def _probabilities(k: int) -> FloatArray:
    """k evenly spaced probabilities in [0, 1], nudged down by 1e-12 so that p = j/n lands on the
    j-th order statistic despite rounding (0.01 is not exactly representable)."""
    return np.clip(np.linspace(0.0, 1.0, k) - 1e-12, 0.0, 1.0)


def numeric_profile(values: Any, bins: int = 10, quantiles: int = 201) -> dict[str, Any]:
    """Inner bin edges (ends are -inf/+inf, implicit so the JSON stays strict), proportions, sketch."""
    arr = as_float_array(values)
    n_total = int(arr.size)
    finite = np.sort(arr[~np.isnan(arr)])
    n = int(finite.size)
    null_rate = 1.0 - n / n_total if n_total else 0.0
    if n == 0:
        return {"type": "numeric", "n": 0, "null_rate": null_rate, "edges": [], "proportions": [],
                "quantiles": [], "mean": None, "std": None}
    inner = np.quantile(finite, _probabilities(bins + 1)[1:-1], method=_QUANTILE_METHOD)
    edges = np.unique(inner)
    counts = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=edges.size + 1)
    sketch = np.quantile(finite, _probabilities(quantiles), method=_QUANTILE_METHOD)
    return {
        "type": "numeric",
        "n": n,
        "null_rate": null_rate,
        "edges": edges.tolist(),
        "proportions": (counts / n).tolist(),
        "quantiles": sketch.tolist(),
        "mean": float(finite.mean()),
        "std": float(finite.std()),
    }


def _category_strings(values: Any) -> pd.Series:
    series = values if isinstance(values, pd.Series) else pd.Series(values, dtype=object)
    missing = series.isna().to_numpy()
    out = series.astype(str).astype(object)
    out[missing] = None
    return out


def categorical_profile(values: Any, top_k: int = 30) -> dict[str, Any]:
    """Top-K category frequencies (among non-null values) plus `__other__` for the rest."""
    series = _category_strings(values)
    n_total = int(series.size)
    present = series.dropna()
    n = int(present.size)
    counts = present.value_counts(sort=True)
    top = counts.iloc[:top_k]
    freqs = {str(k): float(v) / n for k, v in top.items()} if n else {}
    freqs[OTHER] = float(counts.iloc[top_k:].sum()) / n if n else 0.0
    return {"type": "categorical", "n": n, "null_rate": 1.0 - n / n_total if n_total else 0.0,
            "frequencies": freqs}


def build_reference_profile(
    frame: pd.DataFrame,
    feature_names: Sequence[str],
    scores: Any,
    *,
    labels: Any = None,
    bins: int = 10,
    quantiles: int = 201,
    top_k: int = 30,
    settings: Settings | None = None,
    regression: bool = False,
) -> dict[str, Any]:
    """The JSON-safe profile stored with a model version at training time.

    `frame` holds the reference rows (training or validation set), `scores` the model's scores on
    them. With `labels`, the profile also records the reference AUC/log loss/ECE, which monitoring
    uses as the champion's baseline for the AUC-drop rule (pass the validation labels; with
    `regression`, RMSE and MAE, the baseline of the error-decay rule). `settings`,
    when given, supplies bins/quantiles/top_k (`monitor_profile_*`).
    """
    if settings is not None:
        bins, quantiles = settings.monitor_profile_bins, settings.monitor_profile_quantiles
        top_k = settings.monitor_profile_top_k
    missing = [name for name in feature_names if name not in frame.columns]
    if missing:
        raise ValueError(f"feature_names: columns {missing} are not in the reference frame")
    score_arr = as_float_array(scores)
    if score_arr.size != len(frame):
        raise ValueError(f"scores: {score_arr.size} scores for {len(frame)} reference rows")
    features: dict[str, Any] = {}
    for name in feature_names:
        col = frame[name]
        features[name] = (categorical_profile(col, top_k) if is_categorical(col)
                          else numeric_profile(col.to_numpy(), bins, quantiles))
    profile: dict[str, Any] = {
        "version": PROFILE_VERSION,
        "n_rows": len(frame),
        "bins": bins,
        "features": features,
        "score": numeric_profile(score_arr, bins, quantiles),
    }
    if labels is not None:
        y = as_float_array(labels)
        if y.size != score_arr.size:
            raise ValueError(f"labels: {y.size} labels for {score_arr.size} scores")
        if regression:  # the baseline of the error-decay rule
            profile["error"] = asdict(error_metrics(y, score_arr))
        else:
            perf = score_metrics(y, score_arr)
            profile["performance"] = {k: v for k, v in asdict(perf).items() if k != "calibration"}
    return json_safe(profile)  # type: ignore[no-any-return]


# -------------------------------------------------------------------------------------- drift


def psi(expected: Any, actual: Any, eps: float = EPS) -> float:
    """Population stability index: sum((a - e) * ln(a / e)), both floored at `eps` (empty bins)."""
    e = np.maximum(np.asarray(expected, dtype=float), eps)
    a = np.maximum(np.asarray(actual, dtype=float), eps)
    if e.shape != a.shape:
        raise ValueError(f"psi: expected {e.shape} and actual {a.shape} bins differ")
    return float(np.sum((a - e) * np.log(a / e)))


def ks_from_sketch(sketch: Sequence[float], values: FloatArray, *, presorted: bool = False) -> float:
    """Two-sample KS statistic of `values` against a reference quantile sketch.

    The sketch holds `inverted_cdf` quantiles at evenly spaced probabilities; the reference CDF at a
    sketch value v is the largest probability whose quantile is v (exact at ties, so discrete
    features are right), linear in between. Both CDFs are evaluated at every sketch and current
    value, as the two-sample statistic is. NaNs must be removed first.
    """
    q = np.asarray(sketch, dtype=float)
    x = values if presorted else np.sort(values)
    if q.size == 0 or x.size == 0:
        return math.nan
    p = np.linspace(0.0, 1.0, q.size)
    uq, first_in_reversed = np.unique(q[::-1], return_index=True)
    p_at = p[::-1][first_in_reversed]  # the largest p with quantile == value
    at_x = np.abs(np.searchsorted(x, x, side="right") / x.size - np.interp(x, uq, p_at, left=0.0, right=1.0))
    at_q = np.abs(np.searchsorted(x, uq, side="right") / x.size - p_at)
    return float(max(at_x.max(), at_q.max()))


@dataclass
class FeatureDrift:
    """Drift of one feature (or of the scores) in a window against its reference."""

    name: str
    kind: str  # numeric | categorical
    n: int
    null_rate: float
    ref_null_rate: float
    psi: float | None
    ks: float | None = None
    tv: float | None = None
    unseen_rate: float | None = None
    mean: float | None = None
    ref_mean: float | None = None
    # from the reference profile: the quantile of PSI/KS over reference chunks, the gain importance
    psi_learned: float | None = None
    ks_learned: float | None = None
    importance: float | None = None
    # set by the monitoring pass: the thresholds this window was judged against, and the verdict
    psi_threshold: float | None = None
    ks_threshold: float | None = None
    drifted: bool = False


def numeric_drift(name: str, ref: Mapping[str, Any], values: Any) -> FeatureDrift:
    """PSI over the reference bins plus a null bin, and KS against the sketch (one sort in all)."""
    arr = as_float_array(values)
    n_total = arr.size
    x = np.sort(arr)  # NaNs sort last
    n = int(n_total - np.count_nonzero(np.isnan(arr)))
    x = x[:n]
    null_rate = 1.0 - n / n_total if n_total else 0.0
    ref_null = float(ref.get("null_rate", 0.0))
    edges = np.asarray(ref.get("edges", []), dtype=float)
    ref_props = np.asarray(ref.get("proportions", []), dtype=float)
    value_psi: float | None = None
    if n_total and ref_props.size:
        # bin i holds edges[i-1] <= v < edges[i]: counts from the sorted values by binary search
        counts = np.diff(np.concatenate(([0], np.searchsorted(x, edges, side="left"), [n])))
        expected = np.append(ref_props * (1.0 - ref_null), ref_null)
        actual = np.append(counts / n_total, null_rate)
        value_psi = psi(expected, actual)
    ks = ks_from_sketch(ref.get("quantiles", []), x, presorted=True) if n else math.nan
    return FeatureDrift(
        name=name, kind="numeric", n=n, null_rate=null_rate, ref_null_rate=ref_null,
        psi=value_psi, ks=_finite_or_none(ks),
        mean=float(x.mean()) if n else None, ref_mean=ref.get("mean"),
    )


def category_counts(values: Any) -> dict[str | None, int]:
    """Counts per category (None = missing): what `categorical_drift` needs, computable in SQL too."""
    series = _category_strings(values)
    counts: dict[str | None, int] = {str(k): int(v) for k, v in series.value_counts(dropna=True).items()}
    missing = int(series.isna().sum())
    if missing:
        counts[None] = missing
    return counts


def categorical_drift(name: str, ref: Mapping[str, Any], values: Any) -> FeatureDrift:
    """PSI and total variation over the reference categories (+ `__other__` + a null bin).

    `values` is the window's values, or a mapping category -> count (None = missing) when the
    counting was done elsewhere (e.g. `GROUP BY` in the database).
    """
    counts = ({(None if k is None else str(k)): int(v) for k, v in values.items()}
              if isinstance(values, Mapping) else category_counts(values))
    n_total = sum(counts.values())
    n_null = counts.get(None, 0)
    n = n_total - n_null
    freqs: Mapping[str, float] = ref.get("frequencies", {})
    known = [c for c in freqs if c != OTHER]
    in_known = np.array([counts.get(c, 0) for c in known], dtype=float)
    unseen = float(n - in_known.sum())
    ref_null = float(ref.get("null_rate", 0.0))
    null_rate = n_null / n_total if n_total else 0.0
    expected = np.array([freqs[c] for c in known] + [freqs.get(OTHER, 0.0)]) * (1.0 - ref_null)
    expected = np.append(expected, ref_null)
    actual = np.append(np.append(in_known, unseen) / max(n_total, 1), null_rate)
    return FeatureDrift(
        name=name, kind="categorical", n=n, null_rate=null_rate, ref_null_rate=ref_null,
        psi=psi(expected, actual) if n_total else None,
        tv=float(0.5 * np.abs(expected - actual).sum()) if n_total else None,
        unseen_rate=unseen / n if n else None,
    )


def feature_drift(name: str, ref: Mapping[str, Any], values: Any) -> FeatureDrift:
    """Dispatch on the reference's type."""
    if ref.get("type") == "categorical":
        return categorical_drift(name, ref, values)
    return numeric_drift(name, ref, values)


# -------------------------------------------------------------------------------- performance


def auc_score(y: Any, p: Any) -> float | None:
    """ROC AUC (the evaluator's `metrics.roc_auc`), None when only one class is present."""
    return _finite_or_none(metrics.roc_auc(y, p))


@dataclass
class Performance:
    """Score quality on matured labels."""

    n: int
    n_positive: int
    auc: float | None
    log_loss: float | None
    brier: float | None
    mean_predicted: float | None
    observed_rate: float | None
    ece: float | None
    calibration: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ErrorPerformance:
    """Regression quality on matured labels."""

    n: int
    rmse: float | None
    mae: float | None
    mean_predicted: float | None
    observed_mean: float | None


def error_metrics(y: Any, pred: Any) -> ErrorPerformance:
    """RMSE, MAE and means of predictions `pred` against values `y` (NaN rows: not labelled yet)."""
    y_arr, p_arr = as_float_array(y), as_float_array(pred)
    keep = ~(np.isnan(y_arr) | np.isnan(p_arr))
    y_arr, p_arr = y_arr[keep], p_arr[keep]
    if y_arr.size == 0:
        return ErrorPerformance(0, None, None, None, None)
    err = p_arr - y_arr
    return ErrorPerformance(int(y_arr.size), float(np.sqrt(np.mean(err**2))), float(np.mean(np.abs(err))),
                            float(p_arr.mean()), float(y_arr.mean()))


def score_metrics(y: Any, p: Any, bins: int = 10) -> Performance:
    """AUC, log loss, Brier and calibration (equal-width bins, ECE) of scores `p` on labels `y`.

    The numbers come from `retrain.core.metrics`, the same functions the evaluator gates on. Rows whose
    label or score is NaN are not labelled yet and are left out.
    """
    y_arr = as_float_array(y)
    p_arr = as_float_array(p)
    keep = ~(np.isnan(y_arr) | np.isnan(p_arr))
    y_arr, p_arr = y_arr[keep], p_arr[keep]
    n = int(y_arr.size)
    if n == 0:
        return Performance(0, 0, None, None, None, None, None, None)
    if not np.isin(y_arr, (0.0, 1.0)).all():
        raise ValueError("labels: must be 0/1 (or true/false)")
    y_bool = y_arr.astype(bool)
    log_loss = metrics.log_loss(y_bool, p_arr)
    brier = metrics.brier(y_bool, p_arr)
    idx = np.minimum((np.clip(p_arr, 0, 1) * bins).astype(int), bins - 1)
    cnt = np.bincount(idx, minlength=bins)
    sum_p = np.bincount(idx, weights=p_arr, minlength=bins)
    sum_y = np.bincount(idx, weights=y_arr, minlength=bins)
    nonempty = cnt > 0
    mean_p = np.divide(sum_p, cnt, out=np.zeros(bins), where=nonempty)
    rate = np.divide(sum_y, cnt, out=np.zeros(bins), where=nonempty)
    ece = metrics.expected_calibration_error(y_bool, p_arr, bins)
    calibration = [
        {"lo": b / bins, "hi": (b + 1) / bins, "n": int(cnt[b]), "mean_predicted": float(mean_p[b]),
         "observed_rate": float(rate[b])}
        for b in range(bins) if cnt[b]
    ]
    return Performance(
        n=n, n_positive=int(y_arr.sum()), auc=auc_score(y_bool, p_arr), log_loss=log_loss, brier=brier,
        mean_predicted=float(p_arr.mean()), observed_rate=float(y_arr.mean()), ece=ece,
        calibration=calibration,
    )
