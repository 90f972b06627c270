"""Use cases: spec validation, discovery, per-use-case settings, data-volume sizing, calendar
features and `retrain init` (no servers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from retrain.backtest.replay import run_backtest
from retrain.core.config import Settings, base_settings, get_settings
from retrain.usecase.calendar import add_calendar, calendar_values, useful_parts
from retrain.usecase.catalog import UseCaseError, list_usecases, load_usecase, read_spec, settings_for
from retrain.usecase.contract import InputFileError
from retrain.usecase.frames import BacktestInputError, history_from_frame
from retrain.usecase.history import load_history
from retrain.usecase.scaffold import init_usecase
from retrain.usecase.sizing import Volume, sized_settings, volume_problems

SHIPPED = ("flight_delay", "bike_sharing")


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RETRAIN_HOME", str(tmp_path / "var"))
    monkeypatch.setenv("RETRAIN_USECASES_DIR", str(tmp_path / "usecases"))
    for name in ("RETRAIN_USECASE", "RETRAIN_EVAL_MIN_ROWS"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def daily_file(path: Path, days: int = 3 * 365, seed: int = 0) -> Path:
    """~1 row a day, a binary label that depends on a feature, a category and the weekday."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2020-01-01", periods=days, freq="D", tz="UTC")
    x = rng.normal(size=days)
    store = rng.choice(["a", "b", "c"], size=days)
    p = 1 / (1 + np.exp(-(1.5 * x + (ts.dayofweek >= 5) * 1.5 - 0.5)))
    y = (rng.random(days) < p).astype(int)
    pd.DataFrame({"day": ts.strftime("%Y-%m-%d"), "x": x, "store": store, "churned": y}).to_csv(path, index=False)
    return path


def write_spec(folder: Path, **changes: object) -> Path:
    spec = {"name": folder.name, "objective": "binary",
            "data": {"path": "h.csv", "time_col": "ts"}, "label": {"column": "y"},
            "features": {"service": f"{folder.name}_v1", "names": ["a", "b"]}}
    spec.update(changes)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "usecase.yaml").write_text(yaml.safe_dump(spec))
    return folder


# ---------------------------------------------------------------------------- spec and catalog


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_usecases_are_valid(home: Path, name: str) -> None:
    spec = load_usecase(base_settings(), name)
    assert spec.name == name and spec.features.names
    assert spec.label.column not in spec.features.names
    settings = settings_for(spec, base_settings())
    assert settings.model_name == name and settings.feature_service == spec.features.service


def test_list_names_both_shipped_and_user_usecases(home: Path) -> None:
    write_spec(home / "usecases" / "mine")
    names = [s.name for s in list_usecases(base_settings())]
    assert names[0] == "mine" and set(SHIPPED) <= set(names)


@pytest.mark.parametrize(("changes", "field"), [
    ({"objective": "ranking"}, "objective"),
    ({"label": {"column": "y", "delay_hours": -1}}, "label.delay_hours"),
    ({"data": {"time_col": "ts"}}, "data"),
    ({"features": {"service": "s", "names": ["a"], "categorical": ["zz"]}}, "features"),
    ({"settings": {"eval_min_rows": 10, "no_such_knob": 1}}, "settings"),
    ({"settings": {"home": "/elsewhere"}}, "settings"),
    ({"surprise": 1}, "surprise"),
    ({"features": {"service": "s", "names": ["a", "y"]}}, "leakage"),
])
def test_bad_spec_names_the_field(home: Path, changes: dict[str, object], field: str) -> None:
    folder = write_spec(home / "usecases" / "bad", **changes)
    with pytest.raises(UseCaseError, match=field) as err:
        read_spec(folder)
    assert "usecase.yaml" in str(err.value)


def test_folder_and_name_must_agree(home: Path) -> None:
    folder = write_spec(home / "usecases" / "here", name="there")
    with pytest.raises(UseCaseError, match="folder's name"):
        read_spec(folder)


def test_unknown_usecase_lists_known_ones(home: Path) -> None:
    with pytest.raises(UseCaseError, match="flight_delay"):
        load_usecase(base_settings(), "nope")


