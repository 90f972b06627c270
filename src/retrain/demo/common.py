"""What every use case's demo shares: its state file, the servers, monitoring on the simulated
schedule, waiting for the retrains the alerts start, and the month report.

A use case's demo (`retrain demo`) replays its history through the whole loop with real servers:
the use case's code walks the simulated days (land what the clock released, materialize, ask
`/predict` over HTTP) and calls these steps. Monitoring alerts travel as real Prefect events to the
retrain deployment's trigger; the driver waits for the runs they start, so the simulation stays causal.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from retrain.core import clock, services
from retrain.core.config import Settings
from retrain.core.jsonsafe import write_json_atomic

Say = Callable[[str], None]
_console = Console(stderr=True)
STATE_FILE = "demo_state.json"


# The demo's retraining policy (each overridable by the same RETRAIN_* variable): weekly monitoring
# raises drift alerts almost every week as the seasons turn, so one retrain per champion per four
# simulated weeks and three weeks of cooldown after a promotion keep the year within budget.
DEMO_POLICY: dict[str, str] = {
    "RETRAIN_MONITOR_DEDUPE_POLICY": "champion_period",
    "RETRAIN_MONITOR_DEDUPE_PERIOD_HOURS": str(28 * 24),
    "RETRAIN_RETRAIN_COOLDOWN_HOURS": str(21 * 24),
}


def apply_demo_policy() -> dict[str, str]:
    """Set the demo policy in the environment (before settings are read; worker processes inherit it).

    Also turns simulated time on (not overridable: the demo replays history) for this process and,
    through the settings, for the Prefect worker's flow runs and the service it starts."""
    for key, value in DEMO_POLICY.items():
        os.environ.setdefault(key, value)
    os.environ[clock.ENV_VAR] = "1"
    return {k: os.environ[k] for k in DEMO_POLICY}


@dataclass
class DemoState:
    """Where a demo got to, so a re-run can resume (kept in RETRAIN_HOME/demo_state.json)."""

    setup_done: bool = False
    first_version: str | None = None
    day: str | None = None  # the next simulated day to replay
    seconds: dict[str, float] = field(default_factory=dict)
    retrain_runs: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, settings: Settings, usecase: str | None = None) -> DemoState:
        path = state_path(settings, usecase)
        return cls(**json.loads(path.read_text())) if path.exists() else cls()

    def save(self, settings: Settings, usecase: str | None = None) -> None:
        write_json_atomic(state_path(settings, usecase), self.__dict__, indent=1)


def state_path(settings: Settings, usecase: str | None = None) -> Path:
    """The demo's state file: the default use case's, or a named one's (`demo_state_<name>.json`)."""
    return settings.home / (STATE_FILE if usecase is None else f"demo_state_{usecase}.json")


def utc(value: str | datetime) -> datetime:
    ts = pd.Timestamp(value)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()


def reset(settings: Settings) -> None:
    """Stop anything a previous run left and remove its state: a clean start."""
    for name in ("bentoml", "prefect-worker", "prefect-server"):
        services.stop(settings, name)
    if settings.home.exists():
        shutil.rmtree(settings.home)


# ------------------------------------------------------------------------------------------- setup


def start_prefect(settings: Settings, state: DemoState, say: Say) -> None:
    """The Prefect server (state under RETRAIN_HOME), the work pool and deployments, a process worker."""
    require_simulated_clock(settings)
    warn_if_running(settings, "prefect-worker", say)
    settings.ensure_dirs()
    os.environ.update(services.prefect_env(settings))
    t0 = time.perf_counter()
    say("starting the Prefect server (state under RETRAIN_HOME)")
    services.start(settings, services.prefect_server_spec(settings))
    say("creating the work pool and deploying prefect.yaml")
    services.ensure_pool_and_deploy(settings)
    services.start(settings, services.prefect_worker_spec(settings))
    state.seconds["servers"] = round(time.perf_counter() - t0, 1)


def run_deployment(settings: Settings, name: str, parameters: dict[str, Any], timeout: float = 900) -> Any:
    """Run a deployment on the worker and return its result (raises if the run did not complete)."""
    from prefect.deployments import run_deployment as prefect_run

    run: Any = prefect_run(name=name, parameters=parameters, timeout=timeout)  # sync call returns a FlowRun
    state = run.state
    if state is None or not state.is_completed():
        raise RuntimeError(f"{name} run {run.name} ended {state.type if state else 'unknown'}: "
                           f"{state.message if state else ''}; see the Prefect UI")
    return state.result()


