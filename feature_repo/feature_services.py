"""Feature services: `flight_delay_v1` is the one contract for training sets and online lookups."""

from feast import FeatureService

from feature_views import carrier_stats, plane_attributes, request_time_features, route_stats, weather_hourly

flight_delay_v1 = FeatureService(
    name="flight_delay_v1",
    features=[weather_hourly, plane_attributes, carrier_stats, route_stats, request_time_features],
    description="Features of the flight-delay model, version 1.",
)
