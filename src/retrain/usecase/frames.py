"""Labelled histories from tables: a time-ordered `History` from a user's CSV/parquet file, or from a
use case through its feature service (`retrain.usecase.history`); what `retrain init` infers from and
the backtest replays.

Every rule about the input is checked here, before any model is trained: a missing column, a time
column that does not parse or goes backwards, a label that is not binary without `--regression`.
Rows without a label cannot be scored; they are left out and counted (`History.n_excluded`), never
dropped silently.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retrain.core.config import Settings
from retrain.models.train import Objective

ROW_ID = "__row_id"
LABEL_TIME = "__label_time"
# Column names the in-memory monitoring pass (`monitor_frame`) gives a meaning of its own.
RESERVED = frozenset({"entity_key", "score", "model_version", "predicted_at", "available_at", ROW_ID, LABEL_TIME})
TRUE_WORDS = frozenset({"1", "1.0", "true", "t", "yes", "y"})
FALSE_WORDS = frozenset({"0", "0.0", "false", "f", "no", "n"})

Progress = Callable[[str], Any]


class BacktestInputError(ValueError):
    """The history breaks a rule; raised before any training starts."""


@dataclass(frozen=True)
class History:
    """A labelled history in time order, ready to replay.

    `frame` holds the features, the label (0/1 floats for binary, floats for regression), the time
    column (UTC), `ROW_ID` and `LABEL_TIME` (when the label became known: the use case's availability
    column, or the row's time plus the label lag).
    """

    frame: pd.DataFrame
    feature_names: list[str]
    label: str
    time_col: str
    objective: Objective
    categorical: list[str]
    source: str
    slice_columns: tuple[str, ...] = ()
    feature_service: str | None = None
    n_excluded: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def start(self) -> pd.Timestamp:
        return pd.Timestamp(self.frame[self.time_col].iloc[0])

    @property
    def end(self) -> pd.Timestamp:
        return pd.Timestamp(self.frame[self.time_col].iloc[-1])

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "rows": len(self.frame), "excluded_unlabelled": self.n_excluded,
                "features": list(self.feature_names), "categorical": list(self.categorical),
                "label": self.label, "time_col": self.time_col, "objective": self.objective,
                "from": self.start.isoformat(), "to": self.end.isoformat(),
                "feature_service": self.feature_service, "slices": list(self.slice_columns),
                "notes": list(self.notes)}


# ---------------------------------------------------------------------------------- any file


def read_table(path: Path) -> pd.DataFrame:
    """A CSV or parquet file as a DataFrame (the suffix decides)."""
    if not path.exists():
        raise BacktestInputError(f"--data: file {path} does not exist")
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        if name.endswith((".csv", ".csv.gz", ".txt")):
            return pd.read_csv(path, low_memory=False)
    except (ValueError, OSError) as exc:
        raise BacktestInputError(f"--data: cannot read {path}: {exc}") from exc
    raise BacktestInputError(f"--data: {path.name}: unknown format; give a .csv or .parquet file")


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones, so messages read `0.5`, not `np.float64(0.5)`."""
    return value.item() if isinstance(value, np.generic) else value


def _examples(values: pd.Series, limit: int = 3) -> str:
    """`row 4 ('x'), row 9 ('y')` with 1-based data-row numbers (the header is not a row)."""
    return ", ".join(f"row {int(str(i)) + 1} ({_plain(v)!r})" for i, v in values.iloc[:limit].items())


def parse_time(raw: pd.Series, col: str) -> pd.Series:
    """UTC timestamps of the time column; refuses numbers, empty and unparseable values."""
    if pd.api.types.is_datetime64_any_dtype(raw.dtype):
        parsed = pd.to_datetime(raw, utc=True)
    elif pd.api.types.is_numeric_dtype(raw.dtype) or pd.api.types.is_bool_dtype(raw.dtype):
        raise BacktestInputError(f"time column {col!r}: holds numbers ({raw.dtype}), not dates; give dates or "
                                 "timestamps (e.g. 2013-01-31 or 2013-01-31T08:00:00Z)")
    else:
        try:
            parsed = pd.to_datetime(raw, utc=True, errors="coerce", format="mixed")
        except (ValueError, TypeError):  # e.g. mixed offsets pandas refuses outright
            parsed = pd.Series([pd.to_datetime(v, utc=True, errors="coerce") for v in raw], index=raw.index)
    empty = raw.isna()
    if empty.any():
        raise BacktestInputError(f"time column {col!r}: {int(empty.sum())} empty value(s), e.g. "
                                 f"{_examples(raw[empty].astype(object))}; every row needs a time")
    bad = parsed.isna()
    if bad.any():
        raise BacktestInputError(f"time column {col!r}: {int(bad.sum())} value(s) are not dates, e.g. "
                                 f"{_examples(raw[bad])}")
    return parsed.dt.floor("us")


def require_time_order(times: pd.Series, col: str) -> None:
    """Times must never go backwards (equal times are fine): a history is replayed in file order."""
    values = times.to_numpy()
    back = np.flatnonzero(values[1:] < values[:-1])
    if back.size:
        i = int(back[0]) + 1
        raise BacktestInputError(
            f"time column {col!r}: not in time order: row {i + 1} ({times.iloc[i].isoformat()}) comes after row "
            f"{i} ({times.iloc[i - 1].isoformat()}), {back.size} such step(s) back in all; sort the file by "
            f"{col!r} first")


def binary_label(raw: pd.Series, col: str) -> pd.Series:
    """0/1 floats (NaN when missing) from bools, 0/1 numbers or true/false/yes/no words."""
    present = raw.dropna()
    if pd.api.types.is_bool_dtype(raw.dtype):
        return raw.astype("float64")
    if pd.api.types.is_numeric_dtype(raw.dtype):
        values = raw.astype("float64")
        bad = present[~present.astype("float64").isin((0.0, 1.0))]
    else:
        words = raw.astype(str).str.strip().str.lower()
        values = pd.Series(np.where(words.isin(TRUE_WORDS), 1.0, np.where(words.isin(FALSE_WORDS), 0.0, np.nan)),
                           index=raw.index)
        values[raw.isna()] = np.nan
        bad = present[values[present.index].isna()]
    if len(bad):
        distinct = pd.unique(present)
        shown = ", ".join(repr(_plain(v)) for v in distinct[:5])
        raise BacktestInputError(
            f"label column {col!r}: is not binary: {len(distinct)} distinct values ({shown}"
            f"{', ...' if len(distinct) > 5 else ''}), e.g. {_examples(bad)}; a binary label is 0/1 or "
            "true/false; for a continuous label pass --regression")
    return values


def regression_label(raw: pd.Series, col: str) -> pd.Series:
    values = pd.to_numeric(raw, errors="coerce")
    bad = raw.notna() & values.isna()
    if bad.any():
        raise BacktestInputError(f"label column {col!r}: --regression needs numbers; {int(bad.sum())} value(s) "
                                 f"are not, e.g. {_examples(raw[bad])}")
    return values.astype("float64")


def _feature_columns(df: pd.DataFrame, time_col: str, label_col: str,
                     features: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(features, notes): the named ones, else every other non-datetime column."""
    notes: list[str] = []
    names: list[str] = []
    if features:
        names = list(dict.fromkeys(features))
        for name in names:
            if name in (time_col, label_col):
                raise BacktestInputError(f"--features: {name!r} is the time or label column; it cannot be a feature")
            if pd.api.types.is_datetime64_any_dtype(df[name].dtype):
                raise BacktestInputError(f"feature {name!r}: is a datetime column; derive numeric features from it "
                                         "(hour, weekday, ...) or leave it out")
    else:
        skipped: list[str] = []
        for name in df.columns:
            if name in (time_col, label_col):
                continue
            (skipped if pd.api.types.is_datetime64_any_dtype(df[name].dtype) else names).append(str(name))
        if skipped:
            notes.append(f"datetime column(s) not used as features: {', '.join(skipped)}")
        if not names:
            raise BacktestInputError(f"the file has no feature columns besides {time_col!r} and {label_col!r}")
    clash = sorted(set(names) & RESERVED)
    if clash:
        raise BacktestInputError(f"feature(s) {', '.join(map(repr, clash))}: the name is reserved by the monitoring "
                                 "pass; rename the column(s)")
    return names, notes


def history_from_frame(df: pd.DataFrame, *, time_col: str, label_col: str, features: Sequence[str] | None = None,
                       regression: bool = False, label_lag_hours: float = 0.0, source: str = "frame") -> History:
    """Validate a user's table and shape it into a `History` (numeric features as floats, the rest
    categorical text; labels known `label_lag_hours` after each row's time)."""
    wanted = [time_col, label_col, *(features or [])]
    missing = [c for c in dict.fromkeys(wanted) if c not in df.columns]
    if missing:
        shown = ", ".join(map(str, list(df.columns)[:20]))
        raise BacktestInputError(f"column(s) {', '.join(map(repr, missing))} not in the data; it has: {shown}"
                                 f"{', ...' if len(df.columns) > 20 else ''}")
    if df.empty:
        raise BacktestInputError("the data has no rows")
    df = df.reset_index(drop=True)
    times = parse_time(df[time_col], time_col)
    require_time_order(times, time_col)
    y = regression_label(df[label_col], label_col) if regression else binary_label(df[label_col], label_col)
    names, notes = _feature_columns(df, time_col, label_col, features)
    out = pd.DataFrame({ROW_ID: np.arange(len(df)).astype(str), time_col: times})
    categorical: list[str] = []
    for name in names:
        col = df[name]
        if pd.api.types.is_bool_dtype(col.dtype) or pd.api.types.is_numeric_dtype(col.dtype):
            out[name] = col.astype("float64")
        else:
            present = col.notna().to_numpy()
            out[name] = [str(v) if ok else None for v, ok in zip(col.tolist(), present, strict=True)]
            categorical.append(name)
    out[label_col] = y.to_numpy()
    out[LABEL_TIME] = times + pd.Timedelta(hours=label_lag_hours)
    unlabelled = int(out[label_col].isna().sum())
    if unlabelled:
        notes.append(f"{unlabelled} row(s) without a label left out (they cannot be scored)")
        out = out[out[label_col].notna()].reset_index(drop=True)
    if out.empty:
        raise BacktestInputError(f"label column {label_col!r}: every value is missing")
    return History(frame=out, feature_names=names, label=label_col, time_col=time_col,
                   objective="regression" if regression else "binary", categorical=categorical, source=source,
                   n_excluded=unlabelled, notes=notes)


def load_table(path: Path, *, time_col: str, label_col: str, features: Sequence[str] | None = None,
               regression: bool = False, label_lag_hours: float = 0.0) -> History:
    """A user's CSV/parquet history (see `history_from_frame`)."""
    return history_from_frame(read_table(path), time_col=time_col, label_col=label_col, features=features,
                              regression=regression, label_lag_hours=label_lag_hours, source=str(path))


@contextmanager
def scoped_env() -> Iterator[None]:
    """Restore os.environ afterwards (`open_store` exports the feature home's RETRAIN_HOME)."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _home_settings(settings: Settings, home: Path) -> Settings:
    """The feature home's settings: local embedded stores under `home`, everything else as given."""
    return settings.model_copy(update={"home": home.expanduser().resolve(), "profile": "local",
                                       "feast_registry_url": None, "database_url": None})


