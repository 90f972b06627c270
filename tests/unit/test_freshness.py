"""Feature freshness: a view whose newest online row is older than its cadence allows is stale, becomes one
`retrain.alert.stale_features` event per view and day, and the ledger records it without a retrain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from retrain.alerts import ledger
from retrain.core import db, events
from retrain.core.config import Settings
from retrain.features import freshness
from retrain.monitoring import alerts as monitor_alerts

T = datetime(2012, 6, 1, 12, 0, tzinfo=UTC)


def _view(tmp_path: Path, name: str, times: pd.DatetimeIndex, *, materialized_to: datetime | None = T,
          ttl_hours: float | None = 48, tags: dict[str, str] | None = None) -> Any:
    path = tmp_path / f"{name}.parquet"
    pd.DataFrame({"key": range(len(times)), "event_ts": times, "x": 1.0}).to_parquet(path)
    intervals = [(T - timedelta(days=30), materialized_to)] if materialized_to else []
    return SimpleNamespace(name=name, batch_source=SimpleNamespace(path=str(path), timestamp_field="event_ts"),
                           most_recent_end_time=materialized_to, materialization_intervals=intervals,
                           ttl=timedelta(hours=ttl_hours) if ttl_hours else None, tags=tags or {})


def _hourly(until: datetime = T + timedelta(hours=6)) -> pd.DatetimeIndex:
    return pd.date_range(T - timedelta(days=10), until, freq="h", tz="UTC")


def test_fresh_within_the_cadence_stale_past_it(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)  # freshness_factor 3: an hourly view may be 3 h old
    view = _view(tmp_path, "weather", _hourly())
    fresh = freshness.view_freshness(view, T + timedelta(hours=2), settings)
    assert fresh.cadence_hours == 1.0 and fresh.limit_hours == 3.0 and not fresh.stale
    assert fresh.newest_online == T.isoformat()  # rows after the materialized end are not online yet
    assert fresh.age_hours == 2.0
    stale = freshness.view_freshness(view, T + timedelta(hours=5), settings)
    assert stale.stale and stale.age_hours == 5.0
    assert stale.reason == "newest online row 5 h old > 3 h (freshness_factor 3 x cadence 1 h)"


def test_daily_view_cadence_and_ttl_note(tmp_path: Path) -> None:
    days = pd.date_range(T - timedelta(days=60), T, freq="D", tz="UTC")
    view = _view(tmp_path, "rates", days, ttl_hours=48)
    assert not freshness.view_freshness(view, T + timedelta(hours=60), Settings(home=tmp_path)).stale
    late = freshness.view_freshness(view, T + timedelta(hours=80), Settings(home=tmp_path))
    assert late.stale and late.limit_hours == 72.0 and "past the view's TTL (48 h): served as missing" in late.reason


def test_declared_max_age_tag_wins(tmp_path: Path) -> None:
    view = _view(tmp_path, "weather", _hourly(), tags={freshness.MAX_AGE_TAG: "12"})
    result = freshness.view_freshness(view, T + timedelta(hours=10), Settings(home=tmp_path))
    assert result.limit_hours == 12.0 and not result.stale
    bad = _view(tmp_path, "bad", _hourly(), tags={freshness.MAX_AGE_TAG: "soon"})
    with pytest.raises(ValueError, match="feature view bad: tag retrain.max_age_hours='soon' must be a number"):
        freshness.view_freshness(bad, T, Settings(home=tmp_path))


def test_never_materialized_is_stale_and_a_static_table_never(tmp_path: Path) -> None:
    never = freshness.view_freshness(_view(tmp_path, "w", _hourly(), materialized_to=None), T, Settings(home=tmp_path))
    assert never.stale and never.reason == "never materialized: run `retrain materialize`"
    static = _view(tmp_path, "planes", pd.DatetimeIndex([T - timedelta(days=400)] * 3))
    result = freshness.view_freshness(static, T + timedelta(days=30), Settings(home=tmp_path))
    assert not result.stale and result.cadence_hours is None and "static table" in result.reason


def test_stale_views_become_alerts_keyed_per_view_and_day(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    results = [freshness.view_freshness(_view(tmp_path, "weather", _hourly()), T + timedelta(hours=5), settings),
               freshness.view_freshness(_view(tmp_path, "fresh", _hourly()), T + timedelta(hours=1), settings)]
    alerts = freshness.stale_alerts(results, "bike", T + timedelta(hours=5))
    assert len(alerts) == 1
    payload = events.AlertPayload.model_validate(alerts[0])
    assert payload.kind == "stale_features" and payload.dedupe_key == "bike:stale:weather:2012-06-01"
    assert payload.value == 5.0 and payload.threshold == 3.0 and payload.reason.startswith("feature view weather")


def test_ledger_records_a_stale_alert_and_never_retrains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(home=tmp_path, model_name="bike")
    db.upgrade(settings.db_url)
    sessions = db.session_factory(db.make_engine(settings.db_url))
    payload = events.AlertPayload(kind="stale_features", dedupe_key="bike:stale:weather:2012-06-01", model="bike",
                                  reason="weather 5 h old")
    decision = ledger.admit(sessions, settings, payload, T, model_name="bike")
    assert not decision.run and decision.outcome == "recorded" and "never starts a retrain" in decision.detail
    sent: list[str] = []
    monkeypatch.setattr(monitor_alerts, "emit", lambda name, *_a, **_k: sent.append(name) or True)
    again = {**payload.event_payload(), "dedupe_key": payload.dedupe_key}
    new = {**again, "dedupe_key": "bike:stale:weather:2012-06-02"}
    assert monitor_alerts.send_notices(settings, sessions, "bike", [again, new]) == {"sent": 1, "skipped": 1}
    assert sent == ["retrain.alert.stale_features"]