def require_simulated_clock(settings: Settings) -> None:
    """The demo replays history: it needs simulated time on (`apply_demo_policy` turns it on)."""
    if not settings.simulated_clock:
        raise RuntimeError(f"the demo replays history on simulated time: set {clock.ENV_VAR}=1 before reading "
                           "settings (`retrain demo` does) so the worker and the service it starts follow it")


def warn_if_running(settings: Settings, name: str, say: Say) -> None:
    """A process started before the demo keeps its own clock (wall-clock unless it was started with
    simulated time on): say so, since the demo reuses it."""
    if services.pid_of(settings, name) is not None:
        say(f"warning: {name} is already running and is reused; it follows the simulated clock only if it was "
            f"started with {clock.ENV_VAR}=1 (`retrain down` first to be sure)")


def start_service(settings: Settings, say: Say) -> None:
    require_simulated_clock(settings)
    warn_if_running(settings, "bentoml", say)
    say(f"starting the BentoML service on {settings.serve_host}:{settings.serve_port}")
    services.start(settings, services.bento_spec(settings), timeout=240)


# ------------------------------------------------------------------------------------------ replay


def wait_for_retrains(settings: Settings, since: datetime, known: list[str], timeout: float = 900) -> list[str]:
    """Wait until every retrain flow run created after `since` is finished; returns their ids."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
    )

    deadline = time.monotonic() + timeout
    seen: list[str] = []
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=since)),
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["retrain"])))
            seen = [str(r.id) for r in runs]
            pending = [r for r in runs if r.state is None or not r.state.is_final()]
            if not pending or time.monotonic() > deadline:
                return [s for s in seen if s not in known]
            time.sleep(1.0)


@contextmanager
def timed(state: DemoState, key: str) -> Iterator[None]:
    """Accumulate the seconds of one kind of step in the demo state (the timing table)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        state.seconds[f"step_{key}"] = round(state.seconds.get(f"step_{key}", 0.0) + time.perf_counter() - t0, 2)


