"""A use case with its own Feast repository end to end without servers: replay-land its rows as
their labels mature, record batches and outcomes, rebuild its tables, train and register a model
with its objective under its name (bike sharing, regression)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, select

from retrain.config import base_settings, get_settings
from retrain.db import IngestionBatch, ModelVersion, Outcome
from retrain.registry import open_registry
from retrain.usecase import featurestore as FS
from retrain.usecase.catalog import load_usecase, settings_for
from retrain.usecase.landing import landed_rows, replay_until
from retrain.usecase.training import train

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture()
def bike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple:
    monkeypatch.setenv("RETRAIN_HOME", str(tmp_path / "var"))
    monkeypatch.delenv("RETRAIN_USECASE", raising=False)
    get_settings.cache_clear()
    spec = load_usecase(base_settings(), "bike_sharing")
    settings = settings_for(spec, base_settings()).model_copy(update={"num_boost_round": 30, "num_threads": 1})
    yield spec, settings, open_registry(settings), FS.raw_rows(spec)
    get_settings.cache_clear()


def test_rows_land_when_their_label_matures_and_never_twice(bike: tuple) -> None:
    spec, settings, sessions, raw = bike
    first = replay_until(spec, settings, sessions, "2011-02-01", raw=raw)
    # an hour's count is known at its end: the hour starting 23:00 UTC on Jan 31 lands at 00:00 Feb 1
    expected = int((raw["ts"] + pd.Timedelta(hours=1) <= pd.Timestamp("2011-02-01", tz="UTC")).sum())
    assert first.landed == first.received == expected and first.quarantined == 0
    again = replay_until(spec, settings, sessions, "2011-02-01", raw=raw)
    assert again.landed == 0 and again.total_landed == expected
    second = replay_until(spec, settings, sessions, "2011-03-01", raw=raw)
    landed = landed_rows(settings, spec)
    assert len(landed) == second.total_landed == expected + second.landed
    assert landed["ts"].is_unique and landed["ts"].max() < pd.Timestamp("2011-03-01", tz="UTC")
    assert second.tables["weather"] == len(landed)  # tables hold only what landed
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(IngestionBatch)) == 2
        n, total = s.execute(select(func.count(), func.sum(Outcome.label)).where(
            Outcome.model_name == "bike_sharing")).one()
    assert n == len(landed) and total == float(landed["cnt"].sum())


def test_train_registers_a_regression_model_under_the_usecase(bike: tuple) -> None:
    spec, settings, sessions, raw = bike
    replay_until(spec, settings, sessions, "2011-04-01", raw=raw)
    FS.apply(spec, settings)
    trained = train(spec, settings, sessions, "2011-01-15", "2011-03-15")
    assert trained.metadata["objective"] == "regression"
    assert set(trained.metadata["validation"]) == {"rmse", "mae"} and trained.metadata["validation"]["rmse"] > 0
    with sessions() as s:
        row = s.scalar(select(ModelVersion).where(ModelVersion.version == trained.version))
    assert row is not None and row.model_name == "bike_sharing" and row.feature_service == "bike_sharing_v1"
    assert row.reference_profile["error"]["rmse"] == pytest.approx(trained.metadata["validation"]["rmse"])
    assert row.metrics["feature_names"] == spec.features.names
