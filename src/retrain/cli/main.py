"""The `retrain` command (Typer). Heavy imports (Feast, LightGBM, Prefect) stay inside commands.

A command that fails prints one line, `error: <message>`, and exits 1; `--debug` (or
`RETRAIN_DEBUG=1`) prints the full traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Sequence

import typer

app = typer.Typer(
    name="retrain",
    help="Event-driven retraining for tabular models: ingest, train, evaluate, serve, monitor.",
    no_args_is_help=True,
    add_completion=False,
    # main() reports errors as one line; --debug shows Python's plain traceback, not Rich's.
    pretty_exceptions_enable=False,
)

# Each module under retrain.cli defines `register(app)`; one module per area keeps this file small.
COMMAND_MODULES: tuple[str, ...] = (
    "retrain.cli.data",
    "retrain.cli.features",
    "retrain.cli.models",
    "retrain.cli.ops",
    "retrain.cli.alerts",
    "retrain.cli.backtest",
    "retrain.cli.usecases",
    "retrain.cli.approval",
)

DEBUG_HINT = "(run with --debug for the traceback)"
_state = {"debug": False}


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", envvar="RETRAIN_DEBUG",
                               help="Show the full traceback when a command fails (also RETRAIN_DEBUG=1)."),
    usecase: str | None = typer.Option(None, "--usecase", help="The use case every command acts on "
                                       "(default RETRAIN_USECASE, else the shipped default); `retrain usecases list`."),
) -> None:
    _state["debug"] = debug
    if usecase:
        from retrain.core.config import get_settings

        os.environ["RETRAIN_USECASE"] = usecase
        get_settings.cache_clear()


def build_app() -> typer.Typer:
    """Attach every command module's commands to the app (idempotent)."""
    if not getattr(app, "_retrain_registered", False):
        for name in COMMAND_MODULES:
            module = importlib.import_module(name)
            module.register(app)
        app._retrain_registered = True  # type: ignore[attr-defined]
    return app


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _validation_message(exc: Exception) -> str:
    """`invalid Settings: RETRAIN_PROFILE: Input should be ... (got 'x')` from a pydantic ValidationError."""
    title = str(getattr(exc, "title", "") or "input")
    parts = []
    for err in exc.errors():  # type: ignore[attr-defined]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        if title == "Settings" and loc:  # retrain.core.config.Settings reads RETRAIN_* variables
            loc = f"RETRAIN_{loc.upper()}"
        got = err.get("input")
        shown = f" (got {got!r})" if isinstance(got, str | int | float) and len(repr(got)) <= 80 else ""
        parts.append(f"{loc + ': ' if loc else ''}{err.get('msg', '')}{shown}")
    return f"invalid {title}: " + "; ".join(parts)


def error_message(exc: BaseException) -> str:
    """The one line `main()` prints for an exception a command let escape (without the `error: ` prefix)."""
    from pydantic import ValidationError
    from sqlalchemy.exc import OperationalError

    message = ""
    if isinstance(exc, ValidationError):
        message = _validation_message(exc)
    elif isinstance(exc, OperationalError):
        cause = str(exc.orig or "").strip().splitlines()
        message = f"database error: {cause[0] if cause else _one_line(str(exc))}"
    elif isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        message = f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else str(exc)
    elif isinstance(exc, ValueError | RuntimeError):
        message = str(exc)
    message = _one_line(message)
    if message:
        return message
    detail = _one_line(str(exc))
    return f"{type(exc).__name__}{': ' + detail if detail else ''} {DEBUG_HINT}"


def _debug_requested(args: Sequence[str]) -> bool:
    """--debug as parsed by the callback; env/argv when the failure came before it ran (e.g. an import)."""
    env = os.environ.get("RETRAIN_DEBUG", "").strip().lower()
    return _state["debug"] or env in {"1", "true", "yes", "on"} or "--debug" in args


def _interrupted(exc: SystemExit) -> KeyboardInterrupt | None:
    """Typer turns Ctrl-C inside a command into `Exit(130)`; find the KeyboardInterrupt behind it."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return None
        if isinstance(seen, KeyboardInterrupt):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: one `error:` line and exit 1 for a failed command; --debug re-raises."""
    import warnings

    # Third-party deprecation chatter (ibis under Feast's DuckDB store) is not for a CLI user.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    args = list(sys.argv[1:] if argv is None else argv)
    _state["debug"] = False
    try:
        build_app()(args=args, prog_name="retrain")
    except SystemExit as exc:  # typer.Exit(code), --help, usage errors: the code passes through
        interrupt = _interrupted(exc) if exc.code == 130 and isinstance(exc.__context__, typer.Exit) else None
        if interrupt is not None:
            if _debug_requested(args):
                traceback.print_exception(interrupt)
            typer.echo("interrupted", err=True)
        raise
    except KeyboardInterrupt:
        if _debug_requested(args):
            raise
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None
    except typer.Exit as exc:  # only reached outside standalone handling; keep its code
        raise SystemExit(exc.exit_code) from None
    except Exception as exc:
        if _debug_requested(args):
            raise
        typer.echo(f"error: {error_message(exc)}", err=True)
        raise SystemExit(1) from None
