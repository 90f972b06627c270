"""Build a RETRAIN_HOME with landed flights/outcomes and feature tables, without the ingest flow.

Tests of the feature layer must not depend on `retrain.ingest` (validation + landing), so the
replay clock's release is written straight into the offline store as parquet parts, the way the
ingestion lands them: `offline/flights/part-*.parquet` and `offline/outcomes/part-*.parquet`.

Feast reads `${RETRAIN_HOME}` (and friends) from the process environment, and
`Settings.export_env()` writes them into `os.environ`. `feast_env()` scopes that, so one test's
home does not leak into the next test's `get_settings()`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import pandas as pd

from flight_delay import features as F
from flight_delay.data import ReplayClock, enrich_flights, load_flights, outcomes_of
from retrain.core.config import Settings
from retrain.core.times import to_utc

JAN_FEB_END = pd.Timestamp("2013-03-01", tz="UTC")


@lru_cache(maxsize=1)
def _clock() -> ReplayClock:
    return ReplayClock(load_flights())


def released(until: pd.Timestamp | str, since: pd.Timestamp | str | None = None) -> pd.DataFrame:
    """Flights departing in [since, until) as seen at `until` (outcomes blank if not landed yet).

    Returns the enriched layout (`flight_id`, `sched_dep`, `landed_at` recomputed from the masked
    outcome columns, so `landed_at` is NaT for flights not landed by `until`).
    """
    part = _clock().flights_between(None if since is None else to_utc(since), to_utc(until))
    return enrich_flights(part)


def land(settings: Settings, flights: pd.DataFrame, part: int = 1) -> pd.DataFrame:
    """Write flights and their outcomes as one landed part; returns the outcome rows written."""
    outcomes = outcomes_of(flights, settings.delay_threshold_minutes)
    name = f"part-{part:06d}.parquet"
    F.write_parquet_atomic(flights.reset_index(drop=True), settings.offline_dir / "flights" / name)
    F.write_parquet_atomic(outcomes, settings.offline_dir / "outcomes" / name)
    return outcomes


@contextmanager
def feast_env(settings: Settings) -> Iterator[None]:
    """Export the settings' Feast/BentoML variables for the block, then restore os.environ."""
    saved = dict(os.environ)
    settings.export_env()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass(frozen=True)
class FeatureHome:
    """A landed RETRAIN_HOME: what was landed and the feature-table row counts."""

    settings: Settings
    flights: pd.DataFrame  # released flights (enriched layout)
    outcomes: pd.DataFrame  # outcome rows landed
    table_rows: dict[str, int]
    until: pd.Timestamp


def build_feature_home(settings: Settings, until: pd.Timestamp = JAN_FEB_END, apply: bool = True) -> FeatureHome:
    """Land every flight departing before `until` (as seen at `until`), refresh the tables, apply."""
    settings.ensure_dirs()
    flights = released(until)
    outcomes = land(settings, flights)
    rows = F.refresh_feature_tables(settings)
    if apply:
        with feast_env(settings):
            F.apply_repo(settings)
    return FeatureHome(settings=settings, flights=flights, outcomes=outcomes, table_rows=rows, until=until)
