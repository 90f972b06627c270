"""Materialize flow: bring the Feast online store up to a time."""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from retrain.core.config import get_settings
from retrain.features.store import materialize_until, open_store


@task(retries=2, retry_delay_seconds=5)
def materialize_task(until: str) -> dict[str, Any]:
    """One serialized materialization (a file lock guards the registry's interval list)."""
    settings = get_settings()
    return materialize_until(open_store(settings), settings, until)


@flow(name="materialize", log_prints=True)
def materialize_flow(until: str) -> dict[str, Any]:
    """Load feature rows up to `until` (ISO time, UTC) into the online store."""
    result = materialize_task(until)
    print(f"online store up to {result['until']} in {result['seconds']} s")
    return result
