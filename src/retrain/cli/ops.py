"""`retrain up` / `retrain down`: the local Prefect server, worker and BentoML service."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Attach the lifecycle commands and the demo."""
    register_demo(app)

    @app.command("up")
    def up_cmd(
        serve: bool = typer.Option(True, "--serve/--no-serve", help="Also start the BentoML service."),
        deploy: bool = typer.Option(True, "--deploy/--no-deploy", help="Create the work pool and deploy prefect.yaml."),
        insecure: bool = typer.Option(False, "--insecure", help="Serve on a non-loopback serve_host without "
                                      "RETRAIN_API_KEY (every route open), and the Prefect server on a non-loopback "
                                      "prefect_host without RETRAIN_PREFECT_AUTH_STRING."),
    ) -> None:
        """Start the Prefect server (state under RETRAIN_HOME), a process worker and the service."""
        from retrain.core import services
        from retrain.core.config import get_settings

        settings = get_settings()
        if insecure:
            settings = settings.model_copy(update={"serve_insecure": True})
        if serve:
            services.check_bind(settings)  # before anything starts
        server = services.prefect_server_spec(settings)  # refuses an open non-loopback server, before anything starts
        settings.ensure_dirs()
        with console.status("starting the Prefect server"):
            services.start(settings, server)
        if deploy:
            with console.status("creating the work pool and deploying prefect.yaml"):
                services.ensure_pool_and_deploy(settings)
        services.start(settings, services.prefect_worker_spec(settings))
        if serve:
            with console.status("starting the BentoML service"):
                services.start(settings, services.bento_spec(settings), timeout=180)
        for name, pid in services.running(settings).items():
            console.print(f"{name:15} {'pid ' + str(pid) if pid else 'stopped'}")
        auth = "basic auth (RETRAIN_PREFECT_AUTH_STRING)" if settings.prefect_auth_value else "no auth"
        console.print(f"Prefect UI: {services.prefect_api_url(settings).removesuffix('/api')} ({auth})")
        if serve:
            console.print(f"Service docs: http://{settings.serve_host}:{settings.serve_port}/")

    @app.command("down")
    def down_cmd() -> None:
        """Stop everything `retrain up` started (service, worker, server), children included."""
        from retrain.core import services
        from retrain.core.config import get_settings

        settings = get_settings()
        for name in ("bentoml", "prefect-worker", "prefect-server"):
            stopped = services.stop(settings, name)
            console.print(f"{name:15} {'stopped' if stopped else 'was not running'}")


def register_demo(app: typer.Typer) -> None:
    """Attach `retrain demo`."""

    @app.command("demo")
    def demo_cmd(
        quick: bool = typer.Option(False, "--quick", help="Replay two months only."),
        until: str | None = typer.Option(None, "--until", help="Replay up to this date (default: the end of "
                                         "the use case's data)."),
        fresh: bool = typer.Option(False, "--fresh/--resume",
                                   help="Start clean (stop servers, delete RETRAIN_HOME) or resume where it stopped."),
        exit_after: bool = typer.Option(False, "--exit", help="Stop the servers and exit at the end."),
        usecase: str | None = typer.Option(None, "--usecase", help="The use case to replay (default: the "
                                           "active one, RETRAIN_USECASE)."),
    ) -> None:
        """The whole loop with real servers: first champion, replay, alerts, retrains, month table, report.

        The active use case, or `--usecase NAME`: its history (one demo per RETRAIN_HOME: the simulated
        clock is the home's)."""
        import os

        from retrain.core.config import get_settings
        from retrain.demo import common as demo

        if usecase:
            os.environ["RETRAIN_USECASE"] = usecase
        policy = demo.apply_demo_policy()
        get_settings.cache_clear()
        settings = get_settings()
        from retrain.usecase.catalog import load_callable, load_usecase

        spec = load_usecase(settings, settings.usecase)
        if spec.pipeline is not None and spec.pipeline.demo:  # the use case's own demo
            load_callable(spec, spec.pipeline.demo)(settings, policy, quick=quick, until=until, fresh=fresh,
                                                     exit_after=exit_after)
            return
        _usecase_demo(settings, policy, quick=quick, until=until, fresh=fresh, exit_after=exit_after)


