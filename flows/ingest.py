"""Ingest flow: land a use case's batch file, or its history released up to a time, then rebuild its
feature tables (`retrain.usecase.landing.ingest`, the same step as `retrain ingest`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

from retrain.models.registry import open_registry
from retrain.usecase.landing import ingest
from retrain.usecase.pipeline import settings_of


class BatchRefused(ValueError):
    """The batch was refused (a contract or duplicate rule): retrying cannot help."""


def retry_unless_refused(_task: Any, _run: Any, state: Any) -> bool:
    """Retry I/O hiccups (a failed landing leaves nothing behind); a refused batch fails the same way twice."""
    return not isinstance(getattr(state, "data", None), ValueError)


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_refused, cache_policy=NONE)
def ingest_task(model_name: str, path: str | None, until: str | None) -> dict[str, Any]:
    """Validate and land one batch file, or the history released by `until` (idempotent)."""
    spec, settings = settings_of(model_name)
    result = ingest(spec, settings, open_registry(settings), path=None if path is None else Path(path), until=until)
    if result.get("status") == "rejected":
        raise BatchRefused(str(result.get("error", "batch rejected")))
    return result


@flow(name="ingest", log_prints=True)
def ingest_flow(path: str | None = None, until: str | None = None, model_name: str = "") -> dict[str, Any]:
    """Ingest `path` (a batch file) and/or replay the history up to `until` (ISO, UTC) for a use case
    (default: the default one)."""
    if path is None and until is None:
        raise ValueError("ingest_flow needs a path, an until time, or both")
    result: dict[str, Any] = {}
    if path is not None:
        result["file"] = ingest_task(model_name, path, None)
        print(result["file"].get("message", result["file"]))
    if until is not None:
        result["replay"] = ingest_task(model_name, None, until)
        print(f"replay up to {until}: {result['replay']}")
    return result
