"""Train flow: fit a candidate on a window of scheduled departures and register it."""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from retrain.config import get_settings
from retrain.registry import open_registry
from retrain.train import TrainingError, feast_frame_provider, train_version


def retry_unless_bad_input(_task: Any, _run: Any, state: Any) -> bool:
    """Retry infrastructure hiccups, not refusals (a bad window fails the same way twice)."""
    return not isinstance(getattr(state, "data", None), TrainingError | ValueError)


@task(retries=1, retry_delay_seconds=10, retry_condition_fn=retry_unless_bad_input)
def train_task(window_from: str, window_to: str) -> dict[str, Any]:
    """All or nothing: a failure registers nothing and leaves no model in the store."""
    settings = get_settings()
    sessions = open_registry(settings)
    return train_version(settings, sessions, feast_frame_provider(settings), window_from, window_to).to_dict()


@flow(name="train", log_prints=True)
def train_flow(window_from: str, window_to: str) -> dict[str, Any]:
    """Train on flights departing in [window_from, window_to) (ISO dates, UTC); returns the version."""
    result = train_task(window_from, window_to)
    print(f"registered {result['version']} ({result['bento_model_tag']}): {result['n_train']:,} train / "
          f"{result['n_valid']:,} validation rows, validation {result['validation']}")
    return result
