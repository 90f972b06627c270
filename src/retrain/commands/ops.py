"""`retrain up` / `retrain down`: the local Prefect server, worker and BentoML service."""

from __future__ import annotations

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
    ) -> None:
        """Start the Prefect server (state under RETRAIN_HOME), a process worker and the service."""
        from retrain import services
        from retrain.config import get_settings

        settings = get_settings()
        settings.ensure_dirs()
        with console.status("starting the Prefect server"):
            services.start(settings, services.prefect_server_spec(settings))
        if deploy:
            with console.status("creating the work pool and deploying prefect.yaml"):
                services.ensure_pool_and_deploy(settings)
        services.start(settings, services.prefect_worker_spec(settings))
        if serve:
            with console.status("starting the BentoML service"):
                services.start(settings, services.bento_spec(settings), timeout=180)
        for name, pid in services.running(settings).items():
            console.print(f"{name:15} {'pid ' + str(pid) if pid else 'stopped'}")
        console.print(f"Prefect UI: http://127.0.0.1:{settings.prefect_port}")
        if serve:
            console.print(f"Service docs: http://{settings.serve_host}:{settings.serve_port}/")

    @app.command("down")
    def down_cmd() -> None:
        """Stop everything `retrain up` started (service, worker, server), children included."""
        from retrain import services
        from retrain.config import get_settings

        settings = get_settings()
        for name in ("bentoml", "prefect-worker", "prefect-server"):
            stopped = services.stop(settings, name)
            console.print(f"{name:15} {'stopped' if stopped else 'was not running'}")


def register_demo(app: typer.Typer) -> None:
    """Attach `retrain demo`."""

    @app.command("demo")
    def demo_cmd(
        quick: bool = typer.Option(False, "--quick", help="Replay March–April only (a quick look)."),
        until: str | None = typer.Option(None, "--until", help="Replay up to this date (default 2014-01-01)."),
        fresh: bool = typer.Option(False, "--fresh/--resume",
                                   help="Start clean (stop servers, delete RETRAIN_HOME) or resume where it stopped."),
        exit_after: bool = typer.Option(False, "--exit", help="Stop the servers and exit at the end."),
    ) -> None:
        """The whole loop on the 2013 flights: servers, first champion, replay, alerts, retrains, report."""
        import dataclasses
        import signal
        import time

        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.table import Table

        from retrain import demo, services
        from retrain.config import get_settings

        policy = demo.apply_demo_policy()
        get_settings.cache_clear()
        settings = get_settings()
        if fresh:
            demo.reset(settings)
        console.print(f"demo retraining policy: {policy}")
        plan = demo.DemoPlan.quick() if quick else demo.DemoPlan()
        if until:
            plan = dataclasses.replace(plan, replay_to=until)
        state = demo.DemoState.load(settings)
        t0 = time.perf_counter()
        say = console.print
        try:
            demo.setup(settings, plan, state, say)
            demo.start_service(settings, say)
            with Progress(TextColumn("[bold]replay"), BarColumn(), TextColumn("{task.completed}/{task.total} days"),
                          TimeElapsedColumn(), TextColumn("{task.description}"), console=console) as bar:
                task = bar.add_task("", total=1)

                def progress(done: int, total: int, text: str) -> None:
                    bar.update(task, completed=done, total=total, description=text)

                demo.replay(settings, plan, state, lambda m: bar.console.print(m), progress)
            state.seconds["total_this_run"] = round(time.perf_counter() - t0, 1)
            state.save(settings)
            table = demo.monthly_table(settings, state.first_version or "")
            out = Table(title="2013 replay: served model vs the never-retrained Jan–Feb model")
            for col in ("month", "flights", "late rate", "AUC served", "AUC never retrained", "alerts", "retrains",
                        "promotions", "versions"):
                out.add_column(col, no_wrap=True)
            for row in table.itertuples():
                out.add_row(str(row.month), f"{row.flights:,}", f"{row.late_rate:.1%}", f"{row.auc_served:.4f}",
                            f"{row.auc_never_retrained:.4f}", str(row.alerts), str(row.retrains),
                            str(row.promotions), str(row.versions))
            # a pipe reports 80 columns and rich truncates cells to fit: print the table at full width
            Console(stderr=True, width=max(console.width, 140)).print(out)
            if len(table):
                served, never = table["auc_served"].mean(), table["auc_never_retrained"].mean()
                better = int((table["auc_served"] > table["auc_never_retrained"]).sum())
                console.print(f"mean monthly AUC: served {served:.4f} vs never retrained {never:.4f} "
                              f"({served - never:+.4f}); served model better in {better} of {len(table)} months")
            report = demo.write_report(settings, table, state)
            console.print(f"report: {report}")
            console.print(f"timings (s): {state.seconds}")
            console.print(f"Prefect UI: http://127.0.0.1:{settings.prefect_port}   "
                          f"service docs: http://{settings.serve_host}:{settings.serve_port}/")
            if exit_after:
                return
            console.print("servers stay up; Ctrl-C stops them")
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        except KeyboardInterrupt:
            console.print("interrupted; `retrain demo` resumes from the last finished day (--fresh starts clean)")
        finally:
            for name in ("bentoml", "prefect-worker", "prefect-server"):
                services.stop(settings, name)
