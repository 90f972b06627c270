"""Evaluate flow: challenger vs champion on a fresh labelled window; decide, record, promote."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from sqlalchemy.exc import OperationalError

from retrain.usecase.pipeline import pipeline_for


def retry_if_transient(_task: Any, _run: Any, state: Any) -> bool:
    """Retry a database or network hiccup; never a refusal or a failed build (they fail the same way)."""
    return isinstance(getattr(state, "data", None), OperationalError | ConnectionError | TimeoutError)


@task(retries=1, retry_delay_seconds=10, retry_condition_fn=retry_if_transient)
def evaluate_task(version: str, window_from: str | None, window_to: str | None, promote: bool,
                  build_bento: bool | None, feature_migration: str | None, actor: str,
                  model_name: str = "flight_delay") -> dict[str, Any]:
    """Runs the evaluator; its artifacts (markdown + table) are published from inside this task run."""
    outcome = pipeline_for(model_name).evaluate(version, window_from, window_to, actor=actor, act=promote,
                                                build_bento=build_bento, feature_migration=feature_migration)
    return outcome.to_dict()


@flow(name="evaluate", log_prints=True)
def evaluate_flow(version: str, window_from: str | None = None, window_to: str | None = None,
                  promote: bool = True, build_bento: bool | None = None, feature_migration: str | None = None,
                  actor: str = "flow:evaluate", model_name: str = "flight_delay") -> dict[str, Any]:
    """Evaluate `version` of use case `model_name` (default window: one month from the end of its
    training window). `build_bento` None follows the `retrain_build_bento` setting."""
    result = evaluate_task(version, window_from, window_to, promote, build_bento, feature_migration, actor,
                           model_name)
    print(f"evaluation {result['evaluation_id']}: {result['decision']} {result['version']} vs "
          f"{result['champion'] or 'no champion'}; report {result['report']}")
    for gate in result["gates"]:
        print(f"  {gate['name']:13} {'pass' if gate['passed'] else 'FAIL'}  {gate['detail']}")
    return result