def _usecase_demo(settings: Any, policy: dict[str, str], *, quick: bool, until: str | None, fresh: bool,
                  exit_after: bool) -> None:
    """`retrain demo --usecase NAME` for a use case with its own Feast repository."""
    import time

    from rich.table import Table

    from retrain.demo import common as demo
    from retrain.demo import usecase as demo_usecase
    from retrain.usecase import featurestore
    from retrain.usecase.catalog import load_usecase

    spec = load_usecase(settings, settings.usecase)
    if spec.feast is None:
        raise typer.BadParameter(f"use case {spec.name!r} has no feast section (its own Feast repository) and no "
                                 "pipeline.demo: nothing to replay through the servers", param_hint="--usecase")
    if fresh:
        demo.reset(settings)
    others = sorted(p.name for p in settings.home.glob("demo_state*.json")
                    if p != demo.state_path(settings, spec.name))
    if others:
        raise typer.BadParameter(f"{settings.home} holds another demo ({', '.join(others)}); one demo per "
                                 "RETRAIN_HOME (the simulated clock is the home's): pass --fresh or set another "
                                 "RETRAIN_HOME", param_hint="--usecase")
    console.print(f"demo retraining policy: {policy}")
    plan = demo_usecase.plan_for(spec, settings, featurestore.raw_rows(spec), quick=quick, until=until)
    console.print(f"{spec.name}: history to {plan.replay_from}, first champion on {plan.first_train} judged on "
                  f"{plan.first_eval}, replay to {plan.replay_to}, monitoring every {plan.monitor_every_days:g} days")
    state = demo.DemoState.load(settings, spec.name)
    t0 = time.perf_counter()
    try:
        demo_usecase.setup(spec, settings, plan, state, console.print)
        demo.start_service(settings, console.print)
        with demo.replay_progress() as progress:
            demo_usecase.replay(spec, settings, plan, state, progress.say, progress)
        state.seconds["total_this_run"] = round(time.perf_counter() - t0, 1)
        state.save(settings, spec.name)
        table = demo_usecase.monthly_table(spec, settings, state.first_version or "")
        metric = demo_usecase.metric_name(spec)
        served_col, never_col = f"{metric}_served", f"{metric}_never_retrained"
        out = Table(title=f"{spec.name} replay: served model vs the never-retrained first model")
        for col in ("month", "rows", "mean label", f"{metric.upper()} served", f"{metric.upper()} never retrained",
                    "alerts", "retrains", "promotions", "versions"):
            out.add_column(col, no_wrap=True)
        for row in table.to_dict("records"):
            out.add_row(str(row["month"]), f"{row['rows']:,}", f"{row['mean_label']:.3f}", f"{row[served_col]:.4f}",
                        f"{row[never_col]:.4f}", str(row["alerts"]), str(row["retrains"]), str(row["promotions"]),
                        str(row["versions"]))
        Console(stderr=True, width=max(console.width, 140)).print(out)
        if len(table):
            served, never = table[served_col].mean(), table[never_col].mean()
            lower_is_better = metric == "rmse"
            better = int(((table[served_col] < table[never_col]) if lower_is_better
                          else (table[served_col] > table[never_col])).sum())
            console.print(f"mean monthly {metric.upper()}: served {served:.4f} vs never retrained {never:.4f} "
                          f"({served - never:+.4f}); served model better in {better} of {len(table)} months")
        report = demo.write_report(settings, table, state, demo_usecase.report_labels(spec, plan))
        table.to_csv(report.parent / "months.csv", index=False)
        demo.finish(settings, report, state.seconds, exit_after)
    except KeyboardInterrupt:
        console.print(f"interrupted; `retrain demo --usecase {spec.name}` resumes from the last finished day "
                      "(--fresh starts clean)")
    finally:
        demo.stop_all(settings)


