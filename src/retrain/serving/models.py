"""What every use case's service says about itself: `GET /model` and the models it describes."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


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

