"""The `retrain` command (Typer). Heavy imports (Feast, LightGBM, Prefect) stay inside commands."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="retrain",
    help="Event-driven retraining for tabular models: ingest, train, evaluate, serve, monitor.",
    no_args_is_help=True,
    add_completion=False,
)

# Each module under retrain.commands defines `register(app)`; one module per area keeps this file small.
COMMAND_MODULES: tuple[str, ...] = (
    "retrain.commands.data",
    "retrain.commands.features",
    "retrain.commands.models",
    "retrain.commands.ops",
    "retrain.commands.alerts",
    "retrain.commands.backtest",
)


def build_app() -> typer.Typer:
    """Attach every command module's commands to the app (idempotent)."""
    if not getattr(app, "_retrain_registered", False):
        for name in COMMAND_MODULES:
            module = importlib.import_module(name)
            module.register(app)
        app._retrain_registered = True  # type: ignore[attr-defined]
    return app


def main() -> None:
    """Console entry point."""
    import warnings

    # Third-party deprecation chatter (ibis under Feast's DuckDB store) is not for a CLI user.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    build_app()()
