"""Offline sources: parquet feature tables written by retrain's ingestion under $RETRAIN_HOME."""

from feast import FileSource, RequestSource
from feast.field import Field
from feast.types import Float64, Int64

from repo_paths import feature_table

weather_source = FileSource(name="weather_hourly_source", path=feature_table("weather"),
                            timestamp_field="event_timestamp", created_timestamp_column="created")
planes_source = FileSource(name="planes_source", path=feature_table("planes"),
                           timestamp_field="event_timestamp", created_timestamp_column="created")
carrier_stats_source = FileSource(name="carrier_stats_source", path=feature_table("carrier_stats"),
                                  timestamp_field="event_timestamp", created_timestamp_column="created")
route_stats_source = FileSource(name="route_stats_source", path=feature_table("route_stats"),
                                timestamp_field="event_timestamp", created_timestamp_column="created")

# Known at request time: the scheduled departure (Unix seconds, UTC) and the distance.
flight_request = RequestSource(
    name="flight_request",
    schema=[Field(name="sched_dep_epoch", dtype=Int64), Field(name="distance", dtype=Float64)],
)
