"""`retrain up` / `retrain down`: the local Prefect server, worker and BentoML service."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Attach the lifecycle commands."""

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
