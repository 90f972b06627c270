"""Generic domain functions of a use case scaffolded by `retrain init`: the `feast:` section of its
spec names them (`retrain.usecase.generic:raw`, `...:tables`, `...:entity_rows`), so the generic
steps of `retrain.usecase.featurestore` work for it as they do for a hand-written use case.

- `raw(spec)`: the user's file as raw rows, time column parsed to UTC, sorted by time (stable); the
  index is each row's position in the file (the default row id).
- `tables(spec, raw)`: one feature table, `label_stats`: per entity key (the spec's entity column, or
  one global key), count and mean of the labels known strictly before each snapshot over two trailing
  windows, stamped at the snapshots (hourly or daily, from the data's event times per day).
- `entity_rows(spec, raw)`: what a prediction request carries, as Feast entity rows: row id, join key,
  `event_timestamp` (the prediction time), the request fields (every feature column of the contract,
  `req_`-prefixed, and the time column as epoch seconds for the calendar features).

`layout(spec, contract)` is the single place deciding names, cadence and types; the Feast repository
generator (`retrain.usecase.feast_repo`) writes its `features.py` from the same layout, so the tables,
the entity rows and the Feast objects always agree. No I/O at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from retrain.usecase.calendar import feature_name
from retrain.usecase.contract import DataContract
from retrain.usecase.labels import known_at, label_values
from retrain.usecase.spec import UseCaseSpec

STATS_TABLE = "label_stats"
CONTRACT_FILE = "contract.yaml"
REQUEST_PREFIX = "req_"
GLOBAL_KEY_COLUMN = "global_key"
GLOBAL_KEY = "all"  # the one key value when the use case has no entity column
MISSING_KEY = ""  # a missing entity value (a None join key breaks Feast's online lookups)
HOURLY_MIN_ROWS_PER_DAY = 4.0  # more event times a day than this: hourly snapshots, 1-day and 7-day windows
ROW_ID = "row_id"
EVENT_TIMESTAMP = "event_timestamp"
_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")

Cadence = Literal["hourly", "daily"]
ValueKind = Literal["float", "string"]


@dataclass(frozen=True)
class RequestInput:
    """One request field of the Feast request source and the feature the on-demand view makes of it."""

    name: str  # request field (`req_<column>`)
    column: str  # raw column it comes from
    kind: ValueKind  # Float64 (numbers, integers, booleans as 0/1) or String (categories)
    output: str  # feature the on-demand view passes it through as (the column's name)


@dataclass(frozen=True)
class Layout:
    """Names, cadence and types of a generic use case's Feast objects (one decision, used everywhere)."""

    name: str
    join_key: str
    entity_col: str | None
    cadence: Cadence
    windows: dict[str, int]  # window suffix -> length in snapshot steps
    inputs: tuple[RequestInput, ...]
    epoch_field: str  # request field: the time column as Unix seconds
    calendar: dict[str, str]  # calendar feature -> part (hour, weekday, month)
    timezone: str

    @property
    def step(self) -> pd.Timedelta:
        """Time between snapshots (the label-stats view's TTL)."""
        return pd.Timedelta(hours=1) if self.cadence == "hourly" else pd.Timedelta(days=1)

    @property
    def stats_features(self) -> list[str]:
        """The label-stats view's features, in table order."""
        return stats_features(self.windows)

    @property
    def request_outputs(self) -> list[str]:
        """The on-demand view's features: passed-through request fields, then the calendar parts."""
        return [i.output for i in self.inputs] + list(self.calendar)

    @property
    def request_fields(self) -> list[str]:
        """Every field of the Feast request source."""
        return [i.name for i in self.inputs] + [self.epoch_field]


def cadence_for(contract: DataContract) -> Cadence:
    """Hourly snapshots when the data has more than ~4 distinct event times a day, else daily: a panel of
    many entities at one weekly time is daily data, however many rows a day it holds."""
    per_day = contract.times_per_day if contract.times_per_day is not None else contract.rows_per_day
    return "hourly" if per_day > HOURLY_MIN_ROWS_PER_DAY else "daily"


def windows_for(cadence: Cadence) -> dict[str, int]:
    """Trailing windows in snapshot steps: 1 and 7 days for hourly data, 7 and 28 days for daily data."""
    return {"1d": 24, "7d": 168} if cadence == "hourly" else {"7d": 7, "28d": 28}


