"""Train flow: fit a candidate of a use case on a window of its events and register it."""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from retrain.models.train import TrainingError
from retrain.usecase.pipeline import pipeline_for


def retry_unless_bad_input(_task: Any, _run: Any, state: Any) -> bool:
    """Retry infrastructure hiccups, not refusals (a bad window fails the same way twice)."""
    return not isinstance(getattr(state, "data", None), TrainingError | ValueError)


@task(retries=1, retry_delay_seconds=10, retry_condition_fn=retry_unless_bad_input)
def train_task(model_name: str, window_from: str, window_to: str) -> dict[str, Any]:
    """All or nothing: a failure registers nothing and leaves no model in the store."""
    return pipeline_for(model_name).train_version(window_from, window_to).to_dict()


@flow(name="train", log_prints=True)
def train_flow(window_from: str, window_to: str, model_name: str = "flight_delay") -> dict[str, Any]:
    """Train use case `model_name` on events in [window_from, window_to) (ISO dates, UTC); returns the version."""
    result = train_task(model_name, window_from, window_to)
    print(f"registered {result['version']} ({result['bento_model_tag']}): {result['n_train']:,} train / "
          f"{result['n_valid']:,} validation rows, validation {result['validation']}")
    return result
