"""CLI commands (filled in by the owning area)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the `retrain` app."""
    return None
