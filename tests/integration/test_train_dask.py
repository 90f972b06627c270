"""Training on a dask.distributed cluster (`train_dask_address`): a LocalCluster of 2 worker processes.

The Dask fit must match the in-process fit of the same frame (AUC within 0.01, RMSE within 3 %, on later
held-out rows), and what it saves must be a plain LightGBM text model that loads without Dask.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from tests.support.models import FEATURES, Provider, registry_home, year_frame

from retrain.core import metrics
from retrain.models import registry, train
from retrain.models import store as modelstore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAR, MAY, JUN = "2013-03-01", "2013-05-01", "2013-06-01"


def _window(start: str, end: str) -> pd.DataFrame:
    f = year_frame()
    return f[(f.sched_dep >= pd.Timestamp(start, tz="UTC")) & (f.sched_dep < pd.Timestamp(end, tz="UTC"))]


@pytest.fixture(scope="module")
def dask_address() -> Iterator[str]:
    """Scheduler URL of a 2-worker LocalCluster (worker processes: LightGBM's network is per process)."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="1GiB",
                           dashboard_address=None)
    try:
        yield str(cluster.scheduler_address)
    finally:
        cluster.close()


def test_dask_fit_matches_the_single_process_fit(dask_address: str) -> None:
    frame, held_out = _window(MAR, MAY), _window(MAY, JUN)
    kwargs = dict(label="late", time_col="sched_dep", num_boost_round=200, early_stopping_rounds=20, seed=5)
    single = train.fit(frame, FEATURES, **kwargs)  # type: ignore[arg-type]
    dask = train.fit(frame, FEATURES, dask_address=dask_address, **kwargs)  # type: ignore[arg-type]

    y = held_out["late"].to_numpy()
    auc_single = metrics.roc_auc(y, single.booster.predict(held_out[FEATURES]))
    auc_dask = metrics.roc_auc(y, dask.booster.predict(held_out[FEATURES]))
    assert auc_single > 0.8
    assert abs(auc_dask - auc_single) <= 0.01, (auc_single, auc_dask)
    assert abs(dask.metadata["validation"]["auc"] - single.metadata["validation"]["auc"]) <= 0.01

    assert isinstance(dask.booster, lgb.Booster)
    best = dask.metadata["best_iteration"]
    assert 1 <= best < 200 and dask.booster.current_iteration() == best  # cut at the kept round
    assert dask.metadata["distributed"]["n_workers"] == 2 and dask.metadata["distributed"]["rounds_grown"] == 200
    assert dask.metadata["data_fingerprint"] == single.metadata["data_fingerprint"]
    assert dask.metadata["n_train"] == single.metadata["n_train"]
    assert np.allclose(dask.valid_scores, dask.booster.predict(dask.valid_frame[FEATURES]))


def test_dask_regression_matches_the_single_process_fit(dask_address: str) -> None:
    rng = np.random.default_rng(0)
    whole = year_frame()
    whole = whole.assign(delay=3 * whole["x1"] + np.sin(2 * whole["x2"]) + rng.normal(size=len(whole)))
    t = whole["sched_dep"]
    frame = whole[(t >= pd.Timestamp(MAR, tz="UTC")) & (t < pd.Timestamp(MAY, tz="UTC"))]
    held_out = whole[(t >= pd.Timestamp(MAY, tz="UTC")) & (t < pd.Timestamp(JUN, tz="UTC"))]
    kwargs = dict(label="delay", time_col="sched_dep", objective="regression", num_boost_round=150,
                  early_stopping_rounds=20)
    single = train.fit(frame, FEATURES, **kwargs)  # type: ignore[arg-type]
    dask = train.fit(frame, FEATURES, dask_address=dask_address, **kwargs)  # type: ignore[arg-type]

    def rmse(result: train.TrainResult) -> float:
        err = result.booster.predict(held_out[FEATURES]) - held_out["delay"].to_numpy()
        return float(np.sqrt(np.mean(err**2)))

    assert rmse(single) < held_out["delay"].std() / 2
    assert abs(rmse(dask) - rmse(single)) <= 0.03 * rmse(single), (rmse(single), rmse(dask))


def test_early_stopping_after_the_fit_keeps_the_round_lightgbm_would() -> None:
    frame = _window(MAR, MAY)
    kwargs = dict(label="late", time_col="sched_dep", num_boost_round=150, seed=5)
    stopped = train.fit(frame, FEATURES, early_stopping_rounds=15, **kwargs)  # type: ignore[arg-type]
    grown = train.fit(frame, FEATURES, early_stopping_rounds=0, **kwargs)  # type: ignore[arg-type]
    y = grown.valid_frame["late"].to_numpy(dtype="float64")
    losses = train._loss_by_iteration(grown.booster, grown.valid_frame[FEATURES], y, "binary")
    assert len(losses) == 150
    assert train.early_stopping_iteration(losses, 15) == stopped.metadata["best_iteration"] < 150
    assert train.early_stopping_iteration(losses, 0) == 150


_LOAD_WITHOUT_DASK = """
import json, sys
import lightgbm, numpy
booster = lightgbm.Booster(model_str=open(sys.argv[1]).read())
probe = numpy.load(sys.argv[2])
numpy.save(sys.argv[3], booster.predict(probe))
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & {"dask", "distributed"})))
"""


def test_the_saved_dask_model_is_a_plain_booster_that_loads_without_dask(
        tmp_path: Path, dask_address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, sessions = registry_home(tmp_path / "home", train_dask_address=dask_address)
    fitted: list[lgb.Booster] = []
    fit_on_dask = train._fit_on_dask

    def keep(*args: Any, **kwargs: Any) -> tuple[lgb.Booster, int, dict[str, Any]]:
        out = fit_on_dask(*args, **kwargs)
        fitted.append(out[0])
        return out

    monkeypatch.setattr(train, "_fit_on_dask", keep)
    trained = train.train_version(settings, sessions, Provider(), MAR, MAY, label="late", time_col="sched_dep")
    assert len(fitted) == 1
    mv = registry.get_version(sessions, trained.version)
    assert mv.status == "candidate" and mv.params["distributed"]["n_workers"] == 2
    path = modelstore.model_file(settings, mv.bento_model_tag)
    assert modelstore.file_sha256(path) == mv.model_checksum
    assert path.read_text().startswith("tree\n")  # LightGBM's text format

    probe = year_frame().iloc[-2000:][FEATURES]
    np.save(tmp_path / "probe.npy", probe.to_numpy())
    out = subprocess.run([sys.executable, "-c", _LOAD_WITHOUT_DASK, str(path), str(tmp_path / "probe.npy"),
                          str(tmp_path / "pred.npy")], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []  # neither dask nor distributed imported
    loaded = np.load(tmp_path / "pred.npy")

    assert np.array_equal(loaded, fitted[0].predict(probe.to_numpy()))  # the Dask model's local booster
    served = modelstore.load_booster(settings, mv.bento_model_tag, mv.model_checksum)
    assert served.current_iteration() == trained.metadata["best_iteration"]
    assert np.array_equal(loaded, served.predict(probe.to_numpy()))
