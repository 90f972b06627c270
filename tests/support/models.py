"""Synthetic, time-ordered labelled data and a small registry home for model tests (no Feast).

The concept changes on 2013-03-01: before it, `late` depends on `x1` only; from then on `x2`
matters as much. A model trained on Jan-Feb therefore misses half the signal that a model trained
on Mar-Apr has, which makes "clearly better challenger" a real, measurable fact on May.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.orm import Session, sessionmaker
from tests.support.flights import flight_settings

from retrain.core.config import Settings
from retrain.core.times import to_utc
from retrain.models.registry import open_registry

FEATURES = ["x1", "x2", "x3"]
CHANGE = pd.Timestamp("2013-03-01", tz="UTC")
CARRIERS = np.array(["AA", "B6", "DL", "UA"])
ORIGINS = np.array(["EWR", "JFK", "LGA"])


@lru_cache(maxsize=2)
def year_frame(seed: int = 7, minutes: int = 12) -> pd.DataFrame:
    """One synthetic 2013 (a row every `minutes`), deterministic for a seed."""
    times = pd.date_range("2013-01-01", "2014-01-01", freq=f"{minutes}min", tz="UTC", inclusive="left")
    rng = np.random.default_rng(seed)
    n = len(times)
    x = rng.normal(size=(n, 3))
    after = (times >= CHANGE).astype(float)
    logit = -1.0 + 1.4 * x[:, 0] + 1.4 * after * x[:, 1] + 0.1 * x[:, 2]
    late = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
    return pd.DataFrame({
        "flight_id": [f"f{i:07d}" for i in range(n)],
        "sched_dep": times,
        "carrier": CARRIERS[rng.integers(0, len(CARRIERS), n)],
        "origin": ORIGINS[rng.integers(0, len(ORIGINS), n)],
        "dest": "XXX",
        "x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2],
        "late": late,
    })


@dataclass(frozen=True)
class SyntheticSet:
    """Quacks like `features.TrainingSet`."""

    frame: pd.DataFrame
    feature_names: list[str]
    n_flights: int
    n_excluded: int
    feature_service: str = "flight_delay_v1"


class Provider:
    """`(start, end) -> TrainingSet` over the synthetic year; counts calls; can be told to fail."""

    def __init__(self, frame: pd.DataFrame | None = None, feature_service: str = "flight_delay_v1") -> None:
        self.frame = year_frame() if frame is None else frame
        self.feature_service = feature_service
        self.calls: list[tuple[datetime, datetime]] = []
        self.fail: BaseException | None = None

    def __call__(self, start: datetime, end: datetime) -> SyntheticSet:
        self.calls.append((start, end))
        if self.fail is not None:
            raise self.fail
        t = self.frame["sched_dep"]
        part = self.frame[(t >= to_utc(start)) & (t < to_utc(end))].reset_index(drop=True)
        if part.empty:
            raise ValueError(f"no labelled flights depart in [{start}, {end})")
        return SyntheticSet(part, list(FEATURES), len(part), 0, self.feature_service)


def small_settings(home: Path, **overrides: Any) -> Settings:
    """Fast settings: few boosting rounds, small evaluation minimums, 2 threads."""
    values: dict[str, Any] = dict(home=home, num_boost_round=60, early_stopping_rounds=10, num_leaves=15,
                                  eval_min_rows=500, gate_slice_min_rows=300, num_threads=2)
    values.update(overrides)
    return flight_settings(**values)


def registry_home(home: Path, **overrides: Any) -> tuple[Settings, sessionmaker[Session]]:
    settings = small_settings(home, **overrides)
    return settings, open_registry(settings)


@dataclass
class RegistryHome:
    """Settings and their migrated registry, for registry-only tests (no model files)."""

    settings: Settings
    sessions: sessionmaker[Session]


def migrated_home(settings: Settings) -> RegistryHome:
    return RegistryHome(settings, open_registry(settings))


def add_fake_version(sessions: sessionmaker[Session], model_name: str, name: str, **fields: Any) -> str:
    """Register version `name` of `model_name` with `fake_version_fields` (its own bento tag), `fields` over them."""
    from retrain.models import registry

    values = {**fake_version_fields(1, model_name), "bento_model_tag": f"{model_name}:{name}", **fields}
    return registry.register_version(sessions, version=name, **values).version


def fake_version_fields(i: int, model_name: str = "flight_delay") -> dict[str, Any]:
    """Registry fields for a version that has no model file (registry-only tests)."""
    start = to_utc(f"2013-{i:02d}-01").to_pydatetime()
    return dict(model_name=model_name, bento_model_tag=f"{model_name}:fake{i}", feature_service="flight_delay_v1",
                train_from=start, train_to=to_utc(f"2013-{i + 1:02d}-01").to_pydatetime(), n_train=100, n_valid=10,
                n_excluded=0, data_fingerprint="0" * 64, model_checksum="0" * 64, model_size_bytes=1000,
                params={}, metrics={}, library_versions={}, reference_profile={}, train_seconds=0.1)
