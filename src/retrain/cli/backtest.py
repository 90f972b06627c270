"""`retrain backtest`: replay history through the production retraining logic, per policy.

The triggered policy runs on production's `Settings` (env `RETRAIN_*`); the flags below override
single fields for this run, so a tuned combination can be deployed unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

from retrain.backtest.variants import TRIGGERED_VARIANT_HELP

console = Console(stderr=True)
out = Console()

# flag name -> Settings field (the same names production reads from RETRAIN_<FIELD>)
OVERRIDES: dict[str, str] = {
    "train_days": "retrain_train_days",
    "eval_days": "retrain_eval_days",
    "label_lag_hours": "retrain_label_lag_hours",
    "cooldown_hours": "retrain_cooldown_hours",
    "dedupe_policy": "monitor_dedupe_policy",
    "psi_threshold": "monitor_psi_threshold",
    "ks_threshold": "monitor_ks_threshold",
    "prediction_psi_threshold": "monitor_prediction_psi_threshold",
    "drift_min_features": "monitor_drift_min_features",
    "min_predictions": "monitor_min_predictions",
    "min_labels": "monitor_min_labels",
    "auc_drop": "monitor_auc_drop",
    "auc_floor": "monitor_auc_floor",
    "gate_auc_floor": "gate_auc_floor",
    "min_improvement": "gate_improvement_margin",
    "confidence": "gate_confidence",
    "gate_metric": "gate_metric",
    "gate_regression_metric": "gate_regression_metric",
    "eval_min_rows": "eval_min_rows",
    "slice_min_rows": "gate_slice_min_rows",
    "slice_tolerance": "gate_slice_tolerance",
    "num_threads": "num_threads",
    "num_boost_round": "num_boost_round",
}


def _fail(message: str, code: int = 2) -> NoReturn:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def register(app: typer.Typer) -> None:
    """Attach `retrain backtest`."""

    @app.command("backtest")
    def backtest_cmd(
        usecase: str | None = typer.Option(None, "--usecase", help="Replay a use case's history with its own "
                                           "features and settings (default: RETRAIN_USECASE, else the default one)."),
        data: Path | None = typer.Option(None, "--data", help="CSV or parquet history outside any use case."),
        time_col: str | None = typer.Option(None, "--time-col", help="Timestamp column of --data."),
        label_col: str | None = typer.Option(None, "--label-col", help="Label column of --data (0/1 or true/false)."),
        features: str | None = typer.Option(None, "--features", help="Comma-separated feature columns "
                                            "(default: every other non-datetime column)."),
        regression: bool = typer.Option(False, "--regression", help="The label is continuous (RMSE, regression)."),
        label_delay_hours: float = typer.Option(0.0, "--label-delay-hours", help="--data: a row's label is known "
                                                "this long after its time."),
        period: str = typer.Option("month", "--period", help="day, week or month."),
        policy: list[str] | None = typer.Option(None, "--policy", help="static, periodic-always, periodic-gated, "
                                                "triggered, or a triggered variant (the same replay with settings "
                                                "overrides): " + "; ".join(f"{k}: {v}" for k, v in
                                                                          TRIGGERED_VARIANT_HELP.items())
                                                + ". Repeatable; ':N' = every N periods (periodic). Default: "
                                                "static, periodic-always, periodic-gated, triggered."),
        every: int = typer.Option(1, "--every", help="Periodic policies retrain every N periods."),
        initial_periods: int | None = typer.Option(None, "--initial-periods", help="Periods in the initial "
                                                   "training window (default: covers retrain_train_days)."),
        min_period_rows: int | None = typer.Option(None, "--min-period-rows", help="Periods with fewer rows are "
                                                   "left out of every policy's mean (listed in the report) and "
                                                   "no promotion is judged on them (default: eval_min_rows)."),
        bad_margin: float = typer.Option(0.005, "--bad-margin", help="A promotion is bad when the new model is "
                                         "worse than the replaced one by more than this on the next period."),
        feature_home: Path | None = typer.Option(None, "--feature-home", help="A RETRAIN_HOME holding the use "
                                                 "case's landed history and feature tables (built there if empty; "
                                                 "default: a temporary one)."),
        date_from: str | None = typer.Option(None, "--from", help="Use case: first day (default: its data's start)."),
        date_to: str | None = typer.Option(None, "--to", help="Use case: end, exclusive (default: its data's end)."),
        train_days: float | None = typer.Option(None, "--train-days", help="retrain_train_days"),
        eval_days: float | None = typer.Option(None, "--eval-days", help="retrain_eval_days"),
        label_lag_hours: float | None = typer.Option(None, "--label-lag-hours", help="retrain_label_lag_hours"),
        cooldown_hours: float | None = typer.Option(None, "--cooldown-hours", help="retrain_cooldown_hours"),
        dedupe_policy: str | None = typer.Option(None, "--dedupe-policy", help="monitor_dedupe_policy: champion, "
                                                 "champion_period or window"),
        psi_threshold: float | None = typer.Option(None, "--psi-threshold", help="monitor_psi_threshold"),
        ks_threshold: float | None = typer.Option(None, "--ks-threshold", help="monitor_ks_threshold"),
        prediction_psi_threshold: float | None = typer.Option(None, "--prediction-psi-threshold",
                                                              help="monitor_prediction_psi_threshold"),
        drift_min_features: int | None = typer.Option(None, "--drift-min-features",
                                                      help="monitor_drift_min_features"),
        ignore_features: str | None = typer.Option(None, "--ignore-features", help="monitor_ignore_features "
                                                   "(comma-separated; '' = none)"),
        min_predictions: int | None = typer.Option(None, "--min-predictions", help="monitor_min_predictions"),
        min_labels: int | None = typer.Option(None, "--min-labels", help="monitor_min_labels"),
        auc_drop: float | None = typer.Option(None, "--auc-drop", help="monitor_auc_drop"),
        auc_floor: float | None = typer.Option(None, "--auc-floor", help="monitor_auc_floor"),
        ece_threshold: str | None = typer.Option(None, "--ece-threshold", help="monitor_ece_threshold ('off' "
                                                 "disables the rule)"),
        gate_auc_floor: float | None = typer.Option(None, "--gate-auc-floor", help="gate_auc_floor"),
        min_improvement: float | None = typer.Option(None, "--min-improvement", help="gate_improvement_margin"),
        confidence: float | None = typer.Option(None, "--confidence", help="gate_confidence"),
        gate_metric: str | None = typer.Option(None, "--gate-metric", help="gate_metric: auc, log_loss, brier"),
        gate_regression_metric: str | None = typer.Option(None, "--gate-regression-metric",
                                                          help="gate_regression_metric: rmse or mae"),
        eval_min_rows: int | None = typer.Option(None, "--eval-min-rows", help="eval_min_rows"),
        slice_min_rows: int | None = typer.Option(None, "--slice-min-rows", help="gate_slice_min_rows"),
        slice_tolerance: float | None = typer.Option(None, "--slice-tolerance", help="gate_slice_tolerance"),
        num_threads: int | None = typer.Option(None, "--num-threads", help="num_threads"),
        num_boost_round: int | None = typer.Option(None, "--num-boost-round", help="num_boost_round"),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        report: bool = typer.Option(True, "--report/--no-report", help="Write the HTML + PNG report."),
    ) -> None:
        """Backtest retraining policies (static, periodic, triggered and its variants) on history, with no
        servers."""
        from retrain.backtest import replay as bt
        from retrain.backtest import report as backtest_report
        from retrain.core.config import base_settings, get_settings
        from retrain.usecase.catalog import UseCaseError, load_usecase, settings_for
        from retrain.usecase.frames import load_table
        from retrain.usecase.history import load_history

        local = locals()
        updates: dict[str, Any] = {f: local[flag] for flag, f in OVERRIDES.items() if local[flag] is not None}
        if ignore_features is not None:
            updates["monitor_ignore_features"] = _split(ignore_features) or []
        if ece_threshold is not None:
            off = ece_threshold.strip().lower() in ("off", "none", "")
            try:
                updates["monitor_ece_threshold"] = None if off else float(ece_threshold)
            except ValueError:
                _fail(f"--ece-threshold {ece_threshold!r}: a number, or 'off'")
        say = (lambda m: console.print(f"[dim]{m}[/dim]")) if not as_json or console.is_terminal else None
        try:
            if data is not None and usecase is not None:
                _fail("--usecase and --data: give one (a use case names its own data)")
            spec = None
            if data is not None:
                base = base_settings()
            elif usecase is not None:
                spec = load_usecase(base_settings(), usecase)
                base = settings_for(spec, base_settings())
            else:
                base = get_settings()
                spec = load_usecase(base, base.usecase)
            settings = bt.with_overrides(base, updates)
            policies = [bt.parse_policy(p, every) for p in (policy or list(bt.DEFAULT_POLICIES))]
            if data is not None:
                if not time_col or not label_col:
                    _fail("--data needs --time-col and --label-col")
                history = load_table(data, time_col=time_col, label_col=label_col, features=_split(features),
                                        regression=regression, label_lag_hours=label_delay_hours)
            else:
                assert spec is not None
                if any(v for v in (time_col, label_col, features, regression)):
                    _fail("--time-col/--label-col/--features/--regression apply to --data FILE only")
                if say:
                    say(f"use case {spec.name}: history through {spec.features.service}")
                history = load_history(spec, settings, feature_home=feature_home, start=_when(date_from),
                                       end=_when(date_to), progress=say)
            result = bt.run_backtest(history, settings, policies, period=period, initial_periods=initial_periods,
                                     bad_margin=bad_margin, progress=say, min_period_rows=min_period_rows)
        except (bt.BacktestInputError, UseCaseError) as exc:
            _fail(str(exc))
        html_path = backtest_report.write_report(result, settings.reports_dir) if report else None
        if as_json:
            typer.echo(json.dumps({**result.to_dict(), "report": str(html_path) if html_path else None}))
            return
        if not out.is_terminal:  # a pipe or a log: wide enough that the tables do not wrap
            out.width = max(out.width, 160)
        for table in backtest_report.rich_tables(result):
            out.print(table)
        for note in result.history.get("notes", []):
            console.print(f"note: {note}")
        if html_path:
            console.print(f"report: {html_path}")


def _when(text: str | None) -> Any:
    if text is None:
        return None
    import pandas as pd

    try:
        return pd.Timestamp(text)
    except ValueError:
        _fail(f"{text!r} is not a date (use e.g. 2013-03-01)")
