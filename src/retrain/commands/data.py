"""`retrain ingest` and `retrain status`: the data side of the CLI.

Commands call the use case's landing directly (no Prefect server needed); `flows/ingest.py` wraps the
same functions for scheduled runs. Heavy imports stay inside the command functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from retrain.config import Settings

console = Console(stderr=True)
out = Console()


def _fail(message: str, code: int = 1, *, as_json: bool = False, payload: dict[str, Any] | None = None) -> NoReturn:
    if as_json:
        typer.echo(json.dumps({**(payload or {}), "status": (payload or {}).get("status", "error"), "error": message}))
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def _online_until(settings: Settings, spec: Any, until: str) -> dict[str, Any]:
    """Register the use case's Feast objects (idempotent) and materialize up to `until`: after an
    ingest its features are servable and trainable as of that time."""
    import contextlib
    import sys

    from retrain.feature_store import materialize_until
    from retrain.usecase import featurestore
    from retrain.usecase.landing import data_start

    with contextlib.redirect_stdout(sys.stderr):  # Feast prints progress on stdout; keep it for --json
        featurestore.apply(spec, settings)
        return materialize_until(featurestore.open_store(settings), settings, until,
                                 start=data_start(settings, spec))


def _print_summary(payload: dict[str, Any]) -> None:
    table = Table(title=f"ingest: {payload['status']}", show_header=False)
    for key in ("batch_id", "received", "accepted", "quarantined", "refused", "outcomes"):
        if payload.get(key) is not None:
            table.add_row(key, f"{payload[key]:,}" if isinstance(payload[key], int) else str(payload[key]))
    if payload.get("batch_ids"):
        table.add_row("batches", ", ".join(map(str, payload["batch_ids"])))
    if payload.get("feature_tables"):
        table.add_row("feature tables", ", ".join(f"{k}={v:,}" for k, v in payload["feature_tables"].items()))
    out.print(table)
    for key, n in sorted((payload.get("reasons") or {}).items(), key=lambda kv: -kv[1])[:10]:
        out.print(f"  quarantined {n:,} x {key}")
    if payload.get("quarantine_path"):
        out.print(f"  quarantine file: {payload['quarantine_path']}")
    out.print(payload.get("message", ""))


def register(app: typer.Typer) -> None:
    """Attach `ingest` and `status`."""

    @app.command("ingest")
    def ingest_cmd(
        path: Path | None = typer.Argument(None, help="A batch file of the use case's raw rows: CSV (optionally "
                                                       ".gz/.zip) or parquet."),
        until: str | None = typer.Option(None, "--until", help="Replay the use case's history released up to this "
                                                               "time (ISO date/time, UTC) instead of reading PATH."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
        refresh: bool = typer.Option(True, "--refresh/--no-refresh",
                                     help="Rebuild the feature tables after landing (a use case with its own "
                                          "Feast repository: also apply it and materialize up to --until)."),
    ) -> None:
        """Validate a batch, quarantine bad rows with a reason, land the rest in the offline store."""
        from retrain.commands.usecases import active
        from retrain.registry import open_registry

        if (path is None) == (until is None):
            _fail("give exactly one of PATH or --until DATE", code=2, as_json=as_json)
        settings, spec = active()
        sessions = open_registry(settings)  # ensure_dirs + Alembic upgrade
        if spec.feast is not None:  # a use case with its own Feast repository: replay its history
            if until is None:
                _fail(f"use case {spec.name}: batch files are not taken yet; replay its history with --until DATE",
                      code=2, as_json=as_json)
            from retrain.usecase.landing import replay_until as land_until

            with console.status(f"landing {spec.name} up to {until}") as status:
                landed = land_until(spec, settings, sessions, until).to_dict()
                if refresh and landed["total_landed"]:
                    status.update(f"feast apply + materialize {spec.name} up to {until}")
                    landed["online"] = _online_until(settings, spec, until)
            if as_json:
                typer.echo(json.dumps(landed))
            else:
                out.print(f"{spec.name}: landed {landed['landed']:,} of {landed['received']:,} rows matured by "
                          f"{landed['until']} ({landed['quarantined']:,} quarantined; {landed['total_landed']:,} "
                          f"landed in all); feature tables: {landed['tables'] or '-'}")
            return
        if spec.pipeline is None:
            _fail(f"use case {spec.name}: no feast section and no pipeline code: nothing to land (its file feeds "
                  "`retrain backtest`)", code=2, as_json=as_json)
        from retrain.usecase.catalog import load_callable

        with console.status("ingesting") as status:
            payload = load_callable(spec, spec.pipeline.ingest)(settings, sessions, path=path, until=until,
                                                                refresh=refresh, progress=status.update)
        if payload.get("status") == "rejected":
            _fail(str(payload.get("error", "batch rejected")), as_json=as_json, payload=payload)
        if as_json:
            typer.echo(json.dumps(payload))
        else:
            _print_summary(payload)

    @app.command("status")
    def status_cmd(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
        """Summarize the system of record: ingestion batches, rows landed, quarantined, latest event time."""
        from retrain.config import get_settings
        from retrain.registry import open_registry
        from retrain.status import summary

        settings = get_settings()
        result = summary(settings, open_registry(settings))
        if as_json:
            typer.echo(json.dumps(result, default=str))
            return
        ing = result["ingestion"]
        table = Table(title=f"retrain status ({result['home']})", show_header=False)
        table.add_row("database", result["database"])
        table.add_row("batches", ", ".join(f"{k}={v}" for k, v in ing["batches_by_status"].items()) or "none")
        table.add_row("rows landed", f"{ing['rows_landed']:,} of {ing['rows_received']:,} received")
        table.add_row("rows quarantined", f"{ing['rows_quarantined']:,}")
        table.add_row("outcomes recorded", f"{ing['outcomes_recorded']:,}")
        table.add_row("event times", f"{ing['earliest_event_time'] or '-'} .. {ing['latest_event_time'] or '-'}")
        for reason in ing["top_quarantine_reasons"]:
            table.add_row("  quarantine", f"{reason['field']}:{reason['rule']} x {reason['rows']:,}")
        out.print(table)

    # `retrain materialize` / `retrain apply` live in retrain/commands/features.py (the Feast side);
    # add further data commands here.