def stats_features(windows: dict[str, int]) -> list[str]:
    """`label_count_<w>` and `label_mean_<w>` per window."""
    return [f"label_{stat}_{suffix}" for suffix in windows for stat in ("count", "mean")]


def layout(spec: UseCaseSpec, contract: DataContract) -> Layout:
    """The Feast layout of `spec` with its contract; ValueError when two generated names collide."""
    entity = spec.data.entity_col
    inputs = []
    for col in contract.features:
        kind: ValueKind = "string" if col.kind == "category" else "float"
        inputs.append(RequestInput(f"{REQUEST_PREFIX}{col.name}", col.name, kind, col.name))
    if entity is not None and entity in spec.features.names:  # a small entity is also a category feature
        inputs.insert(0, RequestInput(f"{REQUEST_PREFIX}{entity}", entity, "string", entity))
    cadence = cadence_for(contract)
    time_col = spec.data.time_col
    out = Layout(name=spec.name, join_key=f"{entity}_key" if entity else GLOBAL_KEY_COLUMN, entity_col=entity,
                 cadence=cadence, windows=windows_for(cadence), inputs=tuple(inputs),
                 epoch_field=f"{REQUEST_PREFIX}{time_col}_epoch",
                 calendar={feature_name(time_col, p): p for p in spec.features.calendar},
                 timezone=spec.features.timezone)
    names = [out.join_key, EVENT_TIMESTAMP, ROW_ID, *out.request_fields, *out.request_outputs, *out.stats_features]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"generated Feast names collide: {', '.join(map(repr, dupes))} (a column of the data has "
                         "the name of a generated field: rename it)")
    return out


def read_contract(spec: UseCaseSpec) -> DataContract:
    """The use case's `contract.yaml` (parsed once per version of the file: serving calls this per request)."""
    if spec.folder is None:
        raise ValueError(f"{spec.name}: the generic functions need the use case's folder (its {CONTRACT_FILE})")
    path = Path(spec.folder) / CONTRACT_FILE
    stat = path.stat()
    return _parse_contract(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=32)
def _parse_contract(path: str, _mtime_ns: int, _size: int) -> DataContract:
    import yaml

    return DataContract.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8")))


def spec_layout(spec: UseCaseSpec) -> Layout:
    """The layout of a use case from its folder's contract."""
    return layout(spec, read_contract(spec))


# ---------------------------------------------------------------------------------- the three functions


def raw(spec: UseCaseSpec) -> pd.DataFrame:
    """The user's file as raw rows: the time column parsed to UTC (microseconds), rows sorted by time
    (stable: equal times keep the file's order); the index is each row's position in the file."""
    from retrain.usecase.contract import read_user_file
    from retrain.usecase.frames import parse_time

    path = spec.source_file()
    if path is None:
        raise ValueError(f"{spec.name}: generic raw rows need data.path (a CSV or parquet file)")
    frame = read_user_file(path)
    time_col = spec.data.time_col
    frame[time_col] = parse_time(frame[time_col], time_col)
    return frame.sort_values(time_col, kind="mergesort")


