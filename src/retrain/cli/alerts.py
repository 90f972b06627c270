"""`retrain alert` and `retrain monitor`: raise a retrain alert from the shell, or run a monitoring pass."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Attach `retrain alert` and `retrain monitor`."""

    @app.command("alert")
    def alert_cmd(
        kind: str = typer.Option("manual", "--kind",
                                 help="data_drift, prediction_drift, performance_decay, estimated_decay or manual."),
        reason: str = typer.Option(..., "--reason", help="Why; recorded with the alert."),
        dedupe_key: str | None = typer.Option(None, "--dedupe-key", help="Alerts sharing a key retrain once."),
        metric: str | None = typer.Option(None, "--metric"),
        value: float | None = typer.Option(None, "--value"),
        threshold: float | None = typer.Option(None, "--threshold"),
        model: str | None = typer.Option(None, "--model", help="Model name (default from settings)."),
        api_url: str | None = typer.Option(None, "--api-url", help="Prefect API (default: the local server)."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Send a `retrain.alert.<kind>` event to Prefect; the retrain deployment's trigger picks it up."""
        from pydantic import ValidationError

        from retrain.alerts import intake
        from retrain.core import services
        from retrain.core.config import get_settings
        from retrain.core.events import AlertPayload
        from retrain.models.registry import open_registry

        settings = get_settings()
        try:
            payload = AlertPayload(kind=kind, reason=reason, dedupe_key=dedupe_key, metric=metric,  # type: ignore[arg-type]
                                   value=value, threshold=threshold, source="cli", model=model)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise typer.BadParameter(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from exc
        url = api_url or services.prefect_api_url(settings)
        result = intake.submit(settings, open_registry(settings), [payload], url)
        if as_json:
            typer.echo(json.dumps(result.as_json()))
        else:
            console.print(f"sent retrain.alert.{payload.kind} to {url} (event {', '.join(result.sent)})")

    @app.command("monitor")
    def monitor_cmd(
        as_of: str | None = typer.Option(None, "--as-of", help="End of the window (default: the retrain clock)."),
        window_days: float | None = typer.Option(None, "--window-days", help="Default: monitor_window_days."),
        send: bool = typer.Option(False, "--emit/--no-emit", help="Send firing rules as retrain.alert.* events "
                                  "to the Prefect server (the retrain deployment's trigger starts a retrain)."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """One monitoring pass over the active use case's champion: drift, decay, the rules that fire."""
        from datetime import timedelta

        from retrain.core import clock
        from retrain.core.config import get_settings
        from retrain.core.times import to_utc
        from retrain.models.registry import open_registry
        from retrain.monitoring.monitor import run_monitoring

        settings = get_settings()
        sessions = open_registry(settings)
        now = to_utc(as_of).to_pydatetime() if as_of else clock.now(settings)
        window_from = now - timedelta(days=window_days or settings.monitor_window_days)
        result = run_monitoring(sessions, settings, settings.model_name, window_from, now, now)
        alerts = [a.to_payload().event_payload() for a in result.alerts]
        doc: dict[str, Any] = {"model_name": settings.model_name, "version": result.model_version,
               "window_from": window_from.isoformat(), "window_to": now.isoformat(),
               "n_predictions": result.n_predictions, "n_labelled": result.n_labelled,
               "summary": result.summary(), "alerts": alerts}
        if send and alerts:
            from retrain.core import services
            from retrain.monitoring.alerts import send_alerts

            services.use_local_prefect(settings)
            doc["events"] = send_alerts(settings, sessions, settings.model_name, alerts, now)
        if as_json:
            typer.echo(json.dumps(doc, default=str))
            return
        console.print(f"{doc['model_name']} {doc['version']}: {doc['n_predictions']:,} predictions, "
                      f"{doc['n_labelled']:,} matured labels in [{doc['window_from']}, {doc['window_to']})")
        for key, value in doc["summary"].items():
            if value is not None:
                console.print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
        for alert in alerts:
            console.print(f"  [red]alert[/red] {alert['kind']}: {alert.get('reason') or alert.get('metric')}")
        if "events" in doc:
            console.print(f"  events: {doc['events']}")
