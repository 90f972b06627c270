"""Monitoring math against hand-computed values, the alert rules, and run_monitoring on SQLite."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import insert, select
from tests.support.pg import scratch_database

from retrain.core import db
from retrain.core.config import Settings
from retrain.core.estimate import estimate_performance, fit_calibrator
from retrain.core.stats import (
    OTHER,
    build_reference_profile,
    categorical_drift,
    categorical_profile,
    ks_from_sketch,
    numeric_drift,
    numeric_profile,
    psi,
    score_metrics,
)
from retrain.monitoring.monitor import (
    ESTIMATE_METRICS,
    decode_feature_json,
    estimate_history,
    monitoring_history,
    plot_history,
    run_monitoring,
)
from retrain.monitoring.rules import MonitoringResult, dedupe_key, evaluate_rules, monitor_frame, performance_metrics

T0 = datetime(2013, 3, 1, tzinfo=UTC)
FEATURES = ["signal", "noise", "count"]  # fixture names: no dependency on the flights contract


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    # drift alone fires here: these tests are about the drift rules themselves (the default, drift only
    # with moved performance, is tested in test_monitor_estimate.py)
    base: dict[str, object] = {"home": tmp_path, "monitor_min_predictions": 200, "monitor_min_labels": 200,
                               "monitor_ignore_features": [], "monitor_drift_requires_performance": False}
    return Settings(**{**base, **overrides})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- hand-computed math


def test_psi_matches_hand_computed_values() -> None:
    # (0.25-0.5)ln(0.25/0.5) + (0.75-0.5)ln(0.75/0.5)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    # an empty reference bin is floored at eps = 1e-4 instead of dividing by zero
    expected = (0.4 - 0.5) * math.log(0.4 / 0.5) + (0.1 - 1e-4) * math.log(0.1 / 1e-4)
    assert psi([0.5, 0.5, 0.0], [0.5, 0.4, 0.1]) == pytest.approx(expected)
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0


def test_numeric_profile_bins_and_psi_by_hand() -> None:
    ref = numeric_profile(np.arange(100.0), bins=4, quantiles=11)
    # inverted-CDF quartiles of 0..99 are 24, 49, 74; bins are [-inf,24), [24,49), [49,74), [74,inf)
    assert ref["edges"] == [24.0, 49.0, 74.0]
    assert ref["proportions"] == pytest.approx([0.24, 0.25, 0.25, 0.26])
    assert ref["null_rate"] == 0.0
    cur = np.concatenate([np.arange(50.0), np.arange(50.0)])  # 0..49 twice
    drift = numeric_drift("x", ref, cur)
    actual = [0.48, 0.50, 0.02, 0.0]
    expected = sum((max(a, 1e-4) - e) * math.log(max(a, 1e-4) / e)
                   for a, e in zip(actual, [0.24, 0.25, 0.25, 0.26], strict=True))
    assert drift.psi == pytest.approx(expected)
    assert drift.n == 100 and drift.null_rate == 0.0


def test_nulls_count_as_their_own_bin() -> None:
    ref = numeric_profile(np.arange(100.0), bins=4)
    cur = np.concatenate([np.arange(0.0, 100.0, 2.0), np.full(50, np.nan)])
    drift = numeric_drift("x", ref, cur)
    assert drift.null_rate == 0.5
    # the null bin alone contributes (0.5 - 1e-4) * ln(0.5 / 1e-4)
    assert drift.psi is not None and drift.psi > (0.5 - 1e-4) * math.log(0.5 / 1e-4)


def test_ks_by_hand_continuous_and_discrete() -> None:
    sketch = numeric_profile(np.arange(1.0, 101.0), quantiles=201)["quantiles"]
    # 1..100 vs 51..150: at x=100 the reference CDF is 1.0 and the current one 0.5
    assert ks_from_sketch(sketch, np.arange(51.0, 151.0)) == pytest.approx(0.5)
    assert ks_from_sketch(sketch, np.arange(1.0, 101.0)) == pytest.approx(0.0, abs=1e-12)
    binary = numeric_profile(np.array([0.0] * 50 + [1.0] * 50))["quantiles"]
    # P(x <= 0) is 0.5 in the reference and 0.2 in the window: KS = 0.3 exactly
    assert ks_from_sketch(binary, np.array([0.0] * 20 + [1.0] * 80)) == pytest.approx(0.3)


def test_ks_sketch_agrees_with_scipy_two_sample() -> None:
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(3)
    ref, cur = rng.normal(0, 1, 20_000), rng.normal(0.3, 1.2, 5_000)
    sketch = numeric_profile(ref, quantiles=201)["quantiles"]
    assert ks_from_sketch(sketch, cur) == pytest.approx(ks_2samp(ref, cur).statistic, abs=0.01)


def test_categorical_drift_by_hand() -> None:
    ref = categorical_profile(["a"] * 60 + ["b"] * 40, top_k=1)
    assert ref["frequencies"] == {"a": 0.6, OTHER: 0.4}
    window = ["a"] * 30 + ["b"] * 50 + ["c"] * 20  # b and c both fall in __other__
    drift = categorical_drift("cat", ref, window)
    assert drift.psi == pytest.approx((0.3 - 0.6) * math.log(0.5) + (0.7 - 0.4) * math.log(0.7 / 0.4))
    assert drift.tv == pytest.approx(0.3)
    assert drift.unseen_rate == pytest.approx(0.7)
    # counts computed elsewhere (SQL GROUP BY) give the same answer
    same = categorical_drift("cat", ref, {"a": 30, "b": 50, "c": 20})
    assert same.psi == pytest.approx(drift.psi) and same.tv == pytest.approx(drift.tv)


def test_calibration_and_scores_by_hand() -> None:
    perf = score_metrics([0, 1, 1, 1], [0.1, 0.1, 0.9, 0.9])
    assert perf.n == 4 and perf.n_positive == 3
    # bin [0.1,0.2): mean 0.1, rate 0.5; bin [0.9,1.0]: mean 0.9, rate 1.0; each holds half the rows
    assert perf.ece == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    assert perf.brier == pytest.approx((0.01 + 0.81 + 0.01 + 0.01) / 4)
    assert perf.log_loss == pytest.approx(-(math.log(0.9) + math.log(0.1) + 2 * math.log(0.9)) / 4)
    assert perf.auc == pytest.approx(2.5 / 3)  # pairs: tie (0.5), win, win
    assert perf.mean_predicted == pytest.approx(0.5) and perf.observed_rate == pytest.approx(0.75)
    assert [(c["n"], c["mean_predicted"], c["observed_rate"]) for c in perf.calibration] == [
        (2, pytest.approx(0.1), 0.5), (2, pytest.approx(0.9), 1.0)]


def test_auc_agrees_with_sklearn_on_ties() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    p = np.round(rng.random(3000), 2)  # many ties
    y = (rng.random(3000) < p).astype(int)
    assert score_metrics(y, p).auc == pytest.approx(roc_auc_score(y, p))


def test_reference_profile_is_strict_json(tmp_path: Path) -> None:
    frame = pd.DataFrame({"signal": [1.0, np.inf, np.nan, 4.0], "cat": ["x", None, "y", "x"]})
    profile = build_reference_profile(frame, ["signal", "cat"], [0.1, 0.2, 0.3, 0.4], labels=[0, 1, 0, 1])
    text = json.dumps(profile, allow_nan=False)  # raises on NaN/inf
    assert json.loads(text)["features"]["signal"]["null_rate"] == 0.5  # inf counts as missing
    assert profile["features"]["cat"]["type"] == "categorical"
    assert profile["features"]["cat"]["frequencies"] == {"x": pytest.approx(2 / 3), "y": pytest.approx(1 / 3),
                                                         OTHER: 0.0}
    assert profile["performance"]["auc"] == 0.75  # positives 0.2, 0.4 beat 3 of the 4 negatives pairs
    with pytest.raises(ValueError, match="feature_names: columns \\['nope'\\]"):
        build_reference_profile(frame, ["nope"], [0.1] * 4)
    with pytest.raises(ValueError, match="scores: 3 scores for 4"):
        build_reference_profile(frame, ["signal"], [0.1] * 3)


# ------------------------------------------------------------------------------------- the rules


def synth(rng: np.random.Generator, n: int, *, shift_noise: float = 0.0, shift_signal: float = 0.0,
          flip: bool = False) -> pd.DataFrame:
    """Scores depend on `signal` only; labels are drawn from the scores (calibrated) unless flipped."""
    signal = rng.normal(shift_signal, 1.0, n)
    frame = pd.DataFrame({
        "entity_key": [f"f{i}" for i in range(n)],
        "signal": signal,
        "noise": rng.normal(shift_noise, 1.0, n),
        "count": rng.integers(0, 5, n).astype(float),
        "carrier": rng.choice(["AA", "B6", "UA"], n),
    })
    frame["score"] = 1 / (1 + np.exp(-(signal - 1.0)))
    prob = 1 - frame["score"] if flip else frame["score"]
    frame["late"] = rng.random(n) < prob
    return frame


def profile_of(frame: pd.DataFrame) -> dict[str, object]:
    return build_reference_profile(frame, [*FEATURES, "carrier"], frame["score"], labels=frame["late"])


def assess(settings: Settings, profile: dict[str, object], window: pd.DataFrame) -> MonitoringResult:
    outcomes = pd.DataFrame({"entity_key": window["entity_key"], "available_at": T0, "label": window["late"]})
    return monitor_frame(profile, window, outcomes, settings=settings, model_name="m", model_version="v1",
                         window_from=T0 - timedelta(days=7), window_to=T0, as_of=T0 + timedelta(days=1))


def test_window_without_drift_raises_nothing(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    profile = profile_of(synth(np.random.default_rng(1), 20_000))
    result = assess(settings, profile, synth(np.random.default_rng(2), 4_000))
    assert result.n_labelled == 4_000
    assert max(d.psi or 0 for d in result.features.values()) < 0.05
    assert result.alerts == []


@pytest.mark.parametrize(
    ("change", "kinds", "metric"),
    [
        ({"shift_noise": 1.5}, {"data_drift"}, "psi:noise"),  # an input the model ignores
        # covariate shift in the model's input: scores move, labels still follow them (no decay)
        ({"shift_signal": 1.5}, {"data_drift", "prediction_drift"}, "psi:signal"),
        ({"flip": True}, {"performance_decay"}, "auc"),  # concept change: same inputs, new labels
    ],
)
def test_shifted_window_raises_the_right_alert(tmp_path: Path, change: dict[str, object], kinds: set[str],
                                               metric: str) -> None:
    settings = settings_for(tmp_path)
    profile = profile_of(synth(np.random.default_rng(1), 20_000))
    result = assess(settings, profile, synth(np.random.default_rng(2), 4_000, **change))  # type: ignore[arg-type]
    assert {a.kind for a in result.alerts} == kinds
    first = result.alerts[0]
    assert first.metric == metric
    assert first.value < first.threshold if metric == "auc" else first.value >= first.threshold
    assert len({a.dedupe_key for a in result.alerts}) == 1  # one window -> one ledger key


def test_minimum_sample_sizes_hold_rules_back(tmp_path: Path) -> None:
    profile = profile_of(synth(np.random.default_rng(1), 20_000))
    window = synth(np.random.default_rng(2), 150, shift_signal=2.0)
    assert assess(settings_for(tmp_path), profile, window).alerts == []  # 150 < 200 minimum
    loose = settings_for(tmp_path, monitor_min_predictions=100, monitor_min_labels=100)
    assert {a.kind for a in assess(loose, profile, window).alerts} >= {"data_drift", "prediction_drift"}


def test_ignored_features_never_fire(tmp_path: Path) -> None:
    profile = profile_of(synth(np.random.default_rng(1), 20_000))
    window = synth(np.random.default_rng(2), 4_000, shift_noise=2.0)
    assert assess(settings_for(tmp_path, monitor_ignore_features=["noise"]), profile, window).alerts == []


def test_a_feature_missing_from_the_window_is_drift(tmp_path: Path) -> None:
    profile = profile_of(synth(np.random.default_rng(1), 20_000))
    window = synth(np.random.default_rng(2), 4_000).drop(columns=["count"])
    result = assess(settings_for(tmp_path), profile, window)
    assert result.features["count"].null_rate == 1.0
    assert [(a.kind, a.metric) for a in result.alerts] == [("data_drift", "psi:count")]


def test_profile_options_come_from_settings(tmp_path: Path) -> None:
    frame = synth(np.random.default_rng(1), 2_000)
    settings = settings_for(tmp_path, monitor_profile_bins=4, monitor_profile_quantiles=21, monitor_profile_top_k=2)
    profile = build_reference_profile(frame, ["signal", "carrier"], frame["score"], settings=settings)
    assert len(profile["features"]["signal"]["edges"]) == 3
    assert len(profile["features"]["signal"]["quantiles"]) == 21
    assert len(profile["features"]["carrier"]["frequencies"]) == 3  # 2 kept + __other__


def test_dedupe_key_policies(tmp_path: Path) -> None:
    a, b = T0, T0 + timedelta(days=1)
    per_period = settings_for(tmp_path, monitor_dedupe_policy="champion_period", monitor_dedupe_period_hours=168)
    assert dedupe_key(per_period, "m", "v1", a, b) == dedupe_key(per_period, "m", "v1", b, b + timedelta(days=1))
    assert dedupe_key(per_period, "m", "v1", a, b) != dedupe_key(per_period, "m", "v2", a, b)
    assert dedupe_key(per_period, "m", "v1", a, b) != dedupe_key(per_period, "m", "v1", a, b + timedelta(days=8))
    per_window = settings_for(tmp_path, monitor_dedupe_policy="window")
    assert dedupe_key(per_window, "m", "v1", a, b) != dedupe_key(per_window, "m", "v1", b, b + timedelta(days=1))
    per_champion = settings_for(tmp_path, monitor_dedupe_policy="champion")
    assert dedupe_key(per_champion, "m", "v1", a, b) == "m:v1"


def test_evaluate_rules_is_pure_and_reads_settings(tmp_path: Path) -> None:
    profile = profile_of(synth(np.random.default_rng(1), 20_000))
    result = assess(settings_for(tmp_path), profile, synth(np.random.default_rng(2), 4_000, shift_noise=0.4))
    noise_psi = result.features["noise"].psi
    assert noise_psi is not None and 0.05 < noise_psi < 0.25
    assert evaluate_rules(result, settings_for(tmp_path)) == []
    strict = evaluate_rules(result, settings_for(tmp_path, monitor_psi_threshold=noise_psi * 0.9,
                                                 monitor_ks_threshold=0.99))
    assert [(a.kind, a.metric) for a in strict] == [("data_drift", "psi:noise")]


# ------------------------------------------------------------------------------ matured labels only


def test_unmatured_labels_are_never_counted() -> None:
    n = 400
    rng = np.random.default_rng(0)
    scores = rng.random(n)
    preds = pd.DataFrame({"entity_key": [f"f{i}" for i in range(n)], "predicted_at": T0, "score": scores,
                          "model_version": "v1"})
    matured = np.arange(n) < 300
    late = scores > 0.5  # a perfect ranking for the matured flights ...
    late[~matured] = scores[~matured] < 0.5  # ... and a perfectly wrong one for the rest
    as_of = T0 + timedelta(hours=6)
    landed = [as_of - timedelta(minutes=1) if m else as_of + timedelta(minutes=1) for m in matured]
    outcomes = pd.DataFrame({"entity_key": preds["entity_key"], "available_at": landed, "label": late})
    perf = performance_metrics(preds, outcomes, as_of)
    assert perf.n == 300 and perf.auc == 1.0
    assert perf.log_loss == pytest.approx(score_metrics(late[:300], scores[:300]).log_loss)
    # at a later as_of everything has matured and the wrong half drags AUC down
    assert performance_metrics(preds, outcomes, as_of + timedelta(hours=1)).n == 400


# --------------------------------------------------------------------------------- on the database


def make_db(tmp_path: Path) -> tuple[Settings, db.sessionmaker[db.Session]]:
    settings = settings_for(tmp_path)
    db.upgrade(settings.db_url)
    return settings, db.session_factory(db.make_engine(settings.db_url))


def add_champion(sessions: db.sessionmaker[db.Session], profile: dict[str, object], version: str = "v1") -> None:
    with db.transaction(sessions) as s:
        mv = db.ModelVersion(
            model_name="m", version=version, bento_model_tag=f"m:{version}", feature_service="fs",
            train_from=T0 - timedelta(days=60), train_to=T0, n_train=1, n_valid=1, data_fingerprint="x",
            model_checksum="x", model_size_bytes=1, params={}, metrics={}, library_versions={},
            reference_profile=profile,
        )
        s.add(mv)
        s.flush()
        s.add(db.Alias(model_name="m", alias="champion", version_id=mv.id))


def log_predictions(sessions: db.sessionmaker[db.Session], frame: pd.DataFrame, *, version: str = "v1",
                    at: datetime = T0, landed: datetime | None = None) -> None:
    records: list[dict[str, Any]] = frame.to_dict("records")  # type: ignore[assignment]
    rows = [
        {"request_id": f"r-{version}-{i}", "entity_key": r["entity_key"], "model_name": "m",
         "model_version": version, "predicted_at": at + timedelta(seconds=i), "event_time": at,
         "attributes": {"carrier": r["carrier"], "origin": "EWR", "dest": "ORD", "tailnum": "N1"},
         "score": float(r["score"]), "features": {name: float(r[name]) for name in FEATURES}}
        for i, r in enumerate(records)
    ]
    with db.transaction(sessions) as s:
        s.execute(insert(db.Prediction), rows)
        if landed is not None:
            s.execute(insert(db.Outcome), [
                {"model_name": "m", "entity_key": r["entity_key"], "event_time": at, "available_at": landed,
                 "label": float(r["late"]), "detail": {"arr_delay": 0.0}} for r in records])


def test_run_monitoring_counts_matured_labels_and_writes_a_run(tmp_path: Path) -> None:
    settings, sessions = make_db(tmp_path)
    add_champion(sessions, profile_of(synth(np.random.default_rng(1), 20_000)))
    window = synth(np.random.default_rng(2), 1_000)
    as_of = T0 + timedelta(hours=12)
    log_predictions(sessions, window.iloc[:600], landed=as_of - timedelta(hours=1))  # matured
    log_predictions(sessions, window.iloc[600:], landed=as_of + timedelta(hours=1))  # not yet landed
    other = synth(np.random.default_rng(3), 300)
    other["entity_key"] = "g" + other["entity_key"]
    log_predictions(sessions, other, version="v0")  # another version: drift yes, performance no

    result = run_monitoring(sessions, settings, "m", T0, T0 + timedelta(days=1), as_of)

    assert result.n_predictions == 1_300 and result.n_scored == 1_000 and result.n_labelled == 600
    expected = score_metrics(window["late"].iloc[:600], window["score"].iloc[:600])
    assert result.performance is not None
    assert result.performance.auc == pytest.approx(expected.auc)
    assert result.performance.ece == pytest.approx(expected.ece)
    assert result.alerts == []
    with sessions() as s:
        run = s.scalars(select(db.MonitoringRun)).one()
    assert run.id == result.run_id and run.n_labelled == 600 and run.model_version == "v1"
    assert run.metrics["summary"]["auc"] == pytest.approx(expected.auc)
    json.dumps(run.metrics, allow_nan=False)


def test_run_monitoring_uses_the_latest_prediction_per_flight_and_alerts(tmp_path: Path) -> None:
    settings, sessions = make_db(tmp_path)
    add_champion(sessions, profile_of(synth(np.random.default_rng(1), 20_000)))
    window = synth(np.random.default_rng(2), 600, shift_signal=1.5)
    stale = window.copy()
    stale["score"] = 0.5  # an earlier prediction of the same flights, superseded below
    log_predictions(sessions, stale, at=T0)
    log_predictions(sessions, window, at=T0 + timedelta(hours=1), landed=T0 + timedelta(hours=3))

    result = run_monitoring(sessions, settings, "m", T0, T0 + timedelta(days=1), T0 + timedelta(hours=4))

    assert result.n_predictions == 1_200 and result.n_labelled == 600
    expected = score_metrics(window["late"], window["score"])
    assert result.performance is not None and result.performance.auc == pytest.approx(expected.auc)
    assert {a.kind for a in result.alerts} >= {"data_drift", "prediction_drift"}
    with sessions() as s:
        run = s.scalars(select(db.MonitoringRun)).one()
    assert {a["kind"] for a in run.alerts} == {a.kind for a in result.alerts}


def test_run_monitoring_refuses_without_champion_or_profile(tmp_path: Path) -> None:
    settings, sessions = make_db(tmp_path)
    with pytest.raises(LookupError, match="no champion for 'm'"):
        run_monitoring(sessions, settings, "m", T0, T0 + timedelta(days=1), T0)
    add_champion(sessions, {})
    with pytest.raises(ValueError, match="reference_profile"):
        run_monitoring(sessions, settings, "m", T0, T0 + timedelta(days=1), T0)


def test_feature_json_fallback_reads_nan_tokens() -> None:
    refs = {"signal": {"type": "numeric"}, "carrier": {"type": "categorical"}}
    fast = decode_feature_json(['{"signal": 1.5, "carrier": "AA"}', '{"signal": null}'], refs)
    assert fast["signal"][0] == 1.5 and np.isnan(fast["signal"][1]) and fast["carrier"][1] is None
    slow = decode_feature_json(['{"signal": NaN}', '{"signal": "2.5"}', "{}"], refs)  # not strict JSON
    assert np.isnan(slow["signal"][0]) and slow["signal"][1] == 2.5 and np.isnan(slow["signal"][2])


def test_history_and_chart(tmp_path: Path) -> None:
    settings, sessions = make_db(tmp_path)
    add_champion(sessions, profile_of(synth(np.random.default_rng(1), 5_000)))
    for day, shift in enumerate([0.0, 0.0, 1.5]):
        start = T0 + timedelta(days=day)
        frame = synth(np.random.default_rng(10 + day), 400, shift_signal=shift)
        frame["entity_key"] = f"d{day}-" + frame["entity_key"]
        log_predictions(sessions, frame, at=start, landed=start + timedelta(hours=2))
        run_monitoring(sessions, settings, "m", start, start + timedelta(days=1), start + timedelta(days=1))
    history = monitoring_history(sessions, "m")
    assert [h["window_to"] for h in history] == [T0 + timedelta(days=d) for d in (1, 2, 3)]
    assert [bool(h["alerts"]) for h in history] == [False, False, True]
    png = plot_history(history, tmp_path / "charts" / "monitoring.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000


def test_estimate_against_the_realized_auc_once_labels_mature(tmp_path: Path) -> None:
    settings, sessions = make_db(tmp_path)
    reference = synth(np.random.default_rng(1), 5_000)
    profile = profile_of(reference)
    profile["calibration"] = fit_calibrator(reference["score"], reference["late"])
    ref_est = estimate_performance(profile, reference["score"])
    assert ref_est is not None and ref_est.auc is not None
    profile["estimate_band"] = {"window_days": 1.0, "reference": ref_est.auc, "lower": ref_est.auc - 0.02,
                                "upper": ref_est.auc + 0.02}
    add_champion(sessions, profile)
    for day in range(3):
        start = T0 + timedelta(days=day)
        frame = synth(np.random.default_rng(20 + day), 600, flip=day == 2)  # day 3: the labels stop following
        frame["entity_key"] = f"d{day}-" + frame["entity_key"]
        log_predictions(sessions, frame, at=start, landed=start + timedelta(days=5))  # labels come late
        run = run_monitoring(sessions, settings, "m", start, start + timedelta(days=1), start + timedelta(days=1))
        assert run.n_labelled == 0 and run.estimated is not None and run.summary()["estimated_auc"] is not None
    assert estimate_history(sessions, "m", T0 + timedelta(days=4))[0]["realized_auc"] is None  # none matured yet
    rows = estimate_history(sessions, "m", T0 + timedelta(days=10))
    assert [r["n_labelled_then"] for r in rows] == [0, 0, 0] and [r["n_labelled"] for r in rows] == [600] * 3
    assert [r["covered"] for r in rows] == [True, True, False]  # the estimate could not see the flip coming
    assert rows[2]["realized_auc"] < 0.5 < rows[2]["estimated_auc"]
    png = plot_history(rows, tmp_path / "estimate.png", ESTIMATE_METRICS, title="estimate vs realized")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.postgres
def test_run_monitoring_on_postgres(tmp_path: Path) -> None:
    with scratch_database("retrain_monitor") as url:
        engine = None
        try:
            db.upgrade(url)
            settings = settings_for(tmp_path, database_url=url)
            engine = db.make_engine(url)
            sessions = db.session_factory(engine)
            add_champion(sessions, profile_of(synth(np.random.default_rng(1), 5_000)))
            window = synth(np.random.default_rng(2), 800, shift_signal=1.5)
            as_of = T0 + timedelta(hours=12)
            log_predictions(sessions, window.iloc[:500], landed=as_of - timedelta(hours=1))
            log_predictions(sessions, window.iloc[500:], landed=as_of + timedelta(hours=1))
            result = run_monitoring(sessions, settings, "m", T0, T0 + timedelta(days=1), as_of)
            assert (result.n_predictions, result.n_labelled) == (800, 500)
            expected = score_metrics(window["late"].iloc[:500], window["score"].iloc[:500])
            assert result.performance is not None and result.performance.auc == pytest.approx(expected.auc)
            assert result.features["carrier"].psi is not None and result.features["carrier"].psi < 0.05
            assert {a.kind for a in result.alerts} >= {"data_drift", "prediction_drift"}
            assert [h["run_id"] for h in monitoring_history(sessions, "m")] == [result.run_id]
        finally:
            if engine is not None:
                engine.dispose()


def test_run_monitoring_counts_nan_and_null_features_as_missing(tmp_path: Path) -> None:
    # json.dumps writes NaN (not strict JSON); it must read back as a missing value, like null
    settings, sessions = make_db(tmp_path)
    add_champion(sessions, profile_of(synth(np.random.default_rng(1), 5_000)))
    window = synth(np.random.default_rng(2), 300)
    window.loc[:99, "noise"] = float("nan")
    log_predictions(sessions, window, landed=T0 + timedelta(hours=1))
    result = run_monitoring(sessions, settings, "m", T0, T0 + timedelta(days=1), T0 + timedelta(days=1))
    assert result.n_predictions == 300
    assert result.features["noise"].null_rate == pytest.approx(100 / 300)
    assert result.features["signal"].null_rate == 0.0