def _times(spec: UseCaseSpec, rows: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(rows[spec.data.time_col], utc=True)


def entity_keys(spec: UseCaseSpec, rows: pd.DataFrame) -> pd.Series:
    """The join key of each row: its entity value as text (missing: ""), or the one global key."""
    entity = spec.data.entity_col
    if entity is None:
        return pd.Series(GLOBAL_KEY, index=rows.index, dtype=object)
    return pd.Series([_category(v) or MISSING_KEY for v in rows[entity].tolist()], index=rows.index, dtype=object)


def _steps(times: pd.Series, step: pd.Timedelta) -> np.ndarray:
    """Whole snapshot steps since the Unix epoch (floor)."""
    return ((times - _EPOCH) // step).to_numpy(dtype="int64")


def label_stats(spec: UseCaseSpec, rows: pd.DataFrame, lay: Layout) -> pd.DataFrame:
    """Per key and snapshot, count and mean of the labels known strictly before the snapshot and
    within each trailing window ([T - window, T)); snapshots every step from the first prediction time
    to one step after the last label became known, so every prediction time has a snapshot at most
    one step old. A key with no label in a window has count 0 and mean NaN."""
    from retrain.features.store import trailing_window_sums

    columns = [lay.join_key, EVENT_TIMESTAMP, *lay.stats_features]
    if rows.empty:
        dtypes: dict[str, Any] = {lay.join_key: object, EVENT_TIMESTAMP: "datetime64[us, UTC]"}
        return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, "float64")) for c in columns})
    step = lay.step
    keys = entity_keys(spec, rows)
    codes, uniques = pd.factorize(keys.to_numpy())
    y = label_values(spec, rows).to_numpy()
    labelled = ~np.isnan(y)
    known = known_at(spec, rows)
    predicted = _times(spec, rows) - pd.Timedelta(hours=spec.prediction_offset_hours)
    first = int(_steps(predicted, step).min())
    last = int(_steps(known, step).max()) + 1
    snaps = np.arange(first, last + 1, dtype="int64")
    sums = trailing_window_sums(codes[labelled], len(uniques), _steps(known, step)[labelled] + 1,
                                {"n": None, "sum": y[labelled]}, snaps, lay.windows)
    stamps = _EPOCH + pd.to_timedelta(snaps * int(step.total_seconds()), unit="s")
    out = pd.DataFrame({
        lay.join_key: np.repeat(np.asarray(uniques, dtype=object), len(snaps)),
        EVENT_TIMESTAMP: pd.DatetimeIndex(np.tile(stamps.to_numpy(), len(uniques))),
    })
    for suffix in lay.windows:
        n = sums[suffix]["n"].ravel()
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, sums[suffix]["sum"].ravel() / np.maximum(n, 1), np.nan)
        out[f"label_count_{suffix}"] = n
        out[f"label_mean_{suffix}"] = mean
    out[EVENT_TIMESTAMP] = pd.to_datetime(out[EVENT_TIMESTAMP], utc=True).dt.floor("us").astype("datetime64[us, UTC]")
    return out[columns]


def tables(spec: UseCaseSpec, raw: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The feature views' tables from (landed) raw rows, in any order: `{"label_stats": frame}`."""
    return {STATS_TABLE: label_stats(spec, raw, spec_layout(spec))}


def _category(value: Any) -> str | None:
    """A category value as text (None when missing); whole floats lose their `.0` (as batches are checked)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float | np.floating):
        if np.isnan(value):
            return None
        if float(value).is_integer():
            return str(int(value))
    if isinstance(value, str) and not value.strip():
        return None
    return str(value)


def _number(values: pd.Series) -> np.ndarray:
    """Numbers, integers and booleans (true/false, yes/no as 1/0) as float64, NaN when missing."""
    from retrain.usecase.frames import FALSE_WORDS, TRUE_WORDS

    def one(v: Any) -> float:
        if v is None or v is pd.NA or v is pd.NaT:
            return float("nan")
        if isinstance(v, bool | np.bool_):
            return float(v)
        if isinstance(v, str):
            word = v.strip().lower()
            if word in TRUE_WORDS:
                return 1.0
            if word in FALSE_WORDS:
                return 0.0
        try:
            return float(v)
        except (TypeError, ValueError):
            return float("nan")

    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    return np.array([one(v) for v in values.tolist()], dtype="float64")


def entity_rows(spec: UseCaseSpec, raw: pd.DataFrame) -> pd.DataFrame:
    """Feast entity rows of the feature service: `row_id` (the spec's id column, else the row's
    number: its index, the position in the file for `raw(spec)`'s rows), the join key,
    `event_timestamp` = time - prediction_offset_hours, and the request fields."""
    lay = spec_layout(spec)
    times = _times(spec, raw)
    ids = raw[spec.data.id_col] if spec.data.id_col else pd.Series(raw.index, index=raw.index)
    out = pd.DataFrame({
        ROW_ID: ids.astype(str).to_numpy(),
        lay.join_key: entity_keys(spec, raw).to_numpy(),
        EVENT_TIMESTAMP: (times - pd.Timedelta(hours=spec.prediction_offset_hours)).dt.floor("us")
        .astype("datetime64[us, UTC]").to_numpy(),
    })
    for item in lay.inputs:
        values = raw[item.column]
        if item.kind == "string":
            out[item.name] = np.array([_category(v) for v in values.tolist()], dtype=object)
        else:
            out[item.name] = _number(values)
    out[lay.epoch_field] = ((times - _EPOCH) // pd.Timedelta(seconds=1)).to_numpy(dtype="int64")
    return out
