"""The time retrain acts on: wall-clock UTC, or a simulated "now" during a replay of history.

Simulated time is an explicit mode, the `simulated_clock` setting (`RETRAIN_SIMULATED_CLOCK`), off by
default. Off, `now()` is wall-clock UTC and the clock file is never read, so a file a demo left behind
cannot move a live deployment's predictions, promotions and cooldowns (`retrain status` reports it as
stale). On (the demo turns it on for itself and every process it starts), every process (flows on
the worker, the CLI, the service) must agree on the simulated present, so it lives in one small file
under RETRAIN_HOME instead of in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from retrain.core.config import Settings
from retrain.core.jsonsafe import write_json_atomic

CLOCK_FILE = "sim_clock.json"
ENV_VAR = "RETRAIN_SIMULATED_CLOCK"  # the setting `simulated_clock` as child processes receive it


def _path(settings: Settings) -> Path:
    return settings.home / CLOCK_FILE


def _read(settings: Settings) -> datetime | None:
    """The simulated present the file holds, None when there is no file."""
    try:
        text = _path(settings).read_text()
    except FileNotFoundError:
        return None
    return datetime.fromisoformat(json.loads(text)["now"]).astimezone(UTC)


def now(settings: Settings) -> datetime:
    """Wall-clock UTC; with the simulated mode on, the simulated present a replay set (wall-clock
    until it sets one)."""
    if not settings.simulated_clock:
        return datetime.now(UTC)
    return _read(settings) or datetime.now(UTC)


def simulated(settings: Settings) -> bool:
    """Whether retrain runs on a simulated present: the mode is on and a replay set the time."""
    return settings.simulated_clock and _path(settings).exists()


def set_now(settings: Settings, when: datetime) -> None:
    """Advance the simulated present (atomic write, readable by other processes at any time).

    Only with the simulated mode on: a time nobody follows would only be a stale file."""
    if when.tzinfo is None:
        raise ValueError(f"clock: naive datetime {when!r}; pass UTC")
    if not settings.simulated_clock:
        raise RuntimeError(f"clock: simulated time is off; set {ENV_VAR}=1 for this process and every process "
                           "that must follow the simulated present (the worker, the service) before setting it")
    write_json_atomic(_path(settings), {"now": when.astimezone(UTC).isoformat()})


def clear(settings: Settings) -> None:
    """Back to wall-clock time (removes the clock file)."""
    _path(settings).unlink(missing_ok=True)


@dataclass(frozen=True)
class ClockState:
    """Which clock a process runs on, for `retrain status` and the service's `GET /model`."""

    simulated_mode: bool  # the setting `simulated_clock`
    now: datetime | None  # the simulated present in use; None: wall-clock time
    stale_file: Path | None  # a clock file the mode ignores (mode off), e.g. left behind by a demo

    @property
    def label(self) -> str:
        """`real`, `simulated at <time>`, or the mode on with no time set yet."""
        if self.now is not None:
            return f"simulated at {self.now.isoformat()}"
        return "simulated, no time set yet (wall-clock)" if self.simulated_mode else "real"

    @property
    def warning(self) -> str | None:
        if self.stale_file is None:
            return None
        return (f"stale {self.stale_file} ignored: simulated time is off ({ENV_VAR}); a demo left it behind? "
                "remove it, or set the variable to replay on it")

    def as_json(self) -> dict[str, Any]:
        return {"mode": "simulated" if self.simulated_mode else "real",
                "now": self.now.isoformat() if self.now is not None else None, "label": self.label,
                "stale_file": str(self.stale_file) if self.stale_file is not None else None,
                "warning": self.warning}


def state(settings: Settings) -> ClockState:
    """The clock `now()` follows, and a clock file it ignores (reads the file only in the simulated mode)."""
    if settings.simulated_clock:
        return ClockState(simulated_mode=True, now=_read(settings), stale_file=None)
    path = _path(settings)
    return ClockState(simulated_mode=False, now=None, stale_file=path if path.exists() else None)
