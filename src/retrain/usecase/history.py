"""A use case's labelled history, as the backtest replays it: through its own Feast repository when
it has one (features as serving reads them), or its own pipeline code's history; else from its file or
data module with its calendar features; with label availability."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pandas as pd

from retrain.core.config import Settings
from retrain.usecase.calendar import add_calendar
from retrain.usecase.catalog import load_callable
from retrain.usecase.frames import (
    LABEL_TIME,
    ROW_ID,
    BacktestInputError,
    History,
    Progress,
    _home_settings,
    history_from_frame,
    read_table,
    scoped_env,
)
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


def _select(frame: pd.DataFrame, time_col: str, start: datetime | None, end: datetime | None) -> pd.DataFrame:
    """Rows with start <= time < end (either bound optional)."""
    if start is None and end is None:
        return frame
    times = pd.to_datetime(frame[time_col], utc=True)
    lo = _utc(start) if start is not None else times.min()
    hi = _utc(end) if end is not None else times.max() + pd.Timedelta(seconds=1)
    return frame[((times >= lo) & (times < hi)).to_numpy()]


def feature_store_frame(spec: UseCaseSpec, settings: Settings, *, feature_home: Path | None = None,
                        start: datetime | None = None, end: datetime | None = None,
                        progress: Progress | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training frame through the use case's feature service, the raw rows it holds).

    Every raw row is landed into a temporary home (or `feature_home`, kept): the feature tables are
    built from all of them, the use case's repository is applied there, and one point-in-time training
    frame is fetched for the rows in [start, end), so the backtest's features are what serving reads.
    """
    from retrain.usecase import featurestore as FS

    assert spec.feast is not None and spec.folder is not None
    temp = None if feature_home is not None else Path(tempfile.mkdtemp(prefix=f"retrain-{spec.name}-"))
    home = feature_home if feature_home is not None else temp
    assert home is not None
    say = progress or (lambda _m: None)
    try:
        # Feast prints `feast apply`'s progress on stdout: keep stdout for the result (`--json`)
        with scoped_env(), contextlib.redirect_stdout(sys.stderr):
            hs = _home_settings(settings, home).model_copy(update={
                "feature_repo": (spec.folder / spec.feast.repo).resolve(),
                "feature_service": spec.features.service})
            hs.ensure_dirs()
            raw = FS.raw_rows(spec)
            say(f"{spec.name}: feature tables from {len(raw):,} raw rows, feast apply")
            FS.write_tables(spec, hs, raw)
            FS.apply(spec, hs)
            rows = _select(raw, spec.data.time_col, start, end)
            if rows.empty:
                raise BacktestInputError(f"{spec.name}: no rows in the chosen time range")
            say(f"{spec.name}: training frame for {len(rows):,} rows through {spec.features.service}")
            frame = FS.training_frame(spec, FS.open_store(hs), rows)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    return frame, rows


def load_history(spec: UseCaseSpec, settings: Settings, *, feature_home: Path | None = None,
                 start: datetime | None = None, end: datetime | None = None,
                 progress: Progress | None = None) -> History:
    """The labelled history of `spec`, checked by the same rules as `retrain backtest --data`.

    A use case with its own Feast repository (a `feast:` section) is replayed through its feature
    service (`feature_store_frame`); one without takes its file or data module as it is, plus the
    calendar features of its time column.
    """
    if spec.pipeline is not None:
        history: History = load_callable(spec, spec.pipeline.history)(
            settings, feature_home=feature_home, start=start, end=end, progress=progress)
        return history
    time_col = spec.data.time_col
    if spec.feast is not None:
        frame, source = feature_store_frame(spec, settings, feature_home=feature_home, start=start, end=end,
                                            progress=progress)
        where = f"use case {spec.name} via {spec.features.service}"
    else:
        frame = raw_frame(spec)
        if time_col in frame.columns and spec.features.calendar:
            frame = add_calendar(frame, time_col, spec.features.calendar, spec.features.timezone)
        frame = source = _select(frame, time_col, start, end)
        where = f"use case {spec.name}"
    history = history_from_frame(frame, time_col=time_col, label_col=spec.label.column,
                                 features=spec.features.names, regression=spec.objective == "regression",
                                 label_lag_hours=spec.label.delay_hours, source=where)
    available = spec.label.available_col
    if available and available in source.columns:
        when = pd.to_datetime(source.reset_index(drop=True)[available], utc=True)
        mapped = pd.to_datetime(history.frame[ROW_ID].astype(int).map(when), utc=True)
        history.frame[LABEL_TIME] = mapped.where(mapped.notna(), history.frame[LABEL_TIME])
    slices = tuple(c for c in spec.slices if c in history.frame.columns)
    return replace(history, slice_columns=slices, feature_service=spec.features.service)
