"""`retrain materialize` and `retrain apply`: the Feast side of the data path."""

from __future__ import annotations

import contextlib
import json
import sys

import typer
from rich.console import Console

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Attach the feature-store commands."""

    @app.command("apply")
    def apply_cmd() -> None:
        """Register the active use case's Feast definitions (`feast apply` for the active profile)."""
        from retrain.cli.usecases import active
        from retrain.features.store import apply_repo
        from retrain.usecase.catalog import load_callable

        settings, spec = active()
        with console.status("feast apply"):
            if spec.pipeline is not None:
                load_callable(spec, spec.pipeline.apply)(settings)
            else:
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
        from retrain.cli.usecases import active
        from retrain.features.store import NoFeatureDataError, NothingAppliedError, materialize_until, open_store
        from retrain.usecase.landing import data_start

        settings, spec = active()
        try:
            # Feast prints its progress on stdout: keep stdout for the result (`--json`)
            with console.status(f"materializing up to {until}"), contextlib.redirect_stdout(sys.stderr):
                start = data_start(settings, spec) if spec.feast is not None else None
                result = materialize_until(open_store(settings), settings, until, start=start)
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
