"""`retrain usecases list|show` and `retrain init`: the use cases retrain knows, and a new one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
out = Console()


def _fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {message}", soft_wrap=True)
    raise typer.Exit(2)


def active() -> tuple[Any, Any]:
    """(settings, spec) of the active use case (`retrain --usecase NAME ...` or RETRAIN_USECASE)."""
    from retrain.core.config import get_settings
    from retrain.usecase.catalog import load_usecase

    settings = get_settings()
    return settings, load_usecase(settings, settings.usecase)


def effective_settings(name: str) -> tuple[Any, dict[str, Any]]:
    """(spec, {setting: value}) for the settings the use case changes from the global ones."""
    from retrain.core.config import base_settings
    from retrain.usecase.catalog import load_usecase, settings_for

    base = base_settings()
    spec = load_usecase(base, name)
    mine = settings_for(spec, base).model_dump(mode="json")
    plain = base.model_dump(mode="json")
    changed = {k: v for k, v in mine.items() if plain.get(k) != v}
    return spec, changed


def register(app: typer.Typer) -> None:
    """Attach `usecases` (list, show) and `init`."""
    group = typer.Typer(help="The use cases (one folder each) retrain knows.", no_args_is_help=True)
    app.add_typer(group, name="usecases")

    @group.command("list")
    def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        """Every use case: name, objective, label, feature service, folder."""
        from retrain.core.config import base_settings
        from retrain.usecase.catalog import UseCaseError, list_usecases

        try:
            specs = list_usecases(base_settings())
        except UseCaseError as exc:
            _fail(str(exc))
        rows = [s.summary() for s in specs]
        if as_json:
            typer.echo(json.dumps(rows))
            return
        table = Table("name", "objective", "label", "feature service", "features", "folder")
        for r in rows:
            table.add_row(r["name"], r["objective"], r["label"], r["feature_service"], str(r["features"]),
                          r["folder"] or "")
        out.print(table)

    @group.command("show")
    def show_cmd(name: str = typer.Argument(..., help="Use case name."),
                 as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        """One use case's spec and the settings it changes from the global ones."""
        from retrain.usecase.catalog import UseCaseError

        try:
            spec, changed = effective_settings(name)
        except UseCaseError as exc:
            _fail(str(exc))
        doc = {**spec.model_dump(mode="json"), "folder": str(spec.folder), "effective_settings": changed}
        if as_json:
            typer.echo(json.dumps(doc))
            return
        import yaml

        out.print(yaml.safe_dump(doc, sort_keys=False), end="", soft_wrap=True, markup=False, highlight=False)

    @app.command("init")
    def init_cmd(
        name: str = typer.Argument(..., help="New use case name (a-z, 0-9, _)."),
        data: Path = typer.Option(..., "--data", help="CSV or parquet history."),
        time_col: str = typer.Option(..., "--time-col", help="Event time column."),
        label_col: str = typer.Option(..., "--label-col", help="Label column."),
        entity_col: str | None = typer.Option(None, "--entity-col", help="Entity key column (default: one "
                                              "global key)."),
        regression: bool = typer.Option(False, "--regression", help="The label is continuous."),
        label_delay_hours: float = typer.Option(0.0, "--label-delay-hours", help="A label is known this long "
                                                "after the event time."),
        into: Path | None = typer.Option(None, "--into", help="Parent folder (default RETRAIN_USECASES_DIR, "
                                         "else the checkout's usecases/)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Scaffold a use case from your file: contract, spec and settings sized to the data."""
        from retrain.core.config import base_settings
        from retrain.usecase.catalog import UseCaseError
        from retrain.usecase.contract import InputFileError
        from retrain.usecase.scaffold import init_usecase

        try:
            result = init_usecase(name, data, settings=base_settings(), time_col=time_col, label_col=label_col,
                                  entity_col=entity_col, regression=regression,
                                  label_delay_hours=label_delay_hours, into=into)
        except (InputFileError, UseCaseError) as exc:
            _fail(str(exc))
        if as_json:
            typer.echo(json.dumps(result.to_dict()))
            return
        d = result.to_dict()
        console.print(f"created use case [bold]{name}[/bold] in {d['folder']}", soft_wrap=True)
        console.print(f"  {d['objective']}, {d['rows']:,} rows ({d['rows_per_day']} per day), "
                      f"{len(d['features'])} features: {', '.join(d['features'])}", soft_wrap=True)
        console.print(f"  calendar features that carry signal: {d['calendar_explained'] or 'none'}")
        console.print(f"  settings sized to the data: {d['settings'] or 'the defaults fit'}", soft_wrap=True)
        for note in d["notes"]:
            console.print(f"  note: {note}", soft_wrap=True)
        console.print(f"next: retrain backtest --usecase {name}")
