"""Ingest flow: land a flights file or replay the real data up to a time, then refresh the feature tables."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

from flight_delay.features import refresh_feature_tables
from flight_delay.ingest import BatchRejected, ingest_file, replay_until
from retrain.config import get_settings
from retrain.registry import open_registry


def retry_unless_refused(_task: Any, _run: Any, state: Any) -> bool:
    """Retry I/O hiccups (a failed landing leaves nothing behind); a refused batch fails the same way twice."""
    return not isinstance(getattr(state, "data", None), BatchRejected | ValueError)


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_refused, cache_policy=NONE)
def ingest_file_task(path: str) -> dict[str, Any]:
    """Validate and land one CSV/parquet batch; returns the batch result."""
    settings = get_settings()
    return ingest_file(path, settings=settings, sessions=open_registry(settings)).model_dump(mode="json")


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_refused, cache_policy=NONE)
def replay_task(until: str) -> dict[str, Any]:
    """Land every flight released by `until` and every outcome matured by then (idempotent)."""
    settings = get_settings()
    return replay_until(settings, open_registry(settings), until).counts()


@task(retries=2, retry_delay_seconds=5, cache_policy=NONE)
def refresh_features_task(known_until: str | None) -> dict[str, int]:
    """Rebuild the parquet feature tables from the landed flights and outcomes."""
    return refresh_feature_tables(get_settings(), known_until)


@flow(name="ingest", log_prints=True)
def ingest_flow(path: str | None = None, until: str | None = None) -> dict[str, Any]:
    """Ingest `path` (a flights file) and/or replay the 2013 data up to `until` (ISO, UTC)."""
    if path is None and until is None:
        raise ValueError("ingest_flow needs a path, an until time, or both")
    result: dict[str, Any] = {}
    if path is not None:
        result["file"] = ingest_file_task(path)
        print(result["file"]["message"])
    if until is not None:
        result["replay"] = replay_task(until)
        print(f"replay up to {until}: {result['replay']}")
    landed = (result.get("file", {}).get("accepted", 0) + result.get("file", {}).get("outcomes", 0)
              + len(result.get("replay", {}).get("batch_ids", [])))
    if landed:
        result["feature_tables"] = refresh_features_task(until)
    return result
