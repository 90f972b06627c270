"""A use case with its own Feast repository end to end without servers: replay-land its rows as
their labels mature, record batches and outcomes, rebuild its tables, train and register a model
with its objective under its name (bike sharing, regression)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, select

from retrain.core.config import base_settings, get_settings
from retrain.core.db import IngestionBatch, ModelVersion, Outcome
from retrain.models.registry import open_registry
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


def test_evaluator_judges_a_regression_challenger_on_fresh_data(bike: tuple) -> None:
    """First model on Jan-Feb 2011 promoted; a challenger trained on a later window is judged on March
    with the regression gates (RMSE bootstrap, season slices), recorded in the system of record."""
    from retrain.core.db import Evaluation
    from retrain.evaluation.evaluate import evaluate_version
    from retrain.models import registry
    from retrain.usecase.training import frame_provider

    spec, settings, sessions, raw = bike
    settings = settings.model_copy(update={"retrain_build_bento": False})
    replay_until(spec, settings, sessions, "2011-04-15", raw=raw)
    FS.apply(spec, settings)
    first = train(spec, settings, sessions, "2011-01-01", "2011-02-15")
    registry.promote(sessions, first.version, "first champion", "test")
    second = train(spec, settings, sessions, "2011-01-15", "2011-03-01")
    provider = frame_provider(spec, settings, FS.open_store(settings))
    outcome = evaluate_version(settings, sessions, second.version, provider, window_from="2011-03-01",
                               window_to="2011-04-01", act=True, build_bento=False, label=spec.label.column,
                               slice_columns=tuple(spec.slices))
    names = [g.name for g in outcome.decision.gates]
    assert names[:3] == ["floor", "improvement", "slices"] and "rmse" in outcome.decision.metrics["challenger"]
    with sessions() as s:
        ev = s.get(Evaluation, outcome.evaluation_id)
        champion = registry.alias_in(s, "bike_sharing", registry.CHAMPION)
    assert ev is not None and ev.decision == outcome.decision.decision and ev.n_rows == outcome.n_rows
    assert outcome.report_html is not None and "rmse" in outcome.report_html.read_text()  # the regression report
    expected = second.version if outcome.decision.promote else first.version
    assert champion is not None and champion.version == expected
