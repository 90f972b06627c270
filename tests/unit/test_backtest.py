"""Backtest: policies on synthetic streams with a known concept change, production functions and
settings in the loop, and every input rule refused (with its message) before training starts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from tests.support.models import FEATURES, year_frame
from typer.testing import CliRunner

from flight_delay.history import history_from_training_set
from retrain.alerts import retraining
from retrain.backtest import replay as backtest
from retrain.backtest.replay import run_backtest
from retrain.core.config import Settings, get_settings
from retrain.evaluation import gates
from retrain.models import train
from retrain.monitoring import rules
from retrain.usecase.frames import BacktestInputError, History, history_from_frame, load_table

START = pd.Timestamp("2013-01-07", tz="UTC")  # a Monday: weekly periods start on it
CHANGE_WEEK = 14
CHANGE = START + pd.Timedelta(weeks=CHANGE_WEEK)


@lru_cache(maxsize=4)
def stream(change: bool, weeks: int = 30, seed: int = 0) -> pd.DataFrame:
    """A row every 15 minutes; y depends on x1 (and category c) until the change, then on -x1 and x2."""
    times = pd.date_range(START, periods=weeks * 7 * 96, freq="15min")
    rng = np.random.default_rng(seed)
    n = len(times)
    x = rng.normal(size=(n, 3))
    c = rng.choice(["a", "b", "c"], n)
    after = np.asarray(times >= CHANGE) if change else np.zeros(n, dtype=bool)
    logit = np.where(after, -2.5 * x[:, 0] + 2.5 * x[:, 1], 2.5 * x[:, 0] + 0.5 * (c == "a")) - 0.5
    y = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
    return pd.DataFrame({"ts": times, "x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2], "c": c, "y": y.astype(int)})


def fast_settings(home: Path, **overrides: Any) -> Settings:
    """Production's Settings with small windows and minimums for a 30-week stream; one thread."""
    values: dict[str, Any] = dict(home=home, num_boost_round=60, early_stopping_rounds=10, num_leaves=15,
                                  num_threads=1, eval_min_rows=300, monitor_min_labels=200,
                                  monitor_min_predictions=200, retrain_train_days=28, retrain_eval_days=7)
    values.update(overrides)
    return Settings(**values)


def weekly(change: bool, settings: Settings, policies: tuple[str, ...]) -> backtest.BacktestResult:
    history = history_from_frame(stream(change), time_col="ts", label_col="y", label_lag_hours=12)
    return run_backtest(history, settings, policies, period="week")


def at(record: backtest.PeriodRecord) -> pd.Timestamp:
    return pd.Timestamp(record.start)


# ------------------------------------------------------------------------------ policies


def test_triggered_retrains_after_the_change_and_recovers_while_static_does_not(tmp_path: Path) -> None:
    result = weekly(True, fast_settings(tmp_path), ("static", "triggered"))
    static, triggered = result.run("static"), result.run("triggered")
    retrains = [p for p in triggered.periods if p.retrain is not None]
    assert retrains, "the change must trigger a retrain"
    assert all(at(p) >= CHANGE for p in retrains), "no retrain before the change"
    assert at(retrains[0]) == CHANGE, "the first period after the change raises the alert"
    assert all(p.retrain.trigger.startswith("alert:") for p in retrains if p.retrain)
    assert triggered.totals()["promotions"] >= 1

    def mean(run: backtest.PolicyRun, lo: pd.Timestamp, hi: pd.Timestamp | None = None) -> float:
        return float(np.mean([p.metric for p in run.periods if at(p) >= lo and (hi is None or at(p) < hi)]))

    before = mean(triggered, START, CHANGE)
    tail = CHANGE + pd.Timedelta(weeks=8)
    assert mean(triggered, tail) > before - 0.03, "triggered recovers the metric"
    assert mean(static, tail) < 0.4, "static keeps the old concept"
    assert triggered.totals()["mean_metric"] > static.totals()["mean_metric"] + 0.2
    # before the change both policies served the same initial model with the same scores
    assert [p.metric for p in static.periods if at(p) < CHANGE] == [p.metric for p in triggered.periods
                                                                   if at(p) < CHANGE]


