"""Monitor flow: drift and decay over the recent prediction log; firing rules become events."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from retrain.core import clock
from retrain.core.jsonsafe import json_safe
from retrain.core.times import to_utc
from retrain.models.registry import open_registry
from retrain.monitoring.alerts import send_alerts, send_notices
from retrain.monitoring.monitor import (
    ESTIMATE_METRICS,
    estimate_history,
    monitoring_history,
    plot_history,
    run_monitoring,
)
from retrain.usecase.pipeline import settings_of


@task(retries=2, retry_delay_seconds=5)
def monitor_task(model_name: str, as_of: str | None, window_days: float | None) -> dict[str, Any]:
    """One monitoring pass; returns the summary and the alerts that fired (as event payloads)."""
    _spec, settings = settings_of(model_name)
    now = to_utc(as_of).to_pydatetime() if as_of else clock.now(settings)
    window_from = now - timedelta(days=window_days or settings.monitor_window_days)
    result = run_monitoring(open_registry(settings), settings, model_name, window_from, now, now)
    return {"run_id": result.run_id, "version": result.model_version, "window_from": window_from.isoformat(),
            "window_to": now.isoformat(), "n_predictions": result.n_predictions, "n_labelled": result.n_labelled,
            "summary": result.summary(), "alerts": [a.to_payload().event_payload() for a in result.alerts]}


@task
def emit_alerts(model_name: str, alerts: list[dict[str, Any]], as_of: str) -> dict[str, int]:
    """Each firing rule becomes an event, or a ledger row when the ledger would skip it."""
    _spec, settings = settings_of(model_name)
    return send_alerts(settings, open_registry(settings), model_name, alerts, to_utc(as_of).to_pydatetime())


@task(retries=1, retry_delay_seconds=5)
def freshness_task(model_name: str, as_of: str) -> dict[str, Any]:
    """Each feature view's newest online row against its cadence; stale views become
    `retrain.alert.stale_features` events (once per view and day)."""
    from retrain.features import freshness
    from retrain.features.store import open_store

    _spec, settings = settings_of(model_name)
    now = to_utc(as_of).to_pydatetime()
    views = freshness.check_freshness(open_store(settings), settings, now)
    alerts = freshness.stale_alerts(views, model_name, now)
    sent = send_notices(settings, open_registry(settings), model_name, alerts)
    return {"views": [v.as_json() for v in views], "stale": [v.view for v in views if v.stale], "events": sent}


@task(retries=1, retry_delay_seconds=5)
def guardrail_task(model_name: str, as_of: str) -> dict[str, Any]:
    """The new champion against the one it replaced, on the traffic both scored; rolls back when the old
    one was better beyond noise (`retrain.alerts.guardrail`)."""
    from retrain.alerts.guardrail import check_guardrail
    from retrain.core import events

    _spec, settings = settings_of(model_name)
    resource = events.model_resource(model_name)
    return check_guardrail(settings, open_registry(settings), model_name, to_utc(as_of).to_pydatetime(),
                           emit=lambda event, payload: events.emit(event, resource, payload, settings)).as_json()


@task
def publish(model_name: str, result: dict[str, Any]) -> None:
    """A table artifact of this run and a PNG of every metric over time under RETRAIN_HOME/reports."""
    _spec, settings = settings_of(model_name)
    rows = [{"metric": k, "value": v} for k, v in result["summary"].items()]
    rows += [{"metric": f"alert:{a['kind']}", "value": f"{a.get('metric')}={a.get('value')} "
              f"(threshold {a.get('threshold')})"} for a in result["alerts"]]
    chart = settings.reports_dir / "monitoring" / f"{model_name}.png"
    sessions = open_registry(settings)
    plot_history(monitoring_history(sessions, model_name), chart)
    # each recent window's estimate (made before its labels) against its AUC on the labels matured since
    estimates = estimate_history(sessions, model_name, to_utc(result["window_to"]).to_pydatetime(), limit=60)
    if estimates:
        plot_history(estimates, chart.with_name(f"{model_name}-estimate.png"), ESTIMATE_METRICS,
                     title="estimated vs realized AUC")
        create_table_artifact(json_safe(estimates), key="monitoring-estimate",
                              description="Estimated AUC (calibrated scores, before labels) vs the realized AUC "
                              "once labels matured, per monitoring window")
    create_table_artifact(rows, key="monitoring", description=f"Monitoring {result['window_from']} to "
                          f"{result['window_to']} ({result['n_predictions']} predictions, {result['n_labelled']} "
                          f"matured labels). Metrics over time: {chart}")


@flow(name="monitor", log_prints=True)
def monitor_flow(model_name: str = "flight_delay", as_of: str | None = None,
                 window_days: float | None = None) -> dict[str, Any]:
    """Monitor the champion over the last `window_days` up to `as_of` (default: the retrain clock)."""
    result = monitor_task(model_name, as_of, window_days)
    publish(model_name, result)
    sent = emit_alerts(model_name, result["alerts"], result["window_to"])
    result["events"] = sent
    result["guardrail"] = guardrail_task(model_name, result["window_to"])
    if result["guardrail"]["status"] == "rollback":
        print(f"guardrail rolled back to {result['guardrail']['previous']}: {result['guardrail']['detail']}")
    checked = freshness_task(model_name, result["window_to"], return_state=True)  # its failure is reported, and
    if checked.is_completed():                                                     # does not undo the monitoring
        result["freshness"] = checked.result()
        if result["freshness"]["stale"]:
            print(f"stale feature views: {', '.join(result['freshness']['stale'])}")
    else:
        result["freshness"] = {"error": checked.message}
        print(f"feature freshness not checked: {checked.message}")
    print(f"monitoring {result['window_from']} .. {result['window_to']}: {result['n_predictions']} predictions, "
          f"{result['n_labelled']} labelled; {len(result['alerts'])} alerts, {sent['sent']} events sent, "
          f"{sent['skipped']} skipped by the ledger")
    return result
