"""Monitor flow: drift and decay over the recent prediction log; firing rules become events."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from retrain.core import clock
from retrain.core.times import to_utc
from retrain.models.registry import open_registry
from retrain.monitoring.alerts import send_alerts
from retrain.monitoring.monitor import monitoring_history, plot_history, run_monitoring
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


@task
def publish(model_name: str, result: dict[str, Any]) -> None:
    """A table artifact of this run and a PNG of every metric over time under RETRAIN_HOME/reports."""
    _spec, settings = settings_of(model_name)
    rows = [{"metric": k, "value": v} for k, v in result["summary"].items()]
    rows += [{"metric": f"alert:{a['kind']}", "value": f"{a.get('metric')}={a.get('value')} "
              f"(threshold {a.get('threshold')})"} for a in result["alerts"]]
    chart = settings.reports_dir / "monitoring" / f"{model_name}.png"
    plot_history(monitoring_history(open_registry(settings), model_name), chart)
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
    print(f"monitoring {result['window_from']} .. {result['window_to']}: {result['n_predictions']} predictions, "
          f"{result['n_labelled']} labelled; {len(result['alerts'])} alerts, {sent['sent']} events sent, "
          f"{sent['skipped']} skipped by the ledger")
    return result