def test_without_a_change_triggered_promotes_at_most_once(tmp_path: Path) -> None:
    result = weekly(False, fast_settings(tmp_path), ("static", "triggered"))
    triggered = result.run("triggered").totals()
    assert triggered["promotions"] <= 1
    assert abs(triggered["mean_metric"] - result.run("static").totals()["mean_metric"]) < 0.01


def test_each_period_keeps_the_estimate_against_the_realized_metric(tmp_path: Path) -> None:
    from retrain.backtest import report

    result = weekly(True, fast_settings(tmp_path), ("static", "triggered"))
    assert result.settings["monitor_window_days"] == 7.0  # each period is a monitoring window
    static = result.run("static")
    for p in static.periods:
        m = p.monitoring
        assert m["estimated_auc"] is not None and m["estimated_auc_lower"] < m["reference_estimated_auc"]
        assert m["auc"] == pytest.approx(p.metric, abs=0.02)  # the realized AUC, on its matured labels
    before = [p for p in static.periods if at(p) < CHANGE]
    after = [p for p in static.periods if at(p) >= CHANGE + pd.Timedelta(weeks=1)]
    # before the change the estimate follows the realized AUC; after it, the labels no longer do
    assert np.mean([abs(p.monitoring["estimated_auc"] - p.metric) for p in before]) < 0.03
    assert all(p.metric < p.monitoring["estimated_auc"] - 0.2 for p in after)
    totals = static.totals()
    assert totals["estimate_windows"] == len(static.periods) and totals["estimate_covered"] >= 1
    assert totals["alerts_by_kind"].get("performance_decay", 0) >= len(after)
    rows = report.estimate_rows(result)
    assert len(rows) == 2 * len(static.periods) and {"estimated", "chunk spread", "covered"} <= set(rows[0])


def test_a_short_tail_period_is_left_out_of_every_mean(tmp_path: Path) -> None:
    from retrain.backtest import report

    full = stream(False)
    # six rows just past the last week's end, labelled against the concept: the tail scores AUC 0
    tail = pd.DataFrame({"ts": START + pd.Timedelta(weeks=30) + pd.to_timedelta(np.arange(6), unit="h"),
                         "x1": [2.0, 1.5, 1.0, -1.0, -1.5, -2.0], "x2": 0.0, "x3": 0.0, "c": "b",
                         "y": [0, 0, 0, 1, 1, 1]})
    settings = fast_settings(tmp_path)  # eval_min_rows 300: the default minimum rows of a period
    policies = ("static", "periodic-always")

    def run(frame: pd.DataFrame) -> backtest.BacktestResult:
        history = history_from_frame(frame, time_col="ts", label_col="y", label_lag_hours=12)
        return run_backtest(history, settings, policies, period="week")

    with_tail, without = run(pd.concat([full, tail], ignore_index=True)), run(full)
    assert with_tail.min_period_rows == 300
    for name in ("static", "periodic-always"):
        runs = with_tail.run(name)
        last = runs.periods[-1]
        assert last.n_rows == 6 and last.short and last.metric is not None and last.metric < 0.2
        assert not any(p.short for p in runs.periods[:-1])
        totals, reference = runs.totals(), without.run(name).totals()
        assert totals["periods"] == reference["periods"] + 1 and totals["periods_in_mean"] == reference["periods"]
        # the mean is the one without the tail, not dragged by it
        assert totals["mean_metric"] == pytest.approx(reference["mean_metric"], abs=1e-12)
        assert totals["mean_metric"] > 0.8
        assert totals["mean_metric_all_periods"] < totals["mean_metric"] - 0.02
        assert totals["short_periods"] == [{"start": last.start, "rows": 6}]
    # the promotion before the tail is not judged on its six rows
    promoted = with_tail.run("periodic-always").periods[-2]
    assert promoted.promoted and promoted.next_metric_new is not None and promoted.bad_promotion is None
    tail_day = str(tail["ts"].iloc[0].date())
    assert f"left out of every policy's mean: {tail_day} (6 rows)" in with_tail.means_note()
    assert "every period has enough rows" in without.means_note()
    data = with_tail.to_dict()
    assert data["min_period_rows"] == 300 and tail_day in data["means_note"]
    assert data["policies"][0]["periods"][-1]["short"] is True
    summary = {r["policy"]: r for r in report.summary_rows(with_tail)}
    assert summary["static"]["periods in mean"] == f"{reference['periods']}/{reference['periods'] + 1}"
    assert report.period_rows(with_tail)[-1]["rows"] == "6 (short)"
    lower = run_backtest(history_from_frame(pd.concat([full, tail], ignore_index=True), time_col="ts",
                                            label_col="y", label_lag_hours=12),
                         settings, ("static",), period="week", min_period_rows=0)
    assert lower.run("static").totals()["mean_metric"] == pytest.approx(
        with_tail.run("static").totals()["mean_metric_all_periods"])


