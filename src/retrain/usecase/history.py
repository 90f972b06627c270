"""A use case's labelled history, as the backtest replays it: from its file, its data module, or
the flights' feature store pipeline, with its calendar features and label availability."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pandas as pd

from retrain.backtest_data import (
    LABEL_TIME,
    ROW_ID,
    BacktestInputError,
    History,
    Progress,
    history_from_frame,
    load_flights,
    read_table,
)
from retrain.config import Settings
from retrain.usecase.calendar import add_calendar
from retrain.usecase.catalog import load_callable
from retrain.usecase.spec import UseCaseSpec


def _utc(value: datetime) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def raw_frame(spec: UseCaseSpec) -> pd.DataFrame:
    """The use case's history as stored (file or data module), before any shaping."""
    path = spec.source_file()
    if path is not None:
        return read_table(path)
    assert spec.data.loader is not None
    frame = load_callable(spec, spec.data.loader)()
    if not isinstance(frame, pd.DataFrame):
        raise BacktestInputError(f"{spec.name}: data.loader {spec.data.loader!r} returned {type(frame).__name__}, "
                                 "not a DataFrame")
    return frame


def load_history(spec: UseCaseSpec, settings: Settings, *, feature_home: Path | None = None,
                 start: datetime | None = None, end: datetime | None = None,
                 progress: Progress | None = None) -> History:
    """The labelled history of `spec`, checked by the same rules as `retrain backtest --data`."""
    if spec.data.builtin == "flights":
        return load_flights(settings, feature_home=feature_home, start=start, end=end, progress=progress)
    frame = raw_frame(spec)
    time_col = spec.data.time_col
    if time_col in frame.columns and spec.features.calendar:
        frame = add_calendar(frame, time_col, spec.features.calendar, spec.features.timezone)
    if start is not None or end is not None:
        times = pd.to_datetime(frame[time_col], utc=True)
        lo = _utc(start) if start is not None else times.min()
        hi = _utc(end) if end is not None else times.max() + pd.Timedelta(seconds=1)
        frame = frame[((times >= lo) & (times < hi)).to_numpy()]
    history = history_from_frame(frame, time_col=time_col, label_col=spec.label.column,
                                 features=spec.features.names, regression=spec.objective == "regression",
                                 label_lag_hours=spec.label.delay_hours, source=f"use case {spec.name}")
    available = spec.label.available_col
    if available and available in frame.columns:
        when = pd.to_datetime(frame.reset_index(drop=True)[available], utc=True)
        mapped = pd.to_datetime(history.frame[ROW_ID].astype(int).map(when), utc=True)
        history.frame[LABEL_TIME] = mapped.where(mapped.notna(), history.frame[LABEL_TIME])
    slices = tuple(c for c in spec.slices if c in history.frame.columns)
    return replace(history, slice_columns=slices, feature_service=spec.features.service)
