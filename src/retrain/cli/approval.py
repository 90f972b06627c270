"""`retrain approvals`, `retrain approve RUN` and `retrain reject RUN`: answer a retrain that waits for a person.

A use case with `retrain_require_approval` pauses its retrain run once a challenger passed every gate;
these commands list such runs and resume them with a decision (the Prefect UI's "Resume" form does
the same). Who answered, when and why goes into the promotion history.
"""

from __future__ import annotations

import json

import typer
from rich.console import Console

console = Console(stderr=True)


def _use_local_prefect() -> None:
    """Point Prefect's client at `retrain up`'s server unless PREFECT_API_URL says otherwise."""
    from retrain.core import services
    from retrain.core.config import get_settings

    services.use_local_prefect(get_settings())


def register(app: typer.Typer) -> None:
    """Attach `retrain approvals`, `retrain approve` and `retrain reject`."""

    @app.command("approvals")
    def approvals_cmd(as_json: bool = typer.Option(False, "--json")) -> None:
        """Retrain runs paused until someone approves or rejects their challenger."""
        from retrain.alerts import approval

        _use_local_prefect()
        runs = approval.waiting()
        if as_json:
            typer.echo(json.dumps(runs))
            return
        if not runs:
            console.print("no retrain waits for approval")
        for run in runs:
            console.print(f"{run['id']}  {run['name']}  model {run['model'] or '-'}  paused since {run['since']}")

    def _answer(run: str, approve: bool, comment: str, approver: str | None) -> None:
        from retrain.alerts import approval

        _use_local_prefect()
        approval.answer(run, approve=approve, comment=comment, approver=approver)
        console.print(f"{'approved' if approve else 'rejected'} run {run}: it resumes within seconds")

    @app.command("approve")
    def approve_cmd(run: str = typer.Argument(..., help="Flow run id (see `retrain approvals`)."),
                    comment: str = typer.Option("", "--comment", help="Why; kept in the promotion history."),
                    approver: str | None = typer.Option(None, "--as", help="Who decides (default: your user)."),
                    ) -> None:
        """Promote the challenger a paused retrain run waits on."""
        _answer(run, True, comment, approver)

    @app.command("reject")
    def reject_cmd(run: str = typer.Argument(..., help="Flow run id (see `retrain approvals`)."),
                   comment: str = typer.Option("", "--comment", help="Why; kept in the promotion history."),
                   approver: str | None = typer.Option(None, "--as", help="Who decides (default: your user)."),
                   ) -> None:
        """Reject the challenger a paused retrain run waits on (the champion stays)."""
        _answer(run, False, comment, approver)