def test_policy_variants_are_settings_overrides_of_triggered() -> None:
    from retrain.backtest.variants import TRIGGERED_VARIANT_HELP, TRIGGERED_VARIANTS

    assert set(TRIGGERED_VARIANT_HELP) == set(TRIGGERED_VARIANTS)
    estimated = backtest.parse_policy("estimated")
    assert (estimated.kind, estimated.gated, estimated.name) == ("triggered", True, "estimated")
    assert estimated.overrides == {"monitor_min_labels": 10**9}
    assert backtest.parse_policy("drift").overrides == {"monitor_drift_requires_performance": False}
    assert backtest.parse_policy("decay-validation").overrides == {"monitor_decay_baseline": "validation"}
    assert backtest.parse_policy("triggered").overrides == {}
    with pytest.raises(BacktestInputError, match="estimated, drift, decay-validation"):
        backtest.parse_policy("labels")


def test_estimated_retrains_on_label_free_rules_only(tmp_path: Path) -> None:
    df = stream(False).copy()
    after = df["ts"] >= CHANGE
    df.loc[after, "x1"] += 4.0  # inputs leave the training range: the out-of-range share fires
    history = history_from_frame(df, time_col="ts", label_col="y", label_lag_hours=12)
    result = run_backtest(history, fast_settings(tmp_path), ("triggered", "estimated"), period="week")
    estimated, triggered = result.run("estimated"), result.run("triggered")
    kinds = {a["kind"] for p in estimated.periods for a in p.alerts}
    assert "estimated_decay" in kinds and "performance_decay" not in kinds
    assert {a["kind"] for p in triggered.periods for a in p.alerts} & {"performance_decay", "estimated_decay"}
    retrains = [p for p in estimated.periods if p.retrain is not None]
    assert retrains and all(at(p) >= CHANGE for p in retrains)
    assert retrains[0].retrain is not None and retrains[0].retrain.trigger == "alert:estimated_decay"
    assert estimated.totals()["promotions"] >= 1
    assert all(p.monitoring["n_labelled"] > 0 for p in estimated.periods)  # labels matured, never judged
    assert result.settings["monitor_min_labels"] == 200  # the replay's own settings are left as they were
    data = result.to_dict()["policies"]
    assert data[1]["overrides"] == {"monitor_min_labels": 10**9} and data[0]["overrides"] == {}


def test_cooldown_runs_on_the_simulated_clock(tmp_path: Path) -> None:
    hours = 3 * 7 * 24.0
    result = weekly(True, fast_settings(tmp_path, retrain_cooldown_hours=hours), ("triggered",))
    periods = result.run("triggered").periods
    promoted_at: pd.Timestamp | None = None
    skipped = 0
    for p in periods:
        now = pd.Timestamp(p.end)
        if p.retrain is not None:
            assert promoted_at is None or now - promoted_at >= pd.Timedelta(hours=hours)
        skipped += sum("cooldown" in entry for entry in p.ledger)
        if p.promoted:
            promoted_at = now
    assert skipped >= 1, "an alert inside the cooldown is skipped by the ledger"


def test_dedupe_policy_champion_retrains_once_per_champion(tmp_path: Path) -> None:
    result = weekly(True, fast_settings(tmp_path, monitor_dedupe_policy="champion"), ("triggered",))
    periods = result.run("triggered").periods
    per_champion: dict[str, int] = {}
    for p in periods:
        if p.retrain is not None:
            per_champion[p.served] = per_champion.get(p.served, 0) + 1
    assert per_champion and max(per_champion.values()) == 1
    assert any("deduplicated" in entry for p in periods for entry in p.ledger)


