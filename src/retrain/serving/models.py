"""What every use case's service says about itself: `GET /model`, the models it describes, and the body
of every error answer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

# the datetimes a service accepts: inside pandas' nanosecond range, which the prediction log's readers
# (monitoring, outcomes) convert to; outside it a request would fail or poison the log
EARLIEST = datetime(1678, 1, 1, tzinfo=UTC)
LATEST = datetime(2261, 12, 31, 23, 59, 59, tzinfo=UTC)
RANGE_TEXT = "years 1678 to 2261"


def served_time(value: datetime) -> datetime:
    """An aware request datetime in UTC; refused (`datetime_range`) outside EARLIEST..LATEST."""
    try:
        utc = value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+05:00 and the like: not representable in UTC
        utc = None
    if utc is None or not EARLIEST <= utc <= LATEST:
        raise PydanticCustomError("datetime_range", "datetime '{value}' is outside the {range} (UTC)",
                                  {"value": value.isoformat(), "range": RANGE_TEXT})
    return utc


class ModelDescription(BaseModel):
    """A loaded model as the service sees it."""

    version: str
    bento_model_tag: str
    feature_service: str
    train_from: datetime | None
    train_to: datetime | None
    promoted_at: datetime | None = Field(description="When the alias last moved to this version.")
    loaded_at: datetime
    generation: int | None = None


class ModelInfo(BaseModel):
    """`GET /model`: what this worker serves and what the registry says."""

    model_name: str
    champion: ModelDescription | None
    challenger: ModelDescription | None = Field(description="Scored in shadow, never returned.")
    registry_champion: str | None = Field(description="Version the registry's champion alias points at.")
    registry_challenger: str | None
    in_sync: bool = Field(description="This worker serves the registry's champion.")
    last_error: str | None = Field(description="Why the last model load failed, if it did.")
    follow_seconds: float | None = Field(description="Registry poll interval; null when pinned.")
    pinned: bool
    worker_pid: int
    clock: str = Field(default="real", description="The time this worker stamps predictions with: `real` "
                       "(wall-clock UTC) or the simulated present (ISO 8601) of a replay (setting "
                       "simulated_clock, off unless a demo turned it on).")
    stale_features: list[str] = Field(default_factory=list, description="Feature views whose newest online row "
                                      "is older than their cadence allows (checked every serve_freshness_seconds).")
    features: list[dict[str, Any]] = Field(default_factory=list, description="Each feature view's freshness: "
                                           "newest online row, cadence, age, limit, stale and why.")



class ErrorItem(BaseModel):
    """One rule a request broke: where, which rule, and what it says (never the input itself)."""

    model_config = ConfigDict(extra="forbid")

    loc: list[str | int] = Field(description="Path to the offending value in the body, e.g. [\"rows\", 0, \"ts\"]; "
                                             "empty for the body as a whole.")
    type: str = Field(description="The rule, e.g. `missing`, `extra_forbidden`, `too_long`, `timezone_required`.")
    msg: str


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer of a service: what went wrong and, for a body that broke the request
    schema, each broken rule."""

    model_config = ConfigDict(extra="forbid")

    error: str = Field(description="What went wrong, for a person to read.")
    detail: list[ErrorItem] = Field(default_factory=list, description="The broken rules of a body that broke the "
                                    "request schema (400), each naming its field; absent otherwise.")
