"""Settings that fit a use case's data volume, and the up-front refusal when they cannot.

The defaults (1,000 evaluation rows, 500 predictions per monitoring window) suit ~900
labelled rows a day). On a daily dataset of 30 rows a month they make every evaluation refuse and
monitoring never judge: a loop that silently does nothing. `sized_settings` derives minimums from the
rows per day; `volume_problems` names each setting that the data can never satisfy, with the number
seen and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from retrain.core.config import Settings

MIN_EVAL_ROWS = 30  # below this a paired bootstrap on the loss difference says nothing
MIN_MONITOR_ROWS = 20
MIN_TRAIN_ROWS = 200
MAX_WINDOW_DAYS = 366.0


@dataclass(frozen=True)
class Volume:
    """How much labelled data arrives: rows per day, over a span."""

    rows: int
    days: float
    label_delay_hours: float = 0.0  # a row's label matures this long after its time
    times_per_day: float | None = None  # distinct event times a day (a weekly panel: 1/7); None: unknown

    @property
    def per_day(self) -> float:
        return self.rows / max(self.days, 1.0)

    def expected(self, days: float) -> float:
        """Rows expected in a window of `days`."""
        return self.per_day * max(0.0, days)

    def unlabelled_days(self, lag_hours: float = 0.0) -> float:
        """The tail of a window ending `lag_hours` before now whose labels have not matured yet."""
        return max(0.0, self.label_delay_hours - lag_hours) / 24.0


def _window(per_day: float, days: float, need: float) -> float:
    """`days`, lengthened (up to a year) until it holds `need` rows."""
    if per_day * days >= need:
        return days
    return float(min(MAX_WINDOW_DAYS, math.ceil(need / max(per_day, 1e-9))))


def sized_settings(volume: Volume, base: Settings) -> dict[str, Any]:
    """Overrides that make evaluation, monitoring and slices work on this volume (only what changes)."""
    r = volume.per_day
    train_days = _window(r, base.retrain_train_days, MIN_TRAIN_ROWS * 2)
    # windows are lengthened by their unlabelled tail: their labelled part must hold the rows
    unl_eval, unl_window = volume.unlabelled_days(base.retrain_label_lag_hours), volume.unlabelled_days()
    eval_days = _window(r, base.retrain_eval_days - unl_eval, MIN_EVAL_ROWS * 4) + unl_eval
    # the gates resample blocks of event time: one block holds at least one event time, and the
    # evaluation window spans gate_min_blocks of them (a weekly panel: weekly blocks, >= 5 weeks)
    block_hours = base.gate_block_hours
    if volume.times_per_day and volume.times_per_day * block_hours / 24.0 < 1.0:
        block_hours = float(math.ceil(24.0 / volume.times_per_day))
    eval_days = max(eval_days, float(math.ceil(base.gate_min_blocks * block_hours / 24.0)) + unl_eval)
    window_days = _window(r, base.monitor_window_days - unl_window, MIN_MONITOR_ROWS * 2) + unl_window
    in_eval, in_window = volume.expected(eval_days - unl_eval), volume.expected(window_days)
    labelled_window = volume.expected(window_days - unl_window)
    out: dict[str, Any] = {
        "retrain_train_days": train_days,
        "retrain_eval_days": eval_days,
        "gate_block_hours": block_hours,
        "eval_min_rows": int(min(base.eval_min_rows, max(MIN_EVAL_ROWS, in_eval * 0.5))),
        "gate_slice_min_rows": int(min(base.gate_slice_min_rows, max(MIN_EVAL_ROWS, in_eval * 0.1))),
        "monitor_window_days": window_days,
        "monitor_min_predictions": int(min(base.monitor_min_predictions, max(MIN_MONITOR_ROWS, in_window * 0.5))),
        "monitor_min_labels": int(min(base.monitor_min_labels, max(MIN_MONITOR_ROWS, labelled_window * 0.5))),
        "monitor_dedupe_period_hours": max(base.monitor_dedupe_period_hours, window_days * 24.0),
    }
    return {k: v for k, v in out.items() if getattr(base, k) != v}


def _env(name: str) -> str:
    return f"RETRAIN_{name.upper()}"


def volume_problems(settings: Settings, volume: Volume, *, monitor_rows: float | None = None,
                    monitor_labelled: float | None = None, monitor_what: str | None = None,
                    flags: dict[str, str] | None = None, labels_judged: bool = True) -> list[str]:
    """Each setting the data volume can never meet, as one sentence naming the fix.

    `monitor_rows` / `monitor_labelled` override the rows and matured labels of a monitoring window (the
    backtest monitors whole periods); labels mature `volume.label_delay_hours` after their rows;
    `flags` maps setting names to command-line flags to mention; `labels_judged` is False where no
    rule reads matured labels (regression monitoring judges drift only).
    """
    flags = flags or {}
    sized = sized_settings(volume, settings)

    def how(name: str) -> str:
        return _env(name) + (f" or {flags[name]}" if name in flags else "")

    problems: list[str] = []
    in_eval = volume.expected(settings.retrain_eval_days - volume.unlabelled_days(settings.retrain_label_lag_hours))
    if in_eval < settings.eval_min_rows:
        days = sized.get("retrain_eval_days", settings.retrain_eval_days)
        fix = f"set eval_min_rows to {sized.get('eval_min_rows', MIN_EVAL_ROWS)} or lower ({how('eval_min_rows')})"
        if days != settings.retrain_eval_days:
            fix = f"set retrain_eval_days to {days:g} ({how('retrain_eval_days')}) and " + fix.removeprefix("set ")
        problems.append(
            f"evaluation window ({settings.retrain_eval_days:g} days): ~{in_eval:,.0f} labelled rows < eval_min_rows "
            f"{settings.eval_min_rows:,} — every retrain would be refused; {fix}")
    blocks = (settings.retrain_eval_days - volume.unlabelled_days(settings.retrain_label_lag_hours)) * 24.0
    blocks /= settings.gate_block_hours
    if volume.times_per_day:
        blocks = min(blocks, settings.retrain_eval_days * volume.times_per_day)  # blocks without rows are none
    if blocks < settings.gate_min_blocks:
        days = sized.get("retrain_eval_days", settings.retrain_eval_days)
        fix = f"set retrain_eval_days to {days:g} ({how('retrain_eval_days')})"
        if "gate_block_hours" in sized:
            fix += f" and gate_block_hours to {sized['gate_block_hours']:g} ({how('gate_block_hours')})"
        problems.append(
            f"evaluation window ({settings.retrain_eval_days:g} days): ~{blocks:.0f} blocks of "
            f"{settings.gate_block_hours:g} h with labelled rows < gate_min_blocks {settings.gate_min_blocks} — the "
            f"block bootstrap could never promote; {fix}")
    window = monitor_what or f"monitoring window ({settings.monitor_window_days:g} days)"
    predicted = volume.expected(settings.monitor_window_days) if monitor_rows is None else monitor_rows
    labelled = (volume.expected(settings.monitor_window_days - volume.unlabelled_days())
                if monitor_labelled is None else monitor_labelled)
    for name, what, judged, rows in (("monitor_min_predictions", "predictions", "drift", predicted),
                                     ("monitor_min_labels", "labelled rows", "decay", labelled)):
        if name == "monitor_min_labels" and not labels_judged:
            continue
        enough = int(max(MIN_MONITOR_ROWS, rows * 0.5)) if rows >= MIN_MONITOR_ROWS else MIN_MONITOR_ROWS
        longer = "" if monitor_rows is not None or rows >= MIN_MONITOR_ROWS else (
            f" and a monitor_window_days of {sized.get('monitor_window_days', settings.monitor_window_days):g}")
        need = getattr(settings, name)
        if rows < need:
            problems.append(f"{window}: ~{rows:,.0f} {what} < {name} {need:,} — {judged} would never be judged; "
                            f"set {name} to {enough} or lower ({how(name)}){longer}")
    return problems
