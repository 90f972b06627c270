"""Performance estimated before labels arrive, and monitoring thresholds learned from the reference.

Everything here is computed once at training time (`monitoring_baseline`, called by
`train.reference_profile`) and stored in the version's reference profile, or read back by monitoring
(`retrain.monitoring.rules`). It lives in `core` because training needs it and `models` imports only
`core`.

Confidence-based performance estimation (binary). An isotonic calibrator (scikit-learn,
`out_of_bounds="clip"`) is fitted on the validation rows' scores and labels and stored as its
thresholds (`x`, `y`; applying it is a linear interpolation, exactly what scikit-learn does). For an
unlabelled window, each row's calibrated probability p_i is the chance its label is 1; with labels
drawn independently from those probabilities the expected confusion matrix at the decision threshold
sums p_i (positives) and 1 - p_i (negatives) on each side of it, and the expected AUC is the
expected number of correctly ordered positive/negative pairs (ties count half) over the expected
number of pairs, both sums over pairs of rows ranked by the raw score (`expected_auc`; the unit
tests check it against simulated labels). The estimate sees covariate shift (the window's score
mix) and nothing else: when the relationship between inputs and labels changes, only matured labels
tell.

Extrapolation, for both objectives (and regression's only label-free signal: it has no calibrated
probability to estimate from): the share of the window's inputs, weighted by the model's gain
importance, that lie outside the range the model was trained on (`out_of_range_share`). A tree
ensemble answers them with its edge leaves, so a growing level or an unseen season shows up there
before the labels do, and labels of the current window cannot rule it out for the next one. On the
bike history it ranked the realized RMSE ratio of the following month better than the prediction
PSI, the drifted-feature share or a binned expected error (see bench/RESULTS.md).

Reference chunks: thresholds are learned from the statistic's spread over chunks of the reference
as long as the monitoring window (`Settings.monitor_window_days`; the backtest uses its period).

- Drift: `monitor_reference_chunks` time slices of that length, evenly spaced over the training
  window in event time (overlapping when the window is long), each compared with the whole
  training profile. Event time rather than a row count: a window is a span of time, rows of a day
  share its weather (a random sample of rows would understate the spread), and a slice of 7 days
  holds every weekday. A feature's learned threshold is the `monitor_reference_quantile` of its
  slices' PSI (and KS); the monitor never lets it fall below the fixed `monitor_psi_threshold` /
  `monitor_ks_threshold`, so a seasonal feature that moves within the training window earns a
  higher threshold and a stable one keeps the fixed floor. The score PSI's threshold comes from
  the same slices, scored by the booster (in sample: the validation rows alone are too short to
  show the scores' movement over a season). Slices with fewer than `monitor_min_predictions` rows
  are skipped; with fewer than 3 left nothing is learned and the fixed settings apply. When a
  window is longer than half the training window its slices overlap most of the reference and the
  learned values stay near the floors.
- The estimate: only the validation rows are out of sample (in-sample scores are too confident
  for the calibrator), and they span about a week, shorter than a monthly window. So its chunks
  are whole days drawn with replacement from the validation days, as many days as the window
  holds (the evaluator's gates resample days for the same reason); the band is the (1 - q, q)
  quantiles of the chunks' estimated AUC. Day resampling keeps day-to-day variation but not
  longer swings: the band is narrow for long windows, which is why the alert also needs the
  `monitor_auc_drop` margin (`retrain.monitoring.rules`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from retrain.core.config import Settings
from retrain.core.jsonsafe import json_safe
from retrain.core.stats import as_float_array, feature_drift, numeric_drift, numeric_profile

FloatArray = npt.NDArray[np.float64]

DAY_NS = 86_400 * 10**9
MIN_CHUNKS = 3
MIN_CALIBRATION_ROWS = 50


# ------------------------------------------------------------------------------- calibration


def fit_calibrator(scores: Any, labels: Any) -> dict[str, Any] | None:
    """Isotonic calibrator of `scores` on 0/1 `labels`, as JSON-safe thresholds; None when the rows
    hold fewer than `MIN_CALIBRATION_ROWS` or a single class (nothing to calibrate against)."""
    from sklearn.isotonic import IsotonicRegression

    s, y = as_float_array(scores), as_float_array(labels)
    if s.size != y.size:
        raise ValueError(f"labels: {y.size} labels for {s.size} scores")
    keep = ~(np.isnan(s) | np.isnan(y))
    s, y = s[keep], y[keep]
    if s.size < MIN_CALIBRATION_ROWS or np.unique(y).size < 2:
        return None
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels: must be 0/1 to calibrate scores")
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0, increasing=True).fit(s, y)
    return {"method": "isotonic", "n": int(s.size), "x": np.asarray(iso.X_thresholds_, dtype=float).tolist(),
            "y": np.asarray(iso.y_thresholds_, dtype=float).tolist()}


def calibrate(calibrator: Mapping[str, Any], scores: Any) -> FloatArray:
    """Calibrated probabilities of `scores` (linear between thresholds, clipped outside; NaN stays NaN)."""
    x = np.asarray(calibrator.get("x") or [], dtype=float)
    y = np.asarray(calibrator.get("y") or [], dtype=float)
    if x.size == 0 or x.size != y.size:
        raise ValueError("calibration: x and y thresholds must be non-empty and of the same length")
    s = as_float_array(scores)
    return np.asarray(np.interp(s, x, y), dtype=float)  # np.interp keeps NaN and clips at the ends


def expected_auc(scores: Any, probs: Any, weights: Any = None) -> float | None:
    """Expected ROC AUC of `scores` when each label is 1 with probability `probs` (independently).

    Sum over ordered pairs (i positive, j negative) of p_i (1 - p_j) [s_i > s_j] (+ half for ties),
    over the sum of p_i (1 - p_j) for i != j; O(n log n). `weights` counts a row that many times
    (a resampled chunk). None when the expected number of pairs is 0.
    """
    s, p = as_float_array(scores), as_float_array(probs)
    w = np.ones_like(s) if weights is None else as_float_array(weights)
    keep = ~(np.isnan(s) | np.isnan(p)) & (w > 0)
    s, p, w = s[keep], np.clip(p[keep], 0.0, 1.0), w[keep]
    if s.size < 2:
        return None
    order = np.argsort(s, kind="mergesort")
    s, p, w = s[order], p[order], w[order]
    wp, wq = w * p, w * (1.0 - p)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    group_p, group_q = np.add.reduceat(wp, starts), np.add.reduceat(wq, starts)
    below_q = np.concatenate(([0.0], np.cumsum(group_q)[:-1]))  # negatives' weight ranked strictly lower
    self_pairs = np.add.reduceat(w * p * (1.0 - p), starts)  # a row is never paired with itself
    numerator = float(np.sum(group_p * below_q) + 0.5 * np.sum(group_p * group_q - self_pairs))
    denominator = float(wp.sum() * wq.sum() - np.sum(w * p * (1.0 - p)))
    return numerator / denominator if denominator > 0 else None


@dataclass(frozen=True)
class EstimatedPerformance:
    """What the calibrated scores of a window say its labels will show (expected values)."""

    n: int
    auc: float | None
    threshold: float  # the decision threshold of the confusion matrix
    tp: float
    fp: float
    tn: float
    fn: float
    accuracy: float | None
    precision: float | None
    recall: float | None
    log_loss: float | None
    positive_rate: float | None  # expected share of positive labels


def estimate_performance(profile: Mapping[str, Any], scores: Any,
                         threshold: float = 0.5) -> EstimatedPerformance | None:
    """Expected AUC, confusion matrix at `threshold`, accuracy and log loss of `scores`, from the
    profile's calibrator; None when the profile has none (a regression model, an old profile)."""
    calibrator = profile.get("calibration")
    if not calibrator:
        return None
    s = as_float_array(scores)
    s = s[~np.isnan(s)]
    if s.size == 0:
        return EstimatedPerformance(0, None, threshold, 0.0, 0.0, 0.0, 0.0, None, None, None, None, None)
    p = calibrate(calibrator, s)
    pos = s >= threshold
    tp, fp = float(p[pos].sum()), float((1.0 - p[pos]).sum())
    fn, tn = float(p[~pos].sum()), float((1.0 - p[~pos]).sum())
    clipped = np.clip(s, 1e-15, 1.0 - 1e-15)
    log_loss = float(np.mean(-(p * np.log(clipped) + (1.0 - p) * np.log(1.0 - clipped))))
    return EstimatedPerformance(
        n=int(s.size), auc=expected_auc(s, p), threshold=float(threshold), tp=tp, fp=fp, tn=tn, fn=fn,
        accuracy=(tp + tn) / s.size, precision=tp / (tp + fp) if tp + fp > 0 else None,
        recall=tp / (tp + fn) if tp + fn > 0 else None, log_loss=log_loss, positive_rate=float(p.mean()))


