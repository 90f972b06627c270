"""Settings of the shipped flights use case (its spec's overrides on top of the given values)."""

from __future__ import annotations

from typing import Any

from retrain.core.config import Settings
from retrain.usecase.catalog import load_usecase, settings_for


def flight_settings(**values: Any) -> Settings:
    """`Settings(**values)` as the flight_delay use case runs them (model name, feature service, bento)."""
    base = Settings(**values)
    return settings_for(load_usecase(base, "flight_delay"), base)
