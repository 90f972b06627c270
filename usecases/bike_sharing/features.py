"""Feast objects of the bike-sharing use case (its own Feast project, `bike_sharing`).

One global entity (the whole system), two feature views over parquet tables that retrain builds from
the landed hours (`data.feature_tables`) under ``$RETRAIN_HOME/offline/usecases/bike_sharing/``:

- ``bike_weather``: the weather observed during an hour, stamped at the hour's END (when it is known);
  a TTL of 3 h gives, at prediction time (1 h before the target hour), the last completed hour's
  weather, or an observation up to 3 h old;
- ``bike_demand``: lagged demand for each target hour, stamped at its prediction time;

and a python-mode on-demand view for what the request carries (calendar of the target hour in local
time, holiday, working day, season). The feature service ``bike_sharing_v1`` is the model's contract.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from feast import Entity, FeatureService, FeatureView, Field, FileSource, RequestSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, String

USECASE = "bike_sharing"


def table_path(name: str) -> str:
    """Absolute path of one feature table (Feast does not expand variables in Python definitions)."""
    home = os.environ.get("RETRAIN_HOME", "")
    if not home or not Path(home).is_absolute():
        raise RuntimeError("RETRAIN_HOME must be set to an absolute path before loading the bike_sharing features")
    return str(Path(home) / "offline" / "usecases" / USECASE / f"{name}.parquet")


system = Entity(name="bike_system", join_keys=["system"], value_type=ValueType.STRING,
                description="The bike-sharing system as a whole (one global key).")

weather_source = FileSource(name="bike_weather_source", path=table_path("weather"),
                            timestamp_field="event_timestamp")
demand_source = FileSource(name="bike_demand_source", path=table_path("demand"), timestamp_field="event_timestamp")

bike_weather = FeatureView(
    name="bike_weather",
    entities=[system],
    ttl=timedelta(hours=3),
    schema=[Field(name="prev_weathersit", dtype=String), Field(name="prev_temp", dtype=Float64),
            Field(name="prev_atemp", dtype=Float64), Field(name="prev_hum", dtype=Float64),
            Field(name="prev_windspeed", dtype=Float64)],
    source=weather_source,
    description="Weather of the last completed hour at prediction time (stamped at each hour's end).",
)

bike_demand = FeatureView(
    name="bike_demand",
    entities=[system],
    ttl=timedelta(hours=1),
    schema=[Field(name="cnt_lag_24h", dtype=Float64), Field(name="cnt_lag_168h", dtype=Float64),
            Field(name="cnt_mean_24h", dtype=Float64), Field(name="cnt_mean_7d", dtype=Float64)],
    source=demand_source,
    description="Lagged rentals known at prediction time (stamped at the target hour's prediction time).",
)

bike_request = RequestSource(
    name="bike_request",
    schema=[Field(name="target_epoch", dtype=Int64), Field(name="req_holiday", dtype=Int64),
            Field(name="req_workingday", dtype=Int64), Field(name="req_season", dtype=String)],
)


@on_demand_feature_view(
    sources=[bike_request],
    schema=[Field(name="hour", dtype=Int64), Field(name="weekday", dtype=Int64), Field(name="month", dtype=Int64),
            Field(name="holiday", dtype=Int64), Field(name="workingday", dtype=Int64),
            Field(name="season", dtype=String)],
    mode="python",
)
def bike_request_features(inputs: dict[str, Any]) -> dict[str, Any]:
    """Calendar of the target hour in Washington DC time, and the request's calendar flags."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    tz = ZoneInfo("America/New_York")
    local = [datetime.fromtimestamp(int(s), tz) for s in inputs["target_epoch"]]
    return {
        "hour": [t.hour for t in local],
        "weekday": [t.weekday() for t in local],
        "month": [t.month for t in local],
        "holiday": [int(v) for v in inputs["req_holiday"]],
        "workingday": [int(v) for v in inputs["req_workingday"]],
        "season": [str(v) for v in inputs["req_season"]],
    }


bike_sharing_v1 = FeatureService(
    name="bike_sharing_v1",
    features=[bike_request_features, bike_weather, bike_demand],
    description="Features of the bike-sharing model, version 1.",
)