def test_periodic_policies_share_challengers_and_bad_promotions_reconcile(tmp_path: Path) -> None:
    result = weekly(True, fast_settings(tmp_path), ("periodic-always:2", "periodic-gated:2"))
    always, gated = result.run("periodic-always/2"), result.run("periodic-gated/2")
    a_retrains = [p for p in always.periods if p.retrain]
    g_retrains = [p for p in gated.periods if p.retrain]
    assert [p.index for p in a_retrains] == [p.index for p in always.periods][1::2][: len(a_retrains)]
    assert len(a_retrains) == len(always.periods) // 2 - (1 if len(always.periods) % 2 == 0 else 0)
    assert all(p.promoted for p in a_retrains)
    assert gated.totals()["promotions"] < always.totals()["promotions"]
    assert any(p.retrain and p.retrain.outcome == "rejected" for p in g_retrains)
    margin = result.bad_margin
    for run in (always, gated):
        totals = run.totals()
        bad = 0
        for p in run.periods:
            if p.promoted and p.next_metric_new is not None and p.next_metric_replaced is not None:
                assert p.bad_promotion == (p.next_metric_replaced - p.next_metric_new > margin)
                bad += bool(p.bad_promotion)
        assert totals["bad_promotions"] == bad
        assert totals["retrains"] == sum(p.retrain is not None and p.retrain.challenger is not None
                                         for p in run.periods)
        assert totals["train_seconds"] == pytest.approx(sum(p.retrain.fit_seconds for p in run.periods
                                                            if p.retrain), abs=0.01)


def test_categories_are_fixed_from_the_training_window(tmp_path: Path) -> None:
    df = stream(False).copy()
    late = df["ts"] >= START + pd.Timedelta(weeks=10)
    df.loc[late & (df["c"] == "b"), "c"] = "new"
    history = history_from_frame(df, time_col="ts", label_col="y")
    assert history.categorical == ["c"]
    replay = backtest.Replay(history, fast_settings(tmp_path), period="week")
    model = replay.initial_model()
    assert model.categories == {"c": ["a", "b", "c"]}
    idx = replay.period_rows(12)
    x = replay.features(model, idx)
    assert x["c"].isna().sum() == (history.frame.iloc[idx]["c"] == "new").sum() > 0
    assert np.isfinite(replay.predict(model, idx)).all()


def test_regression_label_uses_rmse_and_periodic_retraining_beats_static(tmp_path: Path) -> None:
    df = stream(True).copy()
    after = (df["ts"] >= CHANGE).to_numpy()
    df["y"] = 2.0 * df["x1"] + np.where(after, 3.0 * df["x2"], 0.0) + np.random.default_rng(1).normal(size=len(df))
    history = history_from_frame(df, time_col="ts", label_col="y", regression=True)
    result = run_backtest(history, fast_settings(tmp_path), ("static", "periodic-gated:4"), period="week")
    assert result.metric == "rmse" and not result.higher_is_better
    assert result.run("periodic-gated/4").totals()["mean_metric"] < result.run("static").totals()["mean_metric"]


# ------------------------------------------------------------- the flights path, production pieces


def flights_history() -> backtest.History:
    """The synthetic year through the same shaping `load_flights` applies to `training_set().frame`."""
    frame = year_frame()
    frame = frame[frame["sched_dep"] < pd.Timestamp("2013-07-01", tz="UTC")]
    landed = pd.DataFrame({"flight_id": frame["flight_id"], "landed_at": frame["sched_dep"] + pd.Timedelta(hours=3)})
    return history_from_training_set(frame, FEATURES, landed=landed, feature_service="flight_delay_v1")


def test_the_backtest_calls_the_production_functions() -> None:
    assert backtest.decide is gates.decide
    assert backtest.plan_windows is retraining.plan_windows
    assert backtest.monitor_frame is rules.monitor_frame
    assert backtest.fit_with_settings is train.fit_with_settings
    assert backtest.reference_profile is train.reference_profile