# --------------------------------------------------------------------------- extrapolation


def feature_ranges(profile: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """Each numeric feature's training range: the first and last value of its quantile sketch."""
    out = {}
    for name, ref in (profile.get("features") or {}).items():
        q = (ref or {}).get("quantiles") or []
        if (ref or {}).get("type") != "categorical" and q:
            out[name] = (float(q[0]), float(q[-1]))
    return out


def out_of_range_share(profile: Mapping[str, Any], columns: Mapping[str, Any],
                       ignore: Sequence[str] = ()) -> float | None:
    """Importance-weighted share of the window's numeric inputs outside the training range.

    sum over numeric features (but `ignore`) of importance x (share of the window's non-missing
    values below the training minimum or above its maximum). None without importance in the profile.
    """
    importance: Mapping[str, float] = profile.get("importance") or {}
    if not importance:
        return None
    total = 0.0
    for name, (lo, hi) in feature_ranges(profile).items():
        weight = float(importance.get(name, 0.0))
        if weight <= 0 or name in ignore or name not in columns or isinstance(columns[name], Mapping):
            continue
        values = as_float_array(columns[name])
        values = values[~np.isnan(values)]
        if values.size:
            total += weight * float(np.mean((values < lo) | (values > hi)))
    return total


# --------------------------------------------------------------------------------- chunks


def _epoch_ns(times: Any) -> npt.NDArray[np.int64]:
    index = pd.DatetimeIndex(pd.to_datetime(pd.Series(times), utc=True)).tz_localize(None).as_unit("ns")
    return np.asarray(index.view("int64"), dtype=np.int64)


def time_chunks(times: Any, window_days: float, n_chunks: int, min_rows: int) -> list[npt.NDArray[np.int64]]:
    """Row positions of up to `n_chunks` slices [start, start + window) evenly spaced over the span of
    `times` (event time); slices with fewer than `min_rows` rows are left out. One slice (the whole
    span) when the span is not longer than a window."""
    t = _epoch_ns(times)
    if t.size == 0:
        return []
    order = np.argsort(t, kind="mergesort")
    ts = t[order]
    width = int(window_days * DAY_NS)
    last_start = int(ts[-1]) + 1 - width
    first = int(ts[0])
    steps = max(n_chunks - 1, 1)
    starts = (np.array([first + i * (last_start - first) // steps for i in range(n_chunks)], dtype=np.int64)
              if last_start > first else np.array([first], dtype=np.int64))
    chunks = []
    for start in np.unique(starts):
        a, b = np.searchsorted(ts, [start, start + width], side="left")
        if b - a >= min_rows:
            chunks.append(order[a:b])
    return chunks


def day_chunks(times: Any, window_days: float, n_chunks: int, seed: int) -> list[FloatArray]:
    """`n_chunks` resampled chunks as row weights: `ceil(window_days)` whole days drawn with
    replacement from the days present in `times` (a row weighs as often as its day was drawn)."""
    t = _epoch_ns(times)
    if t.size == 0:
        return []
    days, day_of_row = np.unique(t // DAY_NS, return_inverse=True)
    k = max(1, math.ceil(window_days - 1e-9))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_chunks):
        drawn = np.bincount(rng.integers(0, days.size, k), minlength=days.size).astype(float)
        out.append(drawn[day_of_row])
    return out


def _quantile(values: Sequence[float | None], q: float) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.quantile(finite, q)) if finite else None


# ---------------------------------------------------------------------- learned thresholds


def drift_thresholds(frame: pd.DataFrame, feature_names: Sequence[str], features: Mapping[str, Any],
                     time_col: str, settings: Settings, scores: Any = None) -> dict[str, Any] | None:
    """Per feature, the `monitor_reference_quantile` of PSI and KS over the reference's time slices
    of a monitoring window, each slice against the whole profile `features` (stored as learned; the
    monitor floors them at the fixed thresholds of its own settings). With `scores` (the model's
    scores of `frame`'s rows), the same quantile of the score PSI of each slice against the whole.
    None when fewer than 3 slices hold `monitor_min_predictions` rows."""
    chunks = time_chunks(frame[time_col], settings.monitor_window_days, settings.monitor_reference_chunks,
                         settings.monitor_min_predictions)
    if len(chunks) < MIN_CHUNKS:
        return None
    q = settings.monitor_reference_quantile
    learned: dict[str, Any] = {}
    for name in feature_names:
        ref = features.get(name)
        if not ref:
            continue
        column = frame[name]
        values = column.to_numpy() if ref.get("type") != "categorical" else column.astype(object).to_numpy()
        stats = [feature_drift(name, ref, values[idx]) for idx in chunks]
        entry = {"psi": _quantile([d.psi for d in stats if d.psi is not None], q)}
        if ref.get("type") != "categorical":
            entry["ks"] = _quantile([d.ks for d in stats if d.ks is not None], q)
        learned[name] = {k: v for k, v in entry.items() if v is not None}
    out: dict[str, Any] = {"window_days": settings.monitor_window_days, "quantile": q, "n_chunks": len(chunks),
                           "method": "time slices of the training window", "features": learned}
    if scores is not None:
        s = as_float_array(scores)
        whole = numeric_profile(s, settings.monitor_profile_bins, settings.monitor_profile_quantiles)
        out["score"] = {"psi": _quantile([numeric_drift("score", whole, s[idx]).psi for idx in chunks], q)}
    return out


def estimate_band(profile: Mapping[str, Any], times: Any, scores: Any, settings: Settings) -> dict[str, Any] | None:
    """The estimated AUC of the validation rows and its band over day-resampled chunks of a window
    (the `1 - q` and `q` quantiles, q = `monitor_reference_quantile`); None without a calibrator."""
    calibrator = profile.get("calibration")
    s = as_float_array(scores)
    if not calibrator or s.size == 0:
        return None
    chunks = day_chunks(times, settings.monitor_window_days, settings.monitor_reference_chunks, settings.seed)
    q = settings.monitor_reference_quantile
    p = calibrate(calibrator, s)
    estimates = [e for e in (expected_auc(s, p, w) for w in chunks) if e is not None]
    return {"window_days": settings.monitor_window_days, "quantile": q, "n_chunks": len(chunks),
            "method": "days resampled from the validation rows", "reference": expected_auc(s, p),
            "lower": _quantile(estimates, 1.0 - q), "upper": _quantile(estimates, q),
            "std": float(np.std(estimates)) if estimates else None}


def gain_importance(booster: Any, feature_names: Sequence[str]) -> dict[str, float]:
    """The booster's gain importance per feature, normalized to sum to 1 (all 0 when it never split)."""
    gains = np.asarray(booster.feature_importance(importance_type="gain"), dtype=float)
    if gains.size != len(feature_names):
        raise ValueError(f"feature_names: {len(feature_names)} names for {gains.size} booster features")
    total = float(gains.sum())
    return {name: (float(g) / total if total > 0 else 0.0) for name, g in zip(feature_names, gains, strict=True)}


def monitoring_baseline(profile: Mapping[str, Any], *, booster: Any, feature_names: Sequence[str],
                        valid_times: Any, valid_scores: Any, valid_labels: Any, frame: pd.DataFrame | None,
                        time_col: str, settings: Settings, regression: bool = False) -> dict[str, Any]:
    """What monitoring needs beyond distributions, added to a reference profile at training time:
    gain importance, the calibrator (binary), learned drift thresholds (from `frame`, the training
    window, time-sliced; the score's from the booster's scores of it) and the estimate's band."""
    out: dict[str, Any] = {"importance": gain_importance(booster, feature_names)}
    if not regression:
        calibrator = fit_calibrator(valid_scores, valid_labels)
        if calibrator is not None:
            out["calibration"] = calibrator
    if frame is not None and time_col in frame.columns:
        scores = booster.predict(frame[list(feature_names)], num_threads=settings.num_threads)
        learned = drift_thresholds(frame, feature_names, profile.get("features") or {}, time_col, settings,
                                   scores=scores)
        if learned is not None:
            out["drift_thresholds"] = learned
    if valid_times is not None:
        band = estimate_band({**profile, **out}, valid_times, valid_scores, settings)
        if band is not None:
            out["estimate_band"] = band
    return json_safe(out)  # type: ignore[no-any-return]
