"""`retrain materialize` and `retrain apply`: the Feast side of the data path."""

from __future__ import annotations

import json

import typer
from rich.console import Console

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Attach the feature-store commands."""

    @app.command("apply")
    def apply_cmd() -> None:
        """Register feature_repo/ definitions with Feast (`feast apply` for the active profile)."""
        from retrain.config import get_settings
        from retrain.features import apply_repo

        settings = get_settings()
        with console.status("feast apply"):
            apply_repo(settings)
        console.print(f"applied {settings.feature_repo} ({settings.profile} profile)")

    @app.command("materialize")
    def materialize_cmd(
        until: str = typer.Option(..., "--until", help="Load feature rows up to this time (ISO date/time, UTC)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Bring the online store up to --until (seeds never-materialized views first).

        Fails (exit 1) naming the command to run when nothing is applied or ingested yet.
        """
        from retrain.config import get_settings
        from retrain.features import NoFeatureDataError, NothingAppliedError, materialize_until, open_store

        settings = get_settings()
        try:
            with console.status(f"materializing up to {until}"):
                result = materialize_until(open_store(settings), settings, until)
        except (NothingAppliedError, NoFeatureDataError) as err:
            if not as_json:
                raise  # `retrain` prints it as one `error:` line
            typer.echo(json.dumps({"status": "error", "error": str(err), "until": until}))
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None
        if as_json:
            typer.echo(json.dumps(result))
        else:
            console.print(f"online store up to {result['until']} in {result['seconds']} s "
                          f"(seeded: {result['seeded'] or '-'}; incremental: {result['incremental'] or '-'})")