@contextmanager
def quiet() -> Iterator[None]:
    """Feast prints a progress line per view and day, and ibis a DeprecationWarning per query; the
    demo shows its own progress instead."""
    with open(os.devnull, "w") as sink, redirect_stdout(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def monitor_and_retrain(settings: Settings, state: DemoState, now: datetime, say: Say) -> None:
    """Run the monitor flow (its alerts become events); wait for the retrains the trigger starts."""
    import sys

    from retrain.core.config import REPO_ROOT

    if str(REPO_ROOT) not in sys.path:  # flows/ is not part of the installed package
        sys.path.insert(0, str(REPO_ROOT))
    from flows.monitor import monitor_flow

    started = datetime.now(UTC) - timedelta(seconds=2)
    result = monitor_flow(model_name=settings.model_name, as_of=now.isoformat())
    if result["events"]["sent"]:
        kinds = ", ".join(a["kind"] for a in result["alerts"])
        say(f"{now.date()}: monitoring raised {kinds}; waiting for the retrain run(s)")
        time.sleep(3.0)  # the trigger reacts to the event within a second or two
        state.retrain_runs += wait_for_retrains(settings, started, state.retrain_runs)


# ----------------------------------------------------------------------------------------- summary


def add_loop_counts(table: pd.DataFrame, alerts: pd.DataFrame, promos: pd.DataFrame) -> pd.DataFrame:
    """Per month of `table`: alerts received, retrains run (admitted alerts), champion promotions.

    `alerts` has columns `at`, `outcome`; `promos` `at`, `action`, `alias` (times in simulated UTC)."""
    if table.empty:
        return table

    def per_month(frame: pd.DataFrame, at: str) -> pd.Series:
        return frame.assign(month=pd.to_datetime(frame[at], utc=True).dt.strftime("%Y-%m")).groupby("month").size()

    alerts_m = per_month(alerts, "at") if len(alerts) else pd.Series(dtype=int)
    runs_m = per_month(alerts[alerts["outcome"] == "run"], "at") if len(alerts) else pd.Series(dtype=int)
    champ = promos[(promos["alias"] == "champion") & (promos["action"] == "promote")]
    promo_m = per_month(champ, "at") if len(champ) else pd.Series(dtype=int)
    table["alerts"] = table["month"].map(alerts_m).fillna(0).astype(int)
    table["retrains"] = table["month"].map(runs_m).fillna(0).astype(int)
    table["promotions"] = table["month"].map(promo_m).fillna(0).astype(int)
    return table


@dataclass(frozen=True)
class ReportLabels:
    """What a demo report says: where it goes, the metric columns, titles."""

    folder: str = "demo"
    metric: str = "auc"  # columns <metric>_served and <metric>_never_retrained
    ylabel: str = "ROC AUC"
    baseline: str = "never retrained (first model)"
    title: str = "served vs never retrained (green: months with promotions)"
    heading: str = "retrain demo"


def write_report(settings: Settings, table: pd.DataFrame, state: DemoState,
                 labels: ReportLabels | None = None) -> Path:
    """HTML page + PNG of the monthly metric (served vs never retrained), marking alerts and promotions."""
    from matplotlib.figure import Figure

    lab = labels or ReportLabels()
    served, never = f"{lab.metric}_served", f"{lab.metric}_never_retrained"
    out = settings.reports_dir / lab.folder
    out.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(9, 4.5))
    ax = fig.add_subplot()
    x = np.arange(len(table))
    ax.plot(x, table[served], marker="o", label="served (retrained by the loop)")
    ax.plot(x, table[never], marker="s", label=lab.baseline)
    for i, row in table.iterrows():
        if row["promotions"]:
            ax.axvline(float(str(i)), color="green", alpha=0.3, lw=6)
        if row["alerts"]:
            ax.annotate(f"{row['alerts']} alert(s)", (float(str(i)), row[served]), fontsize=7,
                        xytext=(0, 8), textcoords="offset points", ha="center", color="red")
    ax.set_xticks(x, table["month"], rotation=45, fontsize=8)
    ax.set_ylabel(lab.ylabel)
    ax.set_title(lab.title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = out / f"{lab.metric}_by_month.png"
    fig.savefig(png, dpi=110)
    html = out / "index.html"
    html.write_text(
        "<html><head><meta charset='utf-8'><title>retrain demo</title></head><body>"
        f"<h1>{lab.heading}</h1>"
        f"<p>Timings (s): {json.dumps(state.seconds)}</p>"
        f"<img src='{png.name}' alt='{lab.ylabel} by month'>"
        f"{table.to_html(index=False, float_format=lambda v: f'{v:.4f}')}</body></html>")
    return html


class replay_progress:  # noqa: N801 - used as a context manager, reads like one
    """A rich progress bar for the replay; `say` prints above it, calling it updates it."""

    def __enter__(self) -> replay_progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("[bold]replay"), BarColumn(), TextColumn("{task.completed}/{task.total} days"),
                            TimeElapsedColumn(), TextColumn("{task.description}"), console=_console)
        self.bar.__enter__()
        self.task = self.bar.add_task("", total=1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)  # type: ignore[arg-type]

    def say(self, message: str) -> None:
        self.bar.console.print(message)

    def __call__(self, done: int, total: int, text: str) -> None:
        self.bar.update(self.task, completed=done, total=total, description=text)


def finish(settings: Settings, report: Path, seconds: dict[str, float], exit_after: bool) -> None:
    """Report path, timings, where to look; then wait for Ctrl-C unless --exit."""
    import signal

    _console.print(f"report: {report}")
    _console.print(f"timings (s): {seconds}")
    _console.print(f"Prefect UI: http://127.0.0.1:{settings.prefect_port}   "
                  f"service docs: http://{settings.serve_host}:{settings.serve_port}/")
    if exit_after:
        return
    _console.print("servers stay up; Ctrl-C stops them")
    signal.sigwait({signal.SIGINT, signal.SIGTERM})


def stop_all(settings: Settings) -> None:
    """Stop the service, the worker and the Prefect server."""
    for name in ("bentoml", "prefect-worker", "prefect-server"):
        services.stop(settings, name)