def test_settings_are_global_plus_overrides_and_env_wins(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_spec(home / "usecases" / "tiny", settings={"eval_min_rows": 40, "monitor_min_labels": 25},
               model_params={"num_leaves": 7})
    spec = load_usecase(base_settings(), "tiny")
    s = settings_for(spec, base_settings())
    assert (s.eval_min_rows, s.monitor_min_labels, s.model_params["num_leaves"]) == (40, 25, 7)
    assert s.gate_confidence == Settings().gate_confidence  # untouched globals stay
    monkeypatch.setenv("RETRAIN_EVAL_MIN_ROWS", "77")
    assert settings_for(spec, base_settings()).eval_min_rows == 77  # an operator's variable wins


def test_get_settings_applies_the_active_usecase(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_settings().monitor_ignore_features == ["dep_month"]  # flights' own override
    assert base_settings().monitor_ignore_features == []
    write_spec(home / "usecases" / "tiny", settings={"eval_min_rows": 40})
    monkeypatch.setenv("RETRAIN_USECASE", "tiny")
    get_settings.cache_clear()
    assert (get_settings().model_name, get_settings().eval_min_rows) == ("tiny", 40)


def test_bad_override_value_names_the_setting(home: Path) -> None:
    write_spec(home / "usecases" / "tiny", settings={"eval_min_rows": "many"})
    with pytest.raises(UseCaseError, match="eval_min_rows"):
        settings_for(load_usecase(base_settings(), "tiny"), base_settings())


# ---------------------------------------------------------------------------- sizing


def test_defaults_fit_the_flights_volume() -> None:
    flights = Volume(rows=327_000, days=365)
    assert volume_problems(Settings(), flights) == []
    assert sized_settings(flights, Settings()) == {}


def test_small_daily_volume_is_refused_with_the_fix() -> None:
    small = Volume(rows=365, days=365)  # the case: ~30 rows a month
    problems = volume_problems(Settings(), small)
    assert len(problems) == 3
    assert "eval_min_rows 1,000" in problems[0] and "~14 labelled rows" in problems[0]
    assert "RETRAIN_EVAL_MIN_ROWS" in problems[0]
    sized = Settings().model_copy(update=sized_settings(small, Settings()))
    assert volume_problems(sized, small) == []  # the sized settings fit what they were sized for


# ---------------------------------------------------------------------------- calendar


def test_calendar_offline_equals_request_time_values() -> None:
    times = pd.Series(pd.date_range("2021-03-13", periods=80, freq="47min", tz="UTC"))
    frame = add_calendar(pd.DataFrame({"t": times}), "t", ["hour", "weekday", "month"], "America/New_York")
    online = calendar_values((times.astype("int64") // 10**9).tolist(), "America/New_York",
                             ["hour", "weekday", "month"])
    for part in ("hour", "weekday", "month"):
        assert frame[f"t_{part}"].astype(int).tolist() == online[part]


def test_useful_parts_keep_signal_and_drop_noise() -> None:
    rng = np.random.default_rng(1)
    times = pd.Series(pd.date_range("2022-01-01", periods=24 * 60, freq="h", tz="UTC"))
    hour_driven = pd.Series(np.where(times.dt.hour.between(16, 19), 1.0, 0.0) + rng.normal(0, 0.3, len(times)))
    noise = pd.Series(rng.normal(size=len(times)))
    assert "hour" in useful_parts(times, hour_driven, "UTC")
    assert useful_parts(times, noise, "UTC") == {}
    daily = pd.Series(pd.date_range("2022-01-01", periods=100, freq="D", tz="UTC"))
    assert "hour" not in useful_parts(daily, pd.Series(rng.normal(size=100)), "UTC")  # one hour only
    assert "month" not in useful_parts(daily, pd.Series(np.arange(100.0)), "UTC")  # 100 days say no month


# ---------------------------------------------------------------------------- retrain init


def test_init_writes_a_working_usecase(home: Path) -> None:
    data = daily_file(home / "daily.csv")
    result = init_usecase("churn", data, settings=base_settings(), time_col="day", label_col="churned")
    spec = result.spec
    assert spec.folder == (home / "usecases" / "churn").resolve()
    assert {"x", "store", "day_weekday"} <= set(spec.features.names)
    stats = ["label_count_7d", "label_mean_7d", "label_count_28d", "label_mean_28d"]  # daily data: 7 and 28 days
    assert spec.features.names[-4:] == stats
    assert spec.features.categorical == ["store"]
    assert {f.name for f in spec.request} == {"day", "x", "store"}
    assert (spec.folder / "contract.yaml").is_file() and (spec.folder / "README.md").is_file()
    # its own Feast repository, fed by the engine's generic domain functions
    assert spec.feast is not None and spec.feast.repo == "."
    assert (spec.feast.raw, spec.feast.tables, spec.feast.entity_rows) == tuple(
        f"retrain.usecase.generic:{f}" for f in ("raw", "tables", "entity_rows"))
    for name in ("feature_store.yaml", "feature_store.production.yaml", "features.py"):
        assert (spec.folder / name).is_file(), name
    features_py = (spec.folder / "features.py").read_text()
    assert "ttl=timedelta(days=1)" in features_py and 'name="churn_v1"' in features_py
    settings = settings_for(spec, base_settings())
    volume = Volume(rows=result.contract.rows, days=(result.contract.end - result.contract.start).days)
    assert volume_problems(settings, volume) == []
    assert settings.eval_min_rows < 1000  # sized to ~1 row a day
    # the backtest runs it with its own settings and retrains: not a silent no-op
    history = load_history(spec, settings)  # through its feature service, as serving reads it
    assert "day_weekday" in history.feature_names and history.slice_columns == ("store",)
    assert set(stats) <= set(history.feature_names) and "churn_v1" in history.source
    assert history.frame["label_count_28d"].iloc[-1] > 0 and history.frame["label_count_28d"].iloc[0] == 0
    fast = settings.model_copy(update={"num_boost_round": 20, "num_threads": 1})
    out = run_backtest(history, fast, ["static", "periodic-gated"], period="month")
    gated = next(r for r in out.runs if r.policy.name == "periodic-gated")
    judged = [p.retrain.outcome for p in gated.periods if p.retrain is not None]
    assert judged and {"promoted", "rejected"} & set(judged)  # the gates judged, not only refused


def test_init_refuses_an_existing_name_and_leaves_nothing_half_written(home: Path) -> None:
    data = daily_file(home / "daily.csv")
    with pytest.raises(InputFileError, match="already exists"):
        init_usecase("flight_delay", data, settings=base_settings(), time_col="day", label_col="churned")
    with pytest.raises(InputFileError):
        init_usecase("churn", data, settings=base_settings(), time_col="nope", label_col="churned")
    with pytest.raises(InputFileError, match="NAME"):
        init_usecase("Bad-Name", data, settings=base_settings(), time_col="day", label_col="churned")
    parent = home / "usecases"
    assert not parent.exists() or list(parent.iterdir()) == []


def test_init_refuses_a_column_named_like_a_generated_feature(home: Path) -> None:
    frame = pd.read_csv(daily_file(home / "daily.csv")).assign(label_mean_7d=1.0)
    frame.to_csv(home / "clash.csv", index=False)
    with pytest.raises(InputFileError, match="label_mean_7d"):
        init_usecase("churn", home / "clash.csv", settings=base_settings(), time_col="day", label_col="churned")
    parent = home / "usecases"
    assert not parent.exists() or list(parent.iterdir()) == []


def test_backtest_refuses_default_minimums_on_a_small_daily_file(home: Path) -> None:
    frame = pd.read_csv(daily_file(home / "daily.csv"))
    history = history_from_frame(frame, time_col="day", label_col="churned")
    with pytest.raises(BacktestInputError, match="eval_min_rows 1,000") as err:
        run_backtest(history, base_settings(), ["static"], period="month", initial_periods=6)
    assert "--eval-min-rows" in str(err.value) and "monitor_min_predictions" in str(err.value)


def test_cli_init_then_list_and_show(home: Path) -> None:
    data = daily_file(home / "daily.csv", days=400)
    exe = str(Path(sys.executable).parent / "retrain")
    done = subprocess.run([exe, "init", "shop", "--data", str(data), "--time-col", "day", "--label-col",
                           "churned", "--json"], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout)["name"] == "shop"
    shown = json.loads(subprocess.run([exe, "usecases", "show", "shop", "--json"], capture_output=True,
                                      text=True, check=True).stdout)
    assert shown["effective_settings"]["model_name"] == "shop"
    assert shown["effective_settings"]["eval_min_rows"] < 1000
    listed = json.loads(subprocess.run([exe, "usecases", "list", "--json"], capture_output=True, text=True,
                                       check=True).stdout)
    assert {"shop", *SHIPPED} <= {r["name"] for r in listed}
    again = subprocess.run([exe, "init", "shop", "--data", str(data), "--time-col", "day", "--label-col",
                            "churned"], capture_output=True, text=True)
    assert again.returncode != 0 and "already exists" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize(("n_entities", "is_feature"), [(12, True), (400, False)])
def test_init_uses_a_small_entity_as_feature_and_slice(home: Path, n_entities: int, is_feature: bool) -> None:
    rng = np.random.default_rng(3)
    n = 2000
    frame = pd.DataFrame({"ts": pd.date_range("2023-01-01", periods=n, freq="h", tz="UTC").strftime("%Y-%m-%dT%H:%MZ"),
                          "who": [f"e{i}" for i in rng.integers(0, n_entities, n)], "price": rng.uniform(1, 5, n),
                          "units": rng.normal(50, 5, n)})
    frame.to_csv(home / "h.csv", index=False)
    spec = init_usecase("sales", home / "h.csv", settings=base_settings(), time_col="ts", label_col="units",
                        entity_col="who", regression=True).spec
    assert spec.data.entity_col == "who"
    assert ("who" in spec.features.names) is is_feature and ("who" in spec.slices) is is_feature
    assert ("who" in spec.features.categorical) is is_feature


def test_sizing_counts_only_labels_that_mature_inside_the_windows() -> None:
    """Labels 10 days late leave the end of each window unlabelled: the defaults that fit 100 rows a day
    with instant labels refuse, and the sized settings fit again (a lower minimum, or a window grown by
    its unlabelled tail)."""
    instant = Volume(rows=36_500, days=365)
    late = Volume(rows=36_500, days=365, label_delay_hours=240)
    assert not any("eval_min_rows" in p for p in volume_problems(Settings(), instant))
    problems = volume_problems(Settings(), late)
    assert any("~450 labelled rows < eval_min_rows 1,000" in p for p in problems), problems
    sized = sized_settings(late, Settings())
    # a 14-day window holds only 4 labelled days: fewer than gate_min_blocks (5) day blocks, so it grows to
    # 14.5 days (5 labelled, 9.5 unlabelled), and the minimum is half of its ~500 labelled rows
    assert sized["retrain_eval_days"] == 14.5 and sized["eval_min_rows"] == 250
    assert volume_problems(Settings().model_copy(update=sized), late) == []
    sparse = Volume(rows=3_650, days=365, label_delay_hours=240)  # 10 a day: 45 labelled rows in 14 days
    grown = sized_settings(sparse, Settings())
    assert grown["retrain_eval_days"] == 12 + 9.5  # 120 labelled rows need 12 days, plus the unlabelled tail
    assert volume_problems(Settings().model_copy(update=grown), sparse) == []


def test_a_weekly_panel_gets_weekly_blocks_and_enough_of_them() -> None:
    """The gates resample blocks of event time: weekly snapshots get one-week blocks, and the evaluation
    window spans gate_min_blocks of them; the defaults (day blocks, 14 days = 2 snapshots) are refused."""
    weekly = Volume(rows=200 * 52, days=364, times_per_day=1 / 7)
    problems = volume_problems(Settings(), weekly)
    assert any("blocks of 24 h with labelled rows < gate_min_blocks 5" in p for p in problems), problems
    sized = sized_settings(weekly, Settings())
    assert sized["gate_block_hours"] == 168 and sized["retrain_eval_days"] >= 35
    assert volume_problems(Settings().model_copy(update=sized), weekly) == []


def test_a_weekly_panel_gets_daily_snapshots_whatever_its_rows_per_day(home: Path) -> None:
    """200 customers at one weekly time: ~29 rows a day, but one event time a week -> daily label stats
    with 7 and 28 day windows (hourly 1-day windows would never see a label)."""
    rng = np.random.default_rng(5)
    weeks = pd.date_range("2022-01-03", periods=30, freq="W-MON", tz="UTC")
    frame = pd.DataFrame([(w.isoformat(), f"c{c}", float(rng.gamma(2, 3)), int(rng.random() < 0.2))
                          for w in weeks for c in range(200)], columns=["week", "customer", "usage", "churned"])
    frame.to_csv(home / "weekly.csv", index=False)
    result = init_usecase("churnw", home / "weekly.csv", settings=base_settings(), time_col="week",
                          label_col="churned", entity_col="customer", label_delay_hours=168)
    assert result.contract.rows_per_day > 4 and result.contract.times_per_day is not None
    assert result.contract.times_per_day < 1
    assert {"label_mean_7d", "label_mean_28d"} <= set(result.spec.features.names)