def test_a_gate_threshold_in_settings_changes_the_backtests_decisions(tmp_path: Path) -> None:
    history = flights_history()
    assert history.slice_columns == ("carrier", "origin") and history.feature_service == "flight_delay_v1"
    base = dict(eval_min_rows=500, gate_slice_min_rows=300)
    lenient = run_backtest(history, fast_settings(tmp_path, retrain_train_days=56, retrain_eval_days=14, **base),
                           ("periodic-gated",), period="month").run("periodic-gated")
    strict = run_backtest(history, fast_settings(tmp_path, retrain_train_days=56, retrain_eval_days=14,
                                                 gate_auc_floor=0.99, **base),
                          ("periodic-gated",), period="month").run("periodic-gated")
    decided = [p.retrain for p in lenient.periods if p.retrain and p.retrain.outcome in ("promoted", "rejected")]
    assert decided and lenient.totals()["promotions"] >= 1
    # the same challengers, judged with a stricter floor: every one is rejected, by that gate
    assert [p.retrain.challenger for p in strict.periods if p.retrain] == [
        p.retrain.challenger for p in lenient.periods if p.retrain]
    assert strict.totals()["promotions"] == 0
    for p in strict.periods:
        if p.retrain and p.retrain.challenger:
            assert p.retrain.outcome == "rejected"
            assert any(r.startswith("auc_floor failed") and "floor 0.9900" in r for r in p.retrain.reasons)
            assert {g["name"] for g in p.retrain.gates} >= {"auc_floor", "improvement", "slices", "compatibility"}


# ------------------------------------------------------------------------------ bad input


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: Any, **_k: Any) -> None:
        raise AssertionError("training started before the input was checked")

    monkeypatch.setattr(backtest, "fit_with_settings", refuse)


def small_csv(tmp_path: Path, **columns: Any) -> Path:
    path = tmp_path / "history.csv"
    pd.DataFrame(columns).to_csv(path, index=False)
    return path


def load(path: Path, **kw: Any) -> History:
    return load_table(path, time_col=kw.pop("time_col", "ts"), label_col=kw.pop("label_col", "y"), **kw)


@pytest.mark.usefixtures("no_training")
def test_input_errors_name_the_problem(tmp_path: Path) -> None:
    ts = ["2013-01-01", "2013-01-02", "2013-01-03", "2013-01-04"]
    ok = dict(ts=ts, x=[1.0, 2.0, 3.0, 4.0], y=[0, 1, 0, 1])
    with pytest.raises(BacktestInputError, match=r"column\(s\) 'when' not in the data; it has: ts, x, y"):
        load(small_csv(tmp_path, **ok), time_col="when")
    with pytest.raises(BacktestInputError, match=r"column\(s\) 'nope' not in the data"):
        load(small_csv(tmp_path, **ok), features=["x", "nope"])
    with pytest.raises(BacktestInputError, match=r"time column 'ts': 2 value\(s\) are not dates, e.g. "
                                                 r"row 2 \('yesterday'\), row 4 \('2013-13-45'\)"):
        load(small_csv(tmp_path, **{**ok, "ts": ["2013-01-01", "yesterday", "2013-01-03", "2013-13-45"]}))
    with pytest.raises(BacktestInputError, match=r"time column 'ts': 1 empty value\(s\)"):
        load(small_csv(tmp_path, **{**ok, "ts": ["2013-01-01", None, "2013-01-03", "2013-01-04"]}))
    with pytest.raises(BacktestInputError, match=r"time column 'x': holds numbers"):
        load(small_csv(tmp_path, **ok), time_col="x")
    with pytest.raises(BacktestInputError, match=r"time column 'ts': not in time order: row 3 \(2013-01-01T00:00:00"
                                                 r"\+00:00\) comes after row 2 \(2013-01-02"):
        load(small_csv(tmp_path, **{**ok, "ts": ["2013-01-01", "2013-01-02", "2013-01-01", "2013-01-04"]}))
    with pytest.raises(BacktestInputError, match=r"label column 'y': is not binary: 3 distinct values \(0, 1, 2\), "
                                                 r"e.g. row 3 \(2\); .*pass --regression"):
        load(small_csv(tmp_path, **{**ok, "y": [0, 1, 2, 1]}))
    with pytest.raises(BacktestInputError, match=r"label column 'y': --regression needs numbers"):
        load(small_csv(tmp_path, **{**ok, "y": ["1.5", "high", "2", "3"]}), regression=True)
    with pytest.raises(BacktestInputError, match=r"'score'.*reserved"):
        load(small_csv(tmp_path, **{**ok, "score": [1, 2, 3, 4]}))
    words = load(small_csv(tmp_path, **{**ok, "y": ["yes", "no", "TRUE", None]}))
    assert words.frame["y"].tolist() == [1.0, 0.0, 1.0] and words.n_excluded == 1
    assert any("without a label" in n for n in words.notes)


