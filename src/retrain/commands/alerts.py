"""`retrain alert`: raise a retrain alert from the shell, as monitoring would."""

from __future__ import annotations

import json

import typer
from rich.console import Console

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Attach `retrain alert`."""

    @app.command("alert")
    def alert_cmd(
        kind: str = typer.Option("manual", "--kind",
                                 help="data_drift, prediction_drift, performance_decay or manual."),
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

        from retrain import intake, services
        from retrain.config import get_settings
        from retrain.events import AlertPayload
        from retrain.registry import open_registry

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
