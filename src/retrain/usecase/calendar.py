"""Calendar features derived from an event's time at request time (hour, weekday, month).

The same function computes them for training sets and inside a use case's on-demand feature view,
so offline and online agree. `useful_parts` decides at `retrain init` which parts carry signal for
the label (a daily dataset has no hour of day; a few weeks of data say nothing about months).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

PARTS = ("hour", "weekday", "month")
MIN_SPAN_DAYS = {"hour": 1.0, "weekday": 14.0, "month": 300.0}
MIN_EXPLAINED = 0.002  # share of the label's variance a part must explain (epsilon²)
MAX_P_VALUE = 0.001


def feature_name(time_col: str, part: str) -> str:
    """`<time_col>_<part>`, the feature's name in the spec and the feature service."""
    return f"{time_col}_{part}"


def calendar_values(epoch_seconds: Sequence[int], tz: str, parts: Sequence[str]) -> dict[str, list[int]]:
    """Each part for each time (Unix seconds), in time zone `tz`; python lists (Feast python mode)."""
    zone = ZoneInfo(tz)
    local = [datetime.fromtimestamp(int(s), zone) for s in epoch_seconds]
    get = {"hour": lambda t: t.hour, "weekday": lambda t: t.weekday(), "month": lambda t: t.month}
    return {part: [get[part](t) for t in local] for part in parts}


def add_calendar(frame: pd.DataFrame, time_col: str, parts: Sequence[str], tz: str) -> pd.DataFrame:
    """`frame` with one float column per part (vectorized; equal to `calendar_values`)."""
    if not parts:
        return frame
    times = pd.to_datetime(frame[time_col], utc=True).dt.tz_convert(tz)
    out = frame.copy()
    for part in parts:
        values = {"hour": times.dt.hour, "weekday": times.dt.weekday, "month": times.dt.month}[part]
        out[feature_name(time_col, part)] = values.astype("float64").to_numpy()
    return out


def explained_share(groups: pd.Series, y: pd.Series) -> tuple[float, float]:
    """(epsilon², p): the share of y's variance the group means explain, corrected for the number of
    groups (pure noise scores ~0, where plain eta² scores ~(k-1)/n), and the one-way ANOVA p-value."""
    from scipy.stats import f as f_dist

    values = y.to_numpy(dtype="float64")
    codes, _ = pd.factorize(groups.to_numpy())
    n, k = len(values), int(codes.max()) + 1 if len(codes) else 0
    total = float(((values - values.mean()) ** 2).sum()) if n else 0.0
    if n < 3 or k < 2 or n <= k or total == 0:
        return 0.0, 1.0
    counts = np.bincount(codes, minlength=k)
    means = np.bincount(codes, weights=values, minlength=k) / np.maximum(counts, 1)
    between = float((counts * (means - values.mean()) ** 2).sum())
    within = (total - between) / (n - k)
    if within <= 0:
        return 1.0, 0.0
    f_stat = (between / (k - 1)) / within
    return (between - (k - 1) * within) / total, float(f_dist.sf(f_stat, k - 1, n - k))


def useful_parts(times: pd.Series, y: pd.Series, tz: str) -> dict[str, float]:
    """Parts that vary in the data, span enough of it and explain some of the label: part -> epsilon²."""
    local = pd.to_datetime(times, utc=True).dt.tz_convert(tz)
    span = (local.max() - local.min()).total_seconds() / 86_400
    labelled = y.notna().to_numpy()
    out: dict[str, float] = {}
    for part in PARTS:
        values = {"hour": local.dt.hour, "weekday": local.dt.weekday, "month": local.dt.month}[part]
        if span < MIN_SPAN_DAYS[part] or values.nunique() < 2:
            continue
        score, p_value = explained_share(values[labelled], y[labelled].astype("float64"))
        if score >= MIN_EXPLAINED and p_value < MAX_P_VALUE:
            out[part] = round(score, 4)
    return out
