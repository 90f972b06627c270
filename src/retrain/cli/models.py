"""`retrain train / evaluate / models / promote / rollback / history`: the model lifecycle.

With `PREFECT_API_URL` set, `train` and `evaluate` run as Prefect flow runs (visible in the UI,
with the evaluation's artifacts); otherwise they call the same functions directly.
"""

from __future__ import annotations

import getpass
import importlib.util
import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from retrain.core.config import Settings
    from retrain.core.db import ModelVersion

console = Console(stderr=True)
out = Console()


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli"


def _fail(message: str, code: int = 2) -> NoReturn:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def _context() -> tuple[Settings, sessionmaker[Session]]:
    from retrain.core.config import get_settings
    from retrain.models.registry import open_registry

    settings = get_settings()
    return settings, open_registry(settings)


def _use_prefect(flag: bool | None) -> bool:
    return bool(os.environ.get("PREFECT_API_URL")) if flag is None else flag


def _flow(module: str, name: str) -> Callable[..., Any]:
    """A flow from the repo's flows/ directory (not part of the installed package)."""
    from retrain.core.config import REPO_ROOT

    path = REPO_ROOT / "flows" / f"{module}.py"
    spec = importlib.util.spec_from_file_location(f"retrain_flows_{module}", path)
    if spec is None or spec.loader is None:
        _fail(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)  # type: ignore[no-any-return]


def _version_row(mv: ModelVersion, aliases: dict[int, str]) -> dict[str, Any]:
    return {
        "version": mv.version,
        "alias": aliases.get(mv.id),
        "status": mv.status,
        "bento_model_tag": mv.bento_model_tag,
        "bento_tag": mv.bento_tag,
        "feature_service": mv.feature_service,
        "train_from": mv.train_from.isoformat(),
        "train_to": mv.train_to.isoformat(),
        "n_train": mv.n_train,
        "n_valid": mv.n_valid,
        "validation": (mv.metrics or {}).get("validation"),
        "created_at": mv.created_at.isoformat(),
    }


def _aliases(sessions: sessionmaker[Session], model_name: str) -> dict[int, str]:
    from retrain.models import registry

    found: dict[int, str] = {}
    for alias in (registry.CHAMPION, registry.CHALLENGER):
        mv = registry.get_alias(sessions, alias, model_name)
        if mv is not None:
            found[mv.id] = alias
    return found


def _print_gates(result: dict[str, Any]) -> None:
    colour = "green" if result["decision"] == "promote" else "red"
    out.print(f"evaluation {result['evaluation_id']}: [{colour}]{result['decision'].upper()}[/{colour}] "
              f"{result['version']} vs {result['champion'] or 'no champion'} on "
              f"{result['window_from']} → {result['window_to']} ({result['n_rows']:,} labelled rows)")
    table = Table("gate", "passed", "value", "threshold", "detail")
    for g in result["gates"]:
        passed = "skipped" if g.get("skipped") else ("[green]yes[/green]" if g["passed"] else "[red]NO[/red]")
        fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
        table.add_row(g["name"], passed, fmt(g["value"]), fmt(g["threshold"]), g["detail"])
    out.print(table)
    metrics = Table("metric", "challenger", "champion")
    chal, champ = result["metrics"].get("challenger", {}), result["metrics"].get("champion", {})
    keys = ("rmse", "mae", "mean_predicted", "observed_mean") if "rmse" in chal else (
        "auc", "log_loss", "brier", "accuracy", "ece", "predicted_rate", "observed_rate")
    for key in keys:
        fmt2 = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
        metrics.add_row(key, fmt2(chal.get(key)), fmt2(champ.get(key)))
    out.print(metrics)
    for note in result.get("notes", []):
        out.print(f"note: {note}")
    if result.get("promotion"):
        p = result["promotion"]
        out.print(f"promoted {p['version']} (was {p['previous'] or 'none'}); bento {p['bento_tag'] or 'not built'}")
    if result.get("report"):
        out.print(f"report: {result['report']}")


