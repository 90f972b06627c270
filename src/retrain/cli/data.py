"""`retrain ingest` and `retrain status`: the data side of the CLI.

Commands call the use case's landing directly (no Prefect server needed); `flows/ingest.py` wraps the
same functions for scheduled runs. Heavy imports stay inside the command functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
out = Console()


def _fail(message: str, code: int = 1, *, as_json: bool = False, payload: dict[str, Any] | None = None) -> NoReturn:
    if as_json:
        typer.echo(json.dumps({**(payload or {}), "status": (payload or {}).get("status", "error"), "error": message}))
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


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
        from retrain.cli.usecases import active
        from retrain.models.registry import open_registry

        if (path is None) == (until is None):
            _fail("give exactly one of PATH or --until DATE", code=2, as_json=as_json)
        settings, spec = active()
        sessions = open_registry(settings)  # ensure_dirs + Alembic upgrade
        from retrain.usecase.catalog import UseCaseError
        from retrain.usecase.landing import ingest

        try:
            with console.status("ingesting") as status:
                payload = ingest(spec, settings, sessions, path=path, until=until, refresh=refresh,
                                 progress=status.update)
        except UseCaseError as exc:
            _fail(str(exc), code=2, as_json=as_json)
        if "total_landed" in payload:  # the engine's landing of a use case with its own Feast repository
            if as_json:
                typer.echo(json.dumps(payload))
            else:
                out.print(f"{spec.name}: landed {payload['landed']:,} of {payload['received']:,} rows matured by "
                          f"{payload['until']} ({payload['quarantined']:,} quarantined; {payload['total_landed']:,} "
                          f"landed in all); feature tables: {payload['tables'] or '-'}")
            return
        if payload.get("status") == "rejected":
            _fail(str(payload.get("error", "batch rejected")), as_json=as_json, payload=payload)
        if as_json:
            typer.echo(json.dumps(payload))
        else:
            _print_summary(payload)

    @app.command("status")
    def status_cmd(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
        """Summarize the system of record: ingestion batches, rows landed, quarantined, latest event time."""
        from retrain.core.config import get_settings
        from retrain.core.status import summary
        from retrain.models.registry import open_registry

        settings = get_settings()
        result = summary(settings, open_registry(settings))
        result["features"] = _freshness(settings)
        if as_json:
            typer.echo(json.dumps(result, default=str))
            return
        ing = result["ingestion"]
        table = Table(title=f"retrain status ({result['home']})", show_header=False)
        table.add_row("database", result["database"])
        table.add_row("clock", result["clock"]["label"])
        if result["clock"]["warning"]:
            from rich.markup import escape

            table.add_row("[yellow]warning[/]", escape(result["clock"]["warning"]))
        table.add_row("batches", ", ".join(f"{k}={v}" for k, v in ing["batches_by_status"].items()) or "none")
        table.add_row("rows landed", f"{ing['rows_landed']:,} of {ing['rows_received']:,} received")
        table.add_row("rows quarantined", f"{ing['rows_quarantined']:,}")
        table.add_row("outcomes recorded", f"{ing['outcomes_recorded']:,}")
        table.add_row("event times", f"{ing['earliest_event_time'] or '-'} .. {ing['latest_event_time'] or '-'}")
        for reason in ing["top_quarantine_reasons"]:
            table.add_row("  quarantine", f"{reason['field']}:{reason['rule']} x {reason['rows']:,}")
        feats = result["features"]
        if "error" in feats:
            table.add_row("feature views", f"not checked: {feats['error']}")
        for view in feats.get("views", []):
            mark = "[red]stale[/]" if view["stale"] else "fresh"
            table.add_row(f"  {view['view']}", f"{mark}: {view['reason']}")
        out.print(table)

    def _freshness(settings: Any) -> dict[str, Any]:
        """Each feature view's freshness at the retrain clock's now, or why it was not checked."""
        from retrain.core import clock
        from retrain.features import freshness
        from retrain.features.store import open_store

        try:
            views = freshness.check_freshness(open_store(settings), settings, clock.now(settings))
        except Exception as exc:  # no registry yet, an unreachable online store: say so, keep the rest
            return {"error": f"{type(exc).__name__}: {exc}"[:300]}
        if not views:
            return {"error": "no feature views registered: run `retrain apply`"}
        return {"views": [v.as_json() for v in views], "stale": [v.view for v in views if v.stale]}

    # `retrain materialize` / `retrain apply` live in retrain/cli/features.py (the Feast side);
    # add further data commands here.