@pytest.mark.usefixtures("no_training")
def test_too_little_history_is_refused_before_training(tmp_path: Path) -> None:
    df = stream(False, weeks=5)
    history = history_from_frame(df, time_col="ts", label_col="y")
    with pytest.raises(BacktestInputError, match=r"too little history: .* span 5 week\(s\); the initial window "
                                                 r"takes 4 and the backtest needs at least 2 more"):
        run_backtest(history, fast_settings(tmp_path), ("static",), period="week")
    one_class = history_from_frame(df.assign(y=0), time_col="ts", label_col="y")
    with pytest.raises(BacktestInputError, match=r"only one class"):
        run_backtest(one_class, fast_settings(tmp_path), ("static",), period="week", initial_periods=2)


# ------------------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("RETRAIN_HOME", str(tmp_path))
    monkeypatch.setenv("RETRAIN_NUM_THREADS", "1")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def invoke(*args: str) -> Any:
    from retrain.cli.main import build_app

    return CliRunner().invoke(build_app(), ["backtest", *args])


def test_cli_json_report_and_overrides(cli_home: Path) -> None:
    path = cli_home / "stream.parquet"
    stream(True).to_parquet(path)
    res = invoke("--data", str(path), "--time-col", "ts", "--label-col", "y", "--period", "week",
                 "--policy", "static", "--policy", "triggered", "--train-days", "28", "--eval-days", "7",
                 "--eval-min-rows", "300", "--min-labels", "200", "--min-predictions", "200",
                 "--num-boost-round", "60", "--cooldown-hours", "504", "--ece-threshold", "off", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["settings"]["retrain_cooldown_hours"] == 504 and data["settings"]["monitor_ece_threshold"] is None
    assert [p["policy"] for p in data["policies"]] == ["static", "triggered"]
    assert data["min_period_rows"] == 300 and "every period has enough rows" in data["means_note"]
    report = Path(data["report"])
    assert report.parent.parent == cli_home / "reports" and report.parent.name.startswith("backtest-")
    assert {f.name for f in report.parent.iterdir()} == {"index.html", "backtest.png", "estimate.png", "result.json"}
    page = report.read_text()
    assert "triggered" in page and "the estimate against the realized metric" in page
    trig = data["policies"][1]
    assert trig["totals"]["retrains"] == sum(1 for p in trig["periods"] if p["retrain"] and p["retrain"]["challenger"])


@pytest.mark.usefixtures("no_training")
def test_cli_refuses_bad_input_with_the_message(cli_home: Path) -> None:
    path = small_csv(cli_home, ts=["2013-01-02", "2013-01-01"], x=[1, 2], y=[0, 1])
    res = invoke("--data", str(path), "--time-col", "ts", "--label-col", "y")
    assert res.exit_code == 2
    assert "not in time order" in res.output
    res = invoke("--data", str(path), "--time-col", "ts", "--label-col", "y", "--psi-threshold", "-1")
    assert res.exit_code == 2 and "monitor_psi_threshold" in res.output
    res = invoke("--data", str(path), "--time-col", "ts")
    assert res.exit_code == 2 and "--label-col" in res.output
    ordered = small_csv(cli_home, ts=["2013-01-01", "2013-01-02"], x=[1, 2], y=[0, 1])
    res = invoke("--data", str(ordered), "--time-col", "ts", "--label-col", "y", "--min-period-rows", "-1")
    assert res.exit_code == 2 and "--min-period-rows: -1 must be >= 0" in res.output
    res = invoke("--data", str(ordered), "--time-col", "ts", "--label-col", "y", "--policy", "labels-late")
    assert res.exit_code == 2 and "estimated, drift, decay-validation" in res.output
