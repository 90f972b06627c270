"""Feature freshness: is each feature view's newest online row as recent as its cadence says it should be?

For every feature view of the use case's Feast store, the newest row the online store holds is the
newest event timestamp in the view's offline table at or before the view's last materialized end
(materialization copies exactly those rows). Its age at `now` is compared with the view's expected
cadence: the typical gap between successive event timestamps in its table (the median of the last
gaps), or the view's tag `retrain.max_age_hours` when its repository declares one. A view is stale
when the age passes `freshness_factor` x cadence: ingestion or materialization stopped. A view with a
single timestamp (a static table) has no cadence and is never stale.

Stale views become `retrain.alert.stale_features` events (one per view and day), show in
`retrain status` and the service's `GET /model`, and serving counts predictions made while any view
is stale. The ledger records the alert; it never starts a retrain (retraining on stale features
cannot help).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retrain.core.config import Settings
from retrain.core.times import TimeLike, to_utc

MAX_AGE_TAG = "retrain.max_age_hours"
CADENCE_GAPS = 1000  # the cadence is the median of this many latest gaps between distinct timestamps


@dataclass(frozen=True)
class ViewFreshness:
    """One feature view's freshness at `checked_at` (ages and limits in hours)."""

    view: str
    checked_at: str
    newest_online: str | None
    materialized_to: str | None
    cadence_hours: float | None
    limit_hours: float | None
    age_hours: float | None
    ttl_hours: float | None
    stale: bool
    reason: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _timestamps(view: Any) -> pd.Series | None:
    """The event timestamps of a view's local parquet table (None: not a local file, or no such column)."""
    import pyarrow.parquet as pq

    source = getattr(view, "batch_source", None)
    path, field = getattr(source, "path", None), getattr(source, "timestamp_field", None)
    if not path or not field or "://" in str(path) or not Path(path).is_file():
        return None
    if field not in pq.ParquetFile(path).schema_arrow.names:
        return None
    column = pq.read_table(path, columns=[field]).column(field).to_pandas()
    return pd.to_datetime(column, utc=True).dropna()


def cadence_hours(times: pd.Series) -> float | None:
    """The typical gap between successive distinct timestamps, in hours (None: fewer than two)."""
    distinct = np.unique(times.to_numpy(dtype="datetime64[ns]"))
    if distinct.size < 2:
        return None
    gaps = np.diff(distinct[-(CADENCE_GAPS + 1):]).astype("timedelta64[s]").astype("float64") / 3600.0
    return float(np.median(gaps))


def _declared_max_age(view: Any) -> float | None:
    raw = (getattr(view, "tags", None) or {}).get(MAX_AGE_TAG)
    if raw in (None, ""):
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"feature view {view.name}: tag {MAX_AGE_TAG}={raw!r} must be a number of hours") from exc
    if value <= 0:
        raise ValueError(f"feature view {view.name}: tag {MAX_AGE_TAG}={raw!r} must be > 0")
    return value


def view_freshness(view: Any, now: TimeLike, settings: Settings) -> ViewFreshness:
    """Freshness of one registered feature view (see the module docstring)."""
    at = to_utc(now)
    end = view.most_recent_end_time
    materialized_to = to_utc(end) if end is not None and any(s <= e for s, e in view.materialization_intervals) \
        else None
    ttl = view.ttl.total_seconds() / 3600.0 if getattr(view, "ttl", None) else None
    common = {"view": view.name, "checked_at": at.isoformat(), "ttl_hours": ttl,
              "materialized_to": materialized_to.isoformat() if materialized_to is not None else None}
    if materialized_to is None:
        return ViewFreshness(**common, newest_online=None, cadence_hours=None, limit_hours=None, age_hours=None,
                             stale=True, reason="never materialized: run `retrain materialize`")
    times = _timestamps(view)
    if times is None or times.empty:
        return ViewFreshness(**common, newest_online=None, cadence_hours=None, limit_hours=None, age_hours=None,
                             stale=False, reason="no local offline table to read the newest row from: not checked")
    online = times[times <= materialized_to]
    newest = online.max() if not online.empty else None
    cadence = cadence_hours(times)
    declared = _declared_max_age(view)
    limit = declared if declared is not None else (settings.freshness_factor * cadence if cadence else None)
    if newest is None:
        return ViewFreshness(**common, newest_online=None, cadence_hours=cadence, limit_hours=limit, age_hours=None,
                             stale=True, reason="the online store holds no row of this view")
    age = (at - newest).total_seconds() / 3600.0
    if limit is None:
        stale, reason = False, "a single timestamp (a static table): no cadence to miss"
    elif age > limit:
        source = f"tag {MAX_AGE_TAG}" if declared is not None else \
            f"freshness_factor {settings.freshness_factor:g} x cadence {cadence:.3g} h"
        expired = f"; past the view's TTL ({ttl:g} h): served as missing" if ttl and age > ttl else ""
        stale, reason = True, f"newest online row {age:.3g} h old > {limit:.3g} h ({source}){expired}"
    else:
        stale, reason = False, f"newest online row {age:.3g} h old <= {limit:.3g} h"
    return ViewFreshness(**common, newest_online=newest.isoformat(), cadence_hours=cadence, limit_hours=limit,
                         age_hours=age, stale=stale, reason=reason)


def check_freshness(store: Any, settings: Settings, now: TimeLike) -> list[ViewFreshness]:
    """Freshness of every feature view in the store's registry, by name."""
    return [view_freshness(v, now, settings) for v in sorted(store.list_feature_views(), key=lambda v: v.name)]


def stale_alerts(results: list[ViewFreshness], model_name: str, now: datetime) -> list[dict[str, Any]]:
    """`stale_features` alert payloads, one per stale view, keyed per view and day."""
    day = to_utc(now).strftime("%Y-%m-%d")
    return [{"kind": "stale_features", "metric": f"age_hours:{r.view}", "value": r.age_hours,
             "threshold": r.limit_hours, "reason": f"feature view {r.view}: {r.reason}",
             "dedupe_key": f"{model_name}:stale:{r.view}:{day}", "source": "freshness", "model": model_name}
            for r in results if r.stale]
