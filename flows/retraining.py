"""Retrain flow: started by `retrain.alert.*` events through the deployment trigger in prefect.yaml.

Parameters arrive as strings rendered from the event (each with a default); the alert ledger
decides whether this run does any work, and every skip is recorded with its reason.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from retrain.alerts import approval
from retrain.alerts.reconcile import covering_retrain, reconcile_runs
from retrain.alerts.retraining import run_retrain
from retrain.core import clock
from retrain.core.events import AlertPayload
from retrain.models.registry import open_registry
from retrain.usecase.pipeline import pipeline_for, settings_of

Scalar = str | float | int | None


@task(retries=1, retry_delay_seconds=5, cache_policy=NONE)
def catch_up_task(model_name: str, now: datetime) -> dict[str, Any]:
    """Land what the clock has released and bring the online store up to `now`."""
    return pipeline_for(model_name).catch_up(now)


@task(cache_policy=NONE)
def train_task(model_name: str, start: datetime, end: datetime) -> str:
    """Train a challenger on [start, end); returns its version."""
    return pipeline_for(model_name).train(start, end)


@task(cache_policy=NONE)
def evaluate_task(model_name: str, version: str, start: datetime, end: datetime, act: bool = True) -> Any:
    """Champion vs challenger on [start, end); promotes on a pass when `act` (bento build first)."""
    return pipeline_for(model_name).evaluate(version, start, end, actor="flow:retrain", act=act)


@task(cache_policy=NONE)
def reconcile_task(model_name: str) -> dict[str, Any]:
    """Record retrain runs the concurrency limit cancelled (they never reach the ledger themselves)."""
    _spec, settings = settings_of(model_name)
    return reconcile_runs(settings, open_registry(settings), clock.now(settings)).as_json()


@flow(name="retrain", log_prints=True)
def retrain_flow(kind: str = "manual", model_name: str = "flight_delay", metric: Scalar = "", value: Scalar = "",
                 threshold: Scalar = "", window_from: Scalar = "", window_to: Scalar = "", dedupe_key: Scalar = "",
                 reason: Scalar = "", source: Scalar = "event", event_id: Scalar = "",
                 raised_at: Scalar = "") -> dict[str, Any]:
    """Ledger-guarded retrain for one alert: catch up, train, shadow, evaluate, promote or reject.

    Payload fields are rendered from the event as JSON values (a number stays a number), so each
    parameter takes a string, a number or null; `AlertPayload` does the typing and names a bad field.
    """
    _spec, settings = settings_of(model_name or "")  # empty: the default use case
    payload = AlertPayload.model_validate({
        "kind": kind or "manual", "metric": metric, "value": value, "threshold": threshold,
        "window_from": window_from or None, "window_to": window_to or None,
        "dedupe_key": "" if dedupe_key is None else str(dedupe_key),
        "reason": str(reason or ""), "source": str(source or "event"), "model": model_name or settings.model_name,
    })
    logger = get_run_logger()
    run_id = str(flow_run.get_id() or "")
    sessions = open_registry(settings)
    try:
        covered = covering_retrain(sessions, run_id, _when(raised_at), model_name=settings.model_name)
    except Exception as exc:  # the check only prevents a redundant retrain; never block one on it
        logger.warning("could not check for a retrain that already covers this alert: %s", exc)
        covered = None
    ask = settings.retrain_require_approval  # then the evaluation does not act: a person decides (or the timeout)
    report = run_retrain(
        settings, sessions, payload, clock.now(settings),
        train=lambda a, b: train_task(settings.model_name, a, b),
        evaluate=lambda v, a, b: evaluate_task(settings.model_name, v, a, b, act=not ask),
        approve=(lambda outcome: approval.ask_in_prefect(
            approval.describe(settings.model_name, outcome), settings.retrain_approval_timeout_hours,
            key=f"approval-{outcome.evaluation_id}")) if ask else None,
        catch_up=lambda now: catch_up_task(settings.model_name, now), flow_run_id=run_id, covered_by=covered,
        # crashed, failed or cancelled runs first: a dead run must not hold this alert's dedupe key
        reconcile=lambda: reconcile_runs(settings, sessions, clock.now(settings)),
    )
    logger.info("alert %s (%s, event %s): %s", report.alert_id, report.outcome, event_id or "-", report.detail)
    reconciled = reconcile_task(settings.model_name, return_state=True)  # a failure here must not fail the retrain
    if reconciled.is_completed():
        return {**report.as_json(), "reconcile": reconciled.result()}
    logger.warning("recording ended (cancelled, crashed, failed) retrain runs failed: %s", reconciled.message)
    return report.as_json()


def _when(value: Scalar) -> datetime | None:
    """The server's receive time of the triggering event, as rendered into the parameters (or None)."""
    if value in (None, ""):
        return None
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)

