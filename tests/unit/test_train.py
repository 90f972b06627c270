"""Training: determinism, the time split, input rules, and all-or-nothing registration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.support.models import FEATURES, Provider, registry_home, year_frame

from retrain.models import registry, train
from retrain.models import store as modelstore
from retrain.models.train import TrainingError, fit

JAN, MAR, MAY = "2013-01-01", "2013-03-01", "2013-05-01"


def _window(start: str, end: str) -> pd.DataFrame:
    f = year_frame()
    return f[(f.sched_dep >= pd.Timestamp(start, tz="UTC")) & (f.sched_dep < pd.Timestamp(end, tz="UTC"))]


def test_same_window_and_seed_give_identical_predictions_and_fingerprint() -> None:
    frame = _window(MAR, MAY)
    a = fit(frame, FEATURES, label="late", time_col="sched_dep", num_boost_round=40, seed=3)
    # row order differs
    b = fit(frame.sample(frac=1.0, random_state=1), FEATURES, label="late", time_col="sched_dep", num_boost_round=40,
            seed=3)
    probe = year_frame().iloc[-2000:][FEATURES]
    assert np.array_equal(a.booster.predict(probe), b.booster.predict(probe))
    assert a.metadata["data_fingerprint"] == b.metadata["data_fingerprint"]
    assert a.booster.model_to_string() == b.booster.model_to_string()


def test_refit_full_keeps_the_early_stopped_rounds_and_sees_every_row() -> None:
    """Refit on the whole window: the rounds early stopping picked, the validation rows included in the fit;
    the validation metrics and scores (the monitoring reference) stay the out-of-sample ones."""
    frame = _window(MAR, MAY)
    kwargs = {"label": "late", "time_col": "sched_dep", "num_boost_round": 200, "early_stopping_rounds": 10,
              "seed": 3}
    held = fit(frame, FEATURES, **kwargs)
    refit = fit(frame, FEATURES, refit_full=True, **kwargs)
    best = held.metadata["best_iteration"]
    assert 0 < best < 200 and refit.metadata["best_iteration"] == best
    assert refit.booster.current_iteration() == best
    assert refit.metadata["refit_full"] == {"rounds": best, "rows": len(frame)}
    assert refit.metadata["validation"] == held.metadata["validation"]
    assert np.array_equal(refit.valid_scores, held.valid_scores)
    probe = refit.valid_frame[FEATURES]  # rows the refit model learned from: its scores differ
    assert not np.allclose(refit.booster.predict(probe), held.booster.predict(probe, num_iteration=best))


def test_fingerprint_changes_with_the_data() -> None:
    frame = _window(MAR, MAY).copy()
    before = train.data_fingerprint(frame, FEATURES, "late")
    frame["x1"] = frame["x1"].to_numpy() + np.where(np.arange(len(frame)) == 10, 1e-9, 0.0)
    assert train.data_fingerprint(frame, FEATURES, "late") != before


def test_time_split_holds_out_the_latest_rows() -> None:
    frame = _window(MAR, MAY)
    result = fit(frame, FEATURES, label="late", time_col="sched_dep", num_boost_round=20, validation_fraction=0.2)
    meta = result.metadata
    assert meta["n_train"] + meta["n_valid"] == len(frame)
    assert abs(meta["n_valid"] - 0.2 * len(frame)) <= 1
    assert result.valid_frame["sched_dep"].min() > frame.sort_values("sched_dep").iloc[meta["n_train"] - 1].sched_dep
    assert 0.7 < meta["validation"]["auc"] < 1.0
    assert set(meta["library_versions"]) >= {"lightgbm", "pandas", "numpy", "python"}
    assert meta["params"]["deterministic"] is True and meta["params"]["num_threads"] == 2


def test_categorical_features_and_regression_work_on_any_frame() -> None:
    frame = _window(MAR, MAY).copy()
    frame["carrier"] = frame["carrier"].astype("category")
    result = fit(frame, [*FEATURES, "carrier"], label="late", time_col="sched_dep", num_boost_round=20)
    assert "carrier" in result.booster.feature_name()
    frame["delay"] = frame["x1"] * 3 + np.random.default_rng(0).normal(size=len(frame))
    reg = fit(frame, FEATURES, label="delay", time_col="sched_dep", objective="regression", num_boost_round=30)
    assert reg.metadata["validation"]["rmse"] < frame["delay"].std()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns=["x2"]), "missing column"),
        (lambda f: f.assign(x2=f["carrier"]), "x2.*numeric, bool or category"),
        (lambda f: f.assign(late=np.arange(len(f)) % 3), "must be binary"),
        (lambda f: f.assign(late=f["late"].where(f.index % 7 != 0)), "missing values"),
        (lambda f: f.iloc[0:0], "no rows"),
    ],
)
def test_bad_input_is_refused_with_the_field_named(mutate, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TrainingError, match=message):
        fit(mutate(_window(MAR, MAY).reset_index(drop=True)), FEATURES, label="late", time_col="sched_dep",
            num_boost_round=5)


def test_train_version_registers_a_candidate_with_its_model(tmp_path: Path) -> None:
    settings, sessions = registry_home(tmp_path)
    trained = train.train_version(settings, sessions, Provider(), MAR, MAY, label="late", time_col="sched_dep")
    mv = registry.get_version(sessions, trained.version)
    assert (mv.version, mv.status, mv.feature_service) == ("v1", "candidate", "flight_delay_v1")
    assert mv.bento_model_tag == trained.bento_model_tag and mv.bento_model_tag.startswith("flight_delay:")
    assert mv.train_from.isoformat().startswith(MAR) and mv.train_to.isoformat().startswith(MAY)
    path = modelstore.model_file(settings, mv.bento_model_tag)
    assert path.is_relative_to(settings.bentoml_home)
    assert modelstore.file_sha256(path) == mv.model_checksum and path.stat().st_size == mv.model_size_bytes
    assert mv.n_train + mv.n_valid == len(_window(MAR, MAY))
    assert mv.reference_profile["n_rows"] == mv.n_valid
    booster = modelstore.load_booster(settings, mv.bento_model_tag, mv.model_checksum)
    direct = train.fit_with_settings(_window(MAR, MAY), FEATURES, settings, label="late", time_col="sched_dep")
    probe = year_frame().iloc[-500:][FEATURES]
    assert np.array_equal(booster.predict(probe), direct.booster.predict(probe))
    assert mv.data_fingerprint == direct.metadata["data_fingerprint"]


def test_failed_training_registers_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, sessions = registry_home(tmp_path)
    provider = Provider()
    with pytest.raises(TrainingError, match="after"):
        train.train_version(settings, sessions, provider, MAY, MAR, label="late", time_col="sched_dep")
    with pytest.raises(TrainingError, match="no labelled"):
        train.train_version(settings, sessions, provider, "2015-01-01", "2015-02-01", label="late",
                            time_col="sched_dep")

    import lightgbm

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("worker died mid-fit")

    monkeypatch.setattr(lightgbm, "train", boom)
    with pytest.raises(RuntimeError, match="mid-fit"):
        train.train_version(settings, sessions, provider, MAR, MAY, label="late", time_col="sched_dep")
    assert registry.list_versions(sessions, settings.model_name) == []
    assert modelstore.list_tags(settings) == []


def test_registry_failure_removes_the_saved_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, sessions = registry_home(tmp_path)
    saved: list[str] = []
    real_save = modelstore.save_booster

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = real_save(*args, **kwargs)
        saved.append(result.tag)
        return result

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(modelstore, "save_booster", spy)
    monkeypatch.setattr(registry, "register_version", refuse)
    with pytest.raises(RuntimeError, match="went away"):
        train.train_version(settings, sessions, Provider(), MAR, MAY, label="late", time_col="sched_dep")
    assert len(saved) == 1  # it was saved, then removed again
    assert modelstore.list_tags(settings) == []
    monkeypatch.undo()
    assert registry.list_versions(sessions, settings.model_name) == []
