"""Metric math on plain numpy arrays: AUC, log loss, Brier, calibration, and a paired bootstrap.

Pure and dependency-light on purpose: the evaluator, the monitor and the backtest all score models
with these same functions. The bootstrap is vectorized (resample weights as a matrix, rank-based
AUC from one bincount per model and chunk) so 1,000 resamples of ~25k rows take about a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

MetricName = Literal["auc", "log_loss", "brier"]
HIGHER_IS_BETTER: dict[str, bool] = {"auc": True, "log_loss": False, "brier": False}
EPS = 1e-15

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def as_labels(y: npt.ArrayLike) -> BoolArray:
    """Binary labels as a bool array; refuses anything but 0/1/True/False."""
    arr = np.asarray(y)
    if arr.dtype == np.bool_:
        return arr
    values = arr.astype("float64")
    if np.isnan(values).any() or not np.isin(values, (0.0, 1.0)).all():
        raise ValueError("labels: must be binary (0/1 or bool) with no missing values")
    return values.astype(bool)


def as_scores(p: npt.ArrayLike, name: str = "scores") -> FloatArray:
    arr = np.asarray(p, dtype="float64")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: must be finite numbers")
    return arr


def roc_auc(y: npt.ArrayLike, s: npt.ArrayLike) -> float:
    """ROC AUC from average ranks (Mann-Whitney U); NaN when only one class is present."""
    yb, sf = as_labels(y), as_scores(s)
    n_pos = int(yb.sum())
    n_neg = yb.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(sf, kind="mergesort")
    s_sorted = sf[order]
    starts = _tie_starts(s_sorted)
    counts = np.diff(np.append(starts, s_sorted.size))
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = np.repeat(avg_rank, counts)
    return float((ranks[yb[order]].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    yb, pf = as_labels(y), np.clip(as_scores(p), EPS, 1 - EPS)
    return float(-np.mean(np.where(yb, np.log(pf), np.log1p(-pf))))


def brier(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    yb, pf = as_labels(y), as_scores(p)
    return float(np.mean((pf - yb) ** 2))


def accuracy(y: npt.ArrayLike, p: npt.ArrayLike, threshold: float = 0.5) -> float:
    yb, pf = as_labels(y), as_scores(p)
    return float(np.mean((pf >= threshold) == yb))


def expected_calibration_error(y: npt.ArrayLike, p: npt.ArrayLike, bins: int = 10) -> float:
    """ECE over equal-width probability bins: sum of |mean predicted - observed rate| by bin share."""
    yb, pf = as_labels(y), as_scores(p)
    if yb.size == 0:
        return math.nan
    idx = np.clip((pf * bins).astype(int), 0, bins - 1)
    sum_p = np.bincount(idx, weights=pf, minlength=bins)
    sum_y = np.bincount(idx, weights=yb.astype("float64"), minlength=bins)
    return float(np.abs(sum_p - sum_y).sum() / yb.size)


def metric(name: str, y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """One named metric (`auc`, `log_loss`, `brier`)."""
    if name == "auc":
        return roc_auc(y, p)
    if name == "log_loss":
        return log_loss(y, p)
    if name == "brier":
        return brier(y, p)
    raise ValueError(f"metric: {name!r} is not one of auc, log_loss, brier")


def summary(y: npt.ArrayLike, p: npt.ArrayLike, threshold: float = 0.5) -> dict[str, float]:
    """Every reported metric of one model on one labelled window."""
    yb, pf = as_labels(y), as_scores(p)
    return {
        "n": float(yb.size),
        "auc": roc_auc(yb, pf),
        "log_loss": log_loss(yb, pf),
        "brier": brier(yb, pf),
        "accuracy": accuracy(yb, pf, threshold),
        "ece": expected_calibration_error(yb, pf),
        "predicted_rate": float(pf.mean()) if pf.size else math.nan,
        "observed_rate": float(yb.mean()) if yb.size else math.nan,
    }


def roc_curve(y: npt.ArrayLike, s: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """False- and true-positive rates at every distinct threshold (for plotting)."""
    yb, sf = as_labels(y), as_scores(s)
    order = np.argsort(-sf, kind="mergesort")
    ys, ss = yb[order], sf[order]
    last = np.r_[np.flatnonzero(np.diff(ss)), ys.size - 1] if ys.size else np.array([], dtype=int)
    tps = np.cumsum(ys)[last].astype("float64")
    fps = (last + 1 - tps).astype("float64")
    n_pos, n_neg = max(float(ys.sum()), 1.0), max(float(ys.size - ys.sum()), 1.0)
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos]


def _tie_starts(sorted_values: FloatArray) -> npt.NDArray[np.intp]:
    if sorted_values.size == 0:
        return np.array([], dtype=np.intp)
    return np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1].astype(np.intp)


@dataclass(frozen=True)
class _Ranked:
    """One model's scores as bootstrap keys: `2 * tie_group + label`, groups in score order."""

    keys: npt.NDArray[np.intp]
    groups: int

    @classmethod
    def of(cls, y: BoolArray, s: FloatArray) -> _Ranked:
        uniq, group = np.unique(s, return_inverse=True)
        return cls((2 * group + y).astype(np.intp), int(uniq.size))

    def auc(self, idx: npt.NDArray[np.intp], n_pos: FloatArray) -> FloatArray:
        """AUC of each resample (a row of `idx` holds the drawn row numbers).

        One bincount gives, per resample and tie group, how many negatives and positives were drawn;
        the numerator is sum over groups of pos * (negatives strictly below + half the tied ones).
        """
        k, n = idx.shape
        width = 2 * self.groups
        flat = self.keys[idx]
        flat += (np.arange(k, dtype=np.intp) * width)[:, None]
        counts = np.bincount(flat.ravel(), minlength=k * width).reshape(k, self.groups, 2)
        neg, pos = counts[:, :, 0], counts[:, :, 1]
        below = np.cumsum(neg, axis=1)
        below *= 2
        below -= neg  # 2 * (strictly below) + tied
        numer = np.einsum("ij,ij->i", pos, below).astype("float64") / 2.0
        denom = n_pos * (n - n_pos)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, numer / np.where(denom > 0, denom, 1.0), np.nan)


