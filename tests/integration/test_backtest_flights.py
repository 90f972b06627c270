"""The flights backtest end to end through Feast: a landed RETRAIN_HOME (Jan-Feb 2013), one
`training_set` through `flight_delay_v1`, weekly policies; the caller's environment is left as it was."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from tests.support.feature_home import build_feature_home
from tests.support.flights import flight_settings

from flight_delay import features as F
from flight_delay.history import load_history
from retrain.backtest import replay as backtest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_flights_backtest_reads_the_feature_service_and_replays_weekly(tmp_path: Path) -> None:
    home = build_feature_home(flight_settings(home=tmp_path / "features"))
    env_before = dict(os.environ)
    settings = flight_settings(home=tmp_path / "app", num_threads=1, num_boost_round=60, early_stopping_rounds=10,
                        retrain_train_days=21, retrain_eval_days=7, eval_min_rows=500, gate_slice_min_rows=300)
    history = load_history(settings, feature_home=home.settings.home,
                                    end=pd.Timestamp("2013-03-01", tz="UTC"))
    assert dict(os.environ) == env_before
    assert history.feature_service == "flight_delay_v1" and history.feature_names == F.MODEL_FEATURES
    assert history.slice_columns == ("carrier", "origin")
    labelled = home.outcomes[pd.to_datetime(home.outcomes["sched_dep"], utc=True) < pd.Timestamp("2013-03-01",
                                                                                                  tz="UTC")]
    assert len(history.frame) == len(labelled) and history.n_excluded == len(home.flights) - len(labelled)
    # labels are known when the flight landed, never before it departed
    assert (history.frame["__label_time"] > history.frame["sched_dep"]).all()

    result = backtest.run_backtest(history, settings, ("static", "periodic-gated"), period="week",
                                   initial_periods=4)
    static, gated = result.run("static"), result.run("periodic-gated")
    assert len(static.periods) == len(gated.periods) >= 4
    assert all(0.55 < (p.metric or 0) < 0.95 for p in static.periods)
    decided = [p.retrain for p in gated.periods if p.retrain and p.retrain.gates]
    assert decided and all({g["name"] for g in r.gates} >= {"auc_floor", "improvement", "slices"} for r in decided)
