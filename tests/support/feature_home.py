"""Build a RETRAIN_HOME with landed flights/outcomes and feature tables, without the ingest flow.

Tests of the feature layer must not depend on ingestion's validation, so the replay clock's release
is registered as one landed batch as it is (`landed.register_parts`: a batch row in the home's
database, `offline/flights/part-*.parquet` and `offline/outcomes/part-*.parquet`); readers take the
database's landed batches.

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
from flight_delay.landed import register_parts
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


def land(settings: Settings, flights: pd.DataFrame) -> pd.DataFrame:
    """Register flights and their outcomes as one landed batch; returns the outcome rows written."""
    outcomes = outcomes_of(flights, settings.delay_threshold_minutes)
    register_parts(settings, flights=flights, outcomes=outcomes, source="feature home")
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
