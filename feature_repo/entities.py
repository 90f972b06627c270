"""Entities of the flights project: the keys feature rows are joined on.

Time-varying features are keyed by a time bucket as well as the natural key (weather by origin and
UTC hour, delay stats by carrier or route and UTC day). Offline, that turns the point-in-time join
into an exact-key join (Feast's join on a 3-value `origin` key compared every flight with ~9k
weather rows); online, a lookup returns exactly the bucket training used, however far ahead the
store has been materialized.
"""

from feast import Entity, ValueType

airport_hour = Entity(name="airport_hour", join_keys=["origin_hour"], value_type=ValueType.STRING,
                      description="Origin airport and UTC hour of departure, e.g. 'EWR|2013-01-01T10'.")
aircraft = Entity(name="aircraft", join_keys=["tailnum"], value_type=ValueType.STRING,
                  description="Aircraft tail number; '' when the flight has none.")
carrier_day = Entity(name="carrier_day", join_keys=["carrier_day"], value_type=ValueType.STRING,
                     description="Carrier code and UTC day of departure, e.g. 'UA|2013-01-01'.")
route_day = Entity(name="route_day", join_keys=["route_day"], value_type=ValueType.STRING,
                   description="Origin-destination pair and UTC day, e.g. 'JFK-LAX|2013-01-01'.")
