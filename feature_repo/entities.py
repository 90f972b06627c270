"""Entities of the flights project: the keys feature rows are joined on."""

from feast import Entity, ValueType

airport = Entity(name="airport", join_keys=["origin"], value_type=ValueType.STRING,
                 description="Origin airport (FAA code); weather is per origin.")
aircraft = Entity(name="aircraft", join_keys=["tailnum"], value_type=ValueType.STRING,
                  description="Aircraft tail number; '' when the flight has none.")
carrier = Entity(name="carrier", join_keys=["carrier"], value_type=ValueType.STRING,
                 description="Two-letter carrier code.")
route = Entity(name="route", join_keys=["route"], value_type=ValueType.STRING,
               description="Origin-destination pair, e.g. 'JFK-LAX'.")