def register(app: typer.Typer) -> None:
    """Attach the model lifecycle commands."""

    @app.command("train")
    def train_cmd(
        window_from: str = typer.Option(..., "--from", help="First scheduled departure (ISO date, UTC)."),
        window_to: str = typer.Option(..., "--to", help="End of the window, exclusive (ISO date, UTC)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
        prefect: bool | None = typer.Option(None, "--prefect/--direct",
                                            help="Run as a Prefect flow (default: when PREFECT_API_URL is set)."),
    ) -> None:
        """Train a candidate on [--from, --to) through the feature service and register it."""
        from retrain.cli.usecases import active
        from retrain.models.train import TrainingError
        from retrain.usecase.pipeline import Pipeline

        try:
            settings, spec = active()
            if _use_prefect(prefect):
                result = _flow("train", "train_flow")(window_from, window_to, model_name=spec.name)
            else:
                with console.status(f"training {spec.name} on [{window_from}, {window_to})"):
                    result = Pipeline(spec, settings).train_version(window_from, window_to).to_dict()
        except TrainingError as exc:
            _fail(str(exc))
        if as_json:
            typer.echo(json.dumps(result))
            return
        out.print(f"registered [bold]{result['version']}[/bold] ({result['bento_model_tag']}) trained on "
                  f"{result['train_from']} → {result['train_to']}: {result['n_train']:,} train / "
                  f"{result['n_valid']:,} validation rows, best iteration {result['best_iteration']}, "
                  f"validation {json.dumps(result['validation'])}, {result['train_seconds']} s")

    @app.command("evaluate")
    def evaluate_cmd(
        version: str = typer.Argument(..., help="Challenger version (v3, or its BentoML tag)."),
        window_from: str | None = typer.Option(None, "--window-from", help="Default: end of its training window."),
        window_to: str | None = typer.Option(None, "--window-to", help="Default: one month after --window-from."),
        promote: bool = typer.Option(True, "--promote/--no-promote", help="Act on a promote decision."),
        build_bento: bool | None = typer.Option(None, "--build-bento/--no-build-bento",
                                                help="Build a bento pinned to the model on promotion "
                                                     "(default: the retrain_build_bento setting)."),
        migration: str | None = typer.Option(None, "--feature-migration",
                                             help="Record an intended feature-service change (compatibility gate)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
        prefect: bool | None = typer.Option(None, "--prefect/--direct",
                                            help="Run as a Prefect flow (default: when PREFECT_API_URL is set)."),
    ) -> None:
        """Champion vs challenger on a fresh labelled window; every gate with its numbers."""
        from retrain.cli.usecases import active
        from retrain.evaluation.evaluate import EvaluationRefused, PromotionFailed
        from retrain.usecase.pipeline import Pipeline

        code = 0
        try:
            settings, spec = active()
            if _use_prefect(prefect):
                result = _flow("evaluate", "evaluate_flow")(
                    version, window_from, window_to, promote, build_bento, migration, _actor(), model_name=spec.name)
            else:
                with console.status(f"evaluating {spec.name} {version}"):
                    result = Pipeline(spec, settings).evaluate(
                        version, window_from, window_to, actor=_actor(), act=promote, build_bento=build_bento,
                        feature_migration=migration).to_dict()
        except EvaluationRefused as exc:
            _fail(f"evaluation refused, nothing recorded: {exc}")
        except PromotionFailed as exc:
            console.print(f"[red]error:[/red] {exc}")
            result, code = exc.outcome.to_dict(), 1
        if as_json:
            typer.echo(json.dumps(result))
        else:
            _print_gates(result)
        if code:
            raise typer.Exit(code)

    models = typer.Typer(help="Registered model versions.", no_args_is_help=True)
    app.add_typer(models, name="models")

    @models.command("list")
    def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print a JSON list.")) -> None:
        """Every version with its alias, status and training window."""
        from retrain.models import registry

        settings, sessions = _context()
        aliases = _aliases(sessions, settings.model_name)
        rows = [_version_row(mv, aliases) for mv in registry.list_versions(sessions, settings.model_name)]
        if as_json:
            typer.echo(json.dumps(rows))
            return
        table = Table("version", "alias", "status", "trained on", "rows", "validation", "bento")
        for r in rows:
            valid = r["validation"] or {}
            name = "auc" if "auc" in valid else "rmse"
            value = valid.get(name)
            table.add_row(r["version"], r["alias"] or "", r["status"], f"{r['train_from'][:10]} → {r['train_to'][:10]}",
                          f"{r['n_train']:,}", "–" if value is None else f"{name} {value:.4f}", r["bento_tag"] or "")
        out.print(table)

    @models.command("show")
    def show_cmd(version: str = typer.Argument(...)) -> None:
        """Everything recorded about one version (JSON)."""
        from retrain.models import registry

        settings, sessions = _context()
        try:
            mv = registry.get_version(sessions, version, settings.model_name)
        except registry.UnknownVersionError as exc:
            _fail(str(exc))
        row = _version_row(mv, _aliases(sessions, settings.model_name))
        row.update(data_fingerprint=mv.data_fingerprint, model_checksum=mv.model_checksum,
                   model_size_bytes=mv.model_size_bytes, n_excluded=mv.n_excluded, params=mv.params,
                   metrics=mv.metrics, library_versions=mv.library_versions, train_seconds=mv.train_seconds,
                   reference_profile_rows=(mv.reference_profile or {}).get("n_rows"))
        typer.echo(json.dumps(row, indent=2))

    @app.command("promote")
    def promote_cmd(
        version: str = typer.Argument(...),
        reason: str = typer.Option(..., "--reason", help="Why (recorded in the history)."),
        build_bento: bool | None = typer.Option(None, "--build-bento/--no-build-bento",
                                                help="Build a bento pinned to the model first "
                                                     "(default: the retrain_build_bento setting)."),
    ) -> None:
        """Make VERSION the champion (manual override; recorded with your name and reason)."""
        from retrain.models import promotion, registry

        settings, sessions = _context()
        try:
            with console.status(f"promoting {version}"):
                res = promotion.promote_version(settings, sessions, version, reason, _actor(), build=build_bento)
        except (registry.RegistryError, promotion.BentoBuildError) as exc:
            _fail(f"{exc} (champion unchanged)")
        out.print(f"champion: {res.version} (was {res.previous or 'none'}); bento {res.bento_tag or 'not built'}; "
                  f"event {'sent' if res.event_sent else 'not sent'}")

    @app.command("rollback")
    def rollback_cmd(reason: str = typer.Option(..., "--reason", help="Why (recorded in the history).")) -> None:
        """Return the champion to the previous one (recorded as a rollback)."""
        from retrain.models import registry

        settings, sessions = _context()
        try:
            before, after = registry.rollback(sessions, reason, _actor(), settings.model_name)
        except registry.RegistryError as exc:
            _fail(str(exc))
        out.print(f"champion: {after.version} (rolled back from {before.version})")

    @app.command("history")
    def history_cmd(as_json: bool = typer.Option(False, "--json", help="Print a JSON list.")) -> None:
        """Every alias move: when, what, from, to, who, why, which evaluation."""
        from retrain.models import registry

        settings, sessions = _context()
        rows = [h.to_dict() for h in registry.history(sessions, settings.model_name)]
        if as_json:
            typer.echo(json.dumps(rows))
            return
        table = Table("when (UTC)", "alias", "action", "from", "to", "actor", "eval", "reason")
        for col in table.columns[:5]:
            col.no_wrap = True
        for h in rows:
            table.add_row(h["created_at"][:16].replace("T", " "), h["alias"], h["action"], h["from_version"] or "–",
                          h["to_version"] or "–", h["actor"], str(h["evaluation_id"] or ""), h["reason"])
        out.print(table)
