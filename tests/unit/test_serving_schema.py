"""The /predict contract: strict validation with field-naming errors, and flight ids that match the data."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
from pydantic import ValidationError

from flight_delay.data import load_flights
from flight_delay.serving_schema import FlightIn, PredictRequest, batch_limit_error, flight_id

GOOD: dict[str, Any] = {"carrier": "UA", "flight": 1545, "tailnum": "N14228", "origin": "EWR", "dest": "IAH",
                        "sched_dep": "2013-01-01T05:15:00-05:00", "distance": 1400}


def _errors(body: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as info:
        PredictRequest.model_validate_json(pd.Series([body]).to_json(orient="records")[1:-1])
    return [dict(e) for e in info.value.errors()]


def _one(**changes: Any) -> list[dict[str, Any]]:
    flight = {**GOOD, **changes}
    return _errors({"flights": [{k: v for k, v in flight.items() if v is not ...}]})


def test_good_flight_is_normalized_to_utc_and_upper_case() -> None:
    req = PredictRequest.model_validate_json(
        '{"flights": [{"carrier": " ua", "flight": 1545, "origin": "ewr", "dest": "IAH", '
        '"sched_dep": "2013-01-01T05:15:00-05:00", "distance": 1400}]}')
    f = req.flights[0]
    assert (f.carrier, f.origin, f.tailnum) == ("UA", "EWR", None)
    assert f.sched_dep == pd.Timestamp("2013-01-01T10:15:00Z").to_pydatetime()
    assert f.sched_dep.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("changes", "loc", "needle"),
    [
        ({"carrier": ...}, ("flights", 0, "carrier"), "Field required"),
        ({"flight": "1545"}, ("flights", 0, "flight"), "valid integer"),
        ({"flight": 12.0}, ("flights", 0, "flight"), "valid integer"),
        ({"distance": "far"}, ("flights", 0, "distance"), "valid number"),
        ({"distance": -3}, ("flights", 0, "distance"), "greater than 0"),
        ({"origin": "ZZZ"}, ("flights", 0, "origin"), "unknown airport code 'ZZZ'"),
        ({"dest": "XXX"}, ("flights", 0, "dest"), "unknown airport code 'XXX'"),
        ({"carrier": "ZZ"}, ("flights", 0, "carrier"), "unknown carrier 'ZZ'"),
        ({"sched_dep": "tomorrow morning"}, ("flights", 0, "sched_dep"), "valid datetime"),
        ({"sched_dep": "2013-01-01T05:15:00"}, ("flights", 0, "sched_dep"), "no UTC offset"),
        ({"sched_dep": 1357035300}, ("flights", 0, "sched_dep"), "valid datetime"),
        ({"seats": 3}, ("flights", 0, "seats"), "Extra inputs are not permitted"),
    ],
)
def test_bad_flight_names_field_and_rule(changes: dict[str, Any], loc: tuple[Any, ...], needle: str) -> None:
    errors = _one(**changes)
    assert [e["loc"] for e in errors] == [loc]
    assert needle in errors[0]["msg"]


def test_empty_batch_and_unknown_top_level_key_are_refused() -> None:
    assert _errors({"flights": []})[0]["type"] == "too_short"
    errors = _errors({"flights": [GOOD], "debug": True})
    assert errors[0]["loc"] == ("debug",) and errors[0]["type"] == "extra_forbidden"


def test_batch_limit_error_has_the_pydantic_shape() -> None:
    err = batch_limit_error(1500, 1000).errors()[0]
    assert err["loc"] == ("flights",) and err["type"] == "too_long"
    assert err["msg"] == "batch of 1500 flights exceeds the limit of 1000 (RETRAIN_SERVE_MAX_BATCH)"


def test_flight_id_equals_the_training_data_id_across_dst() -> None:
    flights = load_flights()
    # winter and summer time, midnight-adjacent departures, all three origins
    sample = pd.concat([flights[flights["month"] == m].sample(200, random_state=m) for m in (1, 3, 7, 11)])
    sample = pd.concat([sample, flights[flights["sched_dep_time"] < 100].head(50)])
    for _, row in sample.iterrows():
        f = FlightIn(carrier=row["carrier"], flight=int(row["flight"]), origin=row["origin"], dest=row["dest"],
                     sched_dep=row["sched_dep"].to_pydatetime(), distance=float(row["distance"]))
        assert flight_id(f) == row["flight_id"]
