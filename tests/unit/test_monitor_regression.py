"""Regression monitoring: error decay on matured values against the champion's validation RMSE."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

from retrain.core.config import Settings
from retrain.core.stats import build_reference_profile, error_metrics
from retrain.monitoring.rules import monitor_frame

T0, T1 = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 8, tzinfo=UTC)


def _window(noise: float, n: int = 600, seed: int = 0, labelled: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = 10 * x + 50
    pred = y + rng.normal(0, noise, n)
    ids = [str(i) for i in range(n)]
    preds = pd.DataFrame({"entity_key": ids, "score": pred, "x": x})
    known = pd.Timestamp(T1) - pd.Timedelta(hours=1) if labelled else pd.Timestamp(T1) + pd.Timedelta(days=1)
    outcomes = pd.DataFrame({"entity_key": ids, "available_at": [known] * n, "label": y})
    return preds, outcomes


def _profile(noise: float = 2.0) -> dict:
    preds, outcomes = _window(noise, seed=1)
    return build_reference_profile(preds, ["x"], preds["score"].to_numpy(), labels=outcomes["label"].to_numpy(),
                                   regression=True)


def test_error_metrics_reconcile() -> None:
    e = error_metrics([1.0, 2.0, np.nan, 4.0], [2.0, 2.0, 5.0, 1.0])
    assert e.n == 3 and e.mae == (1 + 0 + 3) / 3 and abs(e.rmse - np.sqrt(10 / 3)) < 1e-12


def test_regression_decay_fires_on_worse_error_only() -> None:
    profile = _profile()
    assert 1.8 < profile["error"]["rmse"] < 2.2 and "performance" not in profile
    settings = Settings(monitor_min_labels=100)
    kwargs = dict(settings=settings, model_name="m", model_version="v1", window_from=T0, window_to=T1, as_of=T1,
                  regression=True)
    same = monitor_frame(profile, *_window(2.0, seed=2), **kwargs)
    assert [a.kind for a in same.alerts if a.kind == "performance_decay"] == []
    worse = monitor_frame(profile, *_window(4.0, seed=3), **kwargs)
    decay = [a for a in worse.alerts if a.kind == "performance_decay"]
    assert len(decay) == 1 and decay[0].metric == "rmse"
    assert decay[0].threshold == profile["error"]["rmse"] * 1.25 and decay[0].value > decay[0].threshold
    assert worse.summary()["rmse"] == decay[0].value and worse.summary()["auc"] is None
    # labels that have not matured by as_of never count
    unknown = monitor_frame(profile, *_window(4.0, seed=3, labelled=False), **kwargs)
    assert unknown.n_labelled == 0 and not [a for a in unknown.alerts if a.kind == "performance_decay"]
