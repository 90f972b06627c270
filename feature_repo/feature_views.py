"""Feature views: weather, plane attributes, carrier and route delay rates, request-time features."""

from datetime import timedelta
from typing import Any

from feast import FeatureView
from feast.field import Field
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64

from data_sources import (
    carrier_stats_source,
    flight_request,
    planes_source,
    route_stats_source,
    weather_source,
)
from entities import aircraft, airport_hour, carrier_day, route_day

weather_hourly = FeatureView(
    name="weather_hourly",
    entities=[airport_hour],
    ttl=timedelta(hours=1),
    schema=[
        Field(name="temp", dtype=Float64), Field(name="dewp", dtype=Float64),
        Field(name="humid", dtype=Float64), Field(name="wind_dir", dtype=Float64),
        Field(name="wind_speed", dtype=Float64), Field(name="wind_gust", dtype=Float64),
        Field(name="precip", dtype=Float64), Field(name="pressure", dtype=Float64),
        Field(name="visib", dtype=Float64),
    ],
    source=weather_source,
    description="Weather at the origin in the departure hour (UTC), last observation carried <= 2 h.",
)

plane_attributes = FeatureView(
    name="plane_attributes",
    entities=[aircraft],
    ttl=timedelta(days=0),
    schema=[
        Field(name="plane_year", dtype=Float64), Field(name="plane_seats", dtype=Float64),
        Field(name="plane_engines", dtype=Float64),
    ],
    source=planes_source,
    description="Static aircraft attributes from the planes table.",
)

carrier_stats = FeatureView(
    name="carrier_stats",
    entities=[carrier_day],
    ttl=timedelta(days=1),
    schema=[
        Field(name="carrier_late_rate_7d", dtype=Float64), Field(name="carrier_flights_7d", dtype=Float64),
        Field(name="carrier_mean_delay_7d", dtype=Float64), Field(name="carrier_late_rate_28d", dtype=Float64),
    ],
    source=carrier_stats_source,
    description="Carrier arrival-delay rates from flights that LANDED before each daily snapshot.",
)

route_stats = FeatureView(
    name="route_stats",
    entities=[route_day],
    ttl=timedelta(days=1),
    schema=[
        Field(name="route_late_rate_28d", dtype=Float64), Field(name="route_flights_28d", dtype=Float64),
        Field(name="route_mean_delay_28d", dtype=Float64),
    ],
    source=route_stats_source,
    description="Route (origin-dest) arrival-delay rates from flights that LANDED before each snapshot.",
)


@on_demand_feature_view(
    sources=[flight_request],
    schema=[
        Field(name="dep_hour", dtype=Int64), Field(name="dep_weekday", dtype=Int64),
        Field(name="dep_month", dtype=Int64), Field(name="dep_minute_of_day", dtype=Int64),
        Field(name="flight_distance", dtype=Float64),
    ],
    mode="python",
)
def request_time_features(inputs: dict[str, Any]) -> dict[str, Any]:
    """Hour, weekday, month in New York local time (all origins are NYC), plus the distance."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    tz = ZoneInfo("America/New_York")
    local = [datetime.fromtimestamp(int(s), tz) for s in inputs["sched_dep_epoch"]]
    return {
        "dep_hour": [t.hour for t in local],
        "dep_weekday": [t.weekday() for t in local],
        "dep_month": [t.month for t in local],
        "dep_minute_of_day": [t.hour * 60 + t.minute for t in local],
        "flight_distance": [float(d) for d in inputs["distance"]],
    }
