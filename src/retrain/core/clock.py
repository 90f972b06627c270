"""The time retrain acts on: wall-clock UTC, or a simulated "now" during a replay of history.

The demo replays 2013; every process (flows on the worker, the CLI, the service) must agree on
the simulated present, so it lives in one small file under RETRAIN_HOME instead of in memory.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from retrain.core.config import Settings
from retrain.core.jsonsafe import write_json_atomic

CLOCK_FILE = "sim_clock.json"


def _path(settings: Settings) -> Path:
    return settings.home / CLOCK_FILE


def now(settings: Settings) -> datetime:
    """The simulated present if a replay set one, else wall-clock UTC."""
    try:
        text = _path(settings).read_text()
    except FileNotFoundError:
        return datetime.now(UTC)
    return datetime.fromisoformat(json.loads(text)["now"]).astimezone(UTC)


def simulated(settings: Settings) -> bool:
    """Whether a replay clock is active."""
    return _path(settings).exists()


def set_now(settings: Settings, when: datetime) -> None:
    """Advance the simulated present (atomic write, readable by other processes at any time)."""
    if when.tzinfo is None:
        raise ValueError(f"clock: naive datetime {when!r}; pass UTC")
    write_json_atomic(_path(settings), {"now": when.astimezone(UTC).isoformat()})


def clear(settings: Settings) -> None:
    """Back to wall-clock time."""
    _path(settings).unlink(missing_ok=True)