def _row_losses(name: str, y: BoolArray, p: FloatArray) -> FloatArray:
    if name == "log_loss":
        pc = np.clip(p, EPS, 1 - EPS)
        return -np.where(y, np.log(pc), np.log1p(-pc))
    return (p - y) ** 2


def paired_bootstrap(
    y: npt.ArrayLike,
    challenger: npt.ArrayLike,
    champion: npt.ArrayLike,
    *,
    metric_name: str = "auc",
    resamples: int = 1000,
    seed: int = 0,
    chunk: int = 100,
) -> FloatArray:
    """Improvement of challenger over champion on each paired bootstrap resample.

    Both models are scored on the same resampled rows (paired), so shared noise cancels. The sign is
    "positive = challenger better" for every metric (for losses the difference is champion - challenger).
    Resamples where the AUC is undefined (one class drawn) come back NaN.
    """
    yb = as_labels(y)
    a, b = as_scores(challenger, "challenger"), as_scores(champion, "champion")
    if not (yb.size == a.size == b.size):
        raise ValueError("paired_bootstrap: labels and both score arrays must have the same length")
    if resamples < 1:
        raise ValueError("resamples: must be at least 1")
    n = yb.size
    if n == 0:
        raise ValueError("paired_bootstrap: no rows")
    if metric_name not in HIGHER_IS_BETTER:
        raise ValueError(f"metric: {metric_name!r} is not one of auc, log_loss, brier")
    rng = np.random.default_rng(seed)
    out = np.empty(resamples, dtype="float64")
    if metric_name == "auc":
        ra, rb = _Ranked.of(yb, a), _Ranked.of(yb, b)
    else:
        loss_gain = _row_losses(metric_name, yb, b) - _row_losses(metric_name, yb, a)
    for lo in range(0, resamples, chunk):
        k = min(chunk, resamples - lo)
        idx = rng.integers(0, n, size=(k, n))
        if metric_name == "auc":
            n_pos = yb[idx].sum(axis=1).astype("float64")
            out[lo : lo + k] = ra.auc(idx, n_pos) - rb.auc(idx, n_pos)
        else:
            out[lo : lo + k] = loss_gain[idx].mean(axis=1)
    return out


def improvement(name: str, challenger_value: float, champion_value: float) -> float:
    """Challenger minus champion, signed so that positive means the challenger is better."""
    diff = challenger_value - champion_value
    return diff if HIGHER_IS_BETTER[name] else -diff
