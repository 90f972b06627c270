"""Feature tables: stamped when their values became known, never with a flight's own outcome.

No Feast here: these tests read the parquet tables `refresh_feature_tables` writes and check them
against hand-computed values (synthetic data) and a brute-force recomputation (real January data).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import pytest
from tests.support.feature_home import land, released
from tests.support.flights import flight_settings

from flight_delay import features as F
from flight_delay.data import load_weather
from retrain.core.config import Settings

UTC = "UTC"


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz=UTC)


def read_table(settings: Settings, name: str) -> pd.DataFrame:
    return pd.read_parquet(F.features_dir(settings) / f"{name}.parquet")


def row_at(table: pd.DataFrame, key: str, value: str, when: str) -> pd.Series:
    hit = table[(table[key] == value) & (table["event_timestamp"] == ts(when))]
    assert len(hit) == 1, f"expected one {key}={value} row at {when}, got {len(hit)}"
    return hit.iloc[0]


# ------------------------------------------------------------------ synthetic, checked by hand

# flight_id, carrier, origin, dest, sched_dep (UTC), landed_at (UTC) or None, arr_delay
SYNTHETIC = [
    ("a1", "AA", "JFK", "LAX", "2013-01-02 08:00", "2013-01-02 10:00", 30.0),  # late
    ("a2", "AA", "JFK", "LAX", "2013-01-02 20:00", "2013-01-02 23:59:59.999999", 5.0),
    ("a3", "AA", "LGA", "ORD", "2013-01-02 21:00", "2013-01-03 00:00:00", 60.0),  # lands exactly at the snapshot
    ("u1", "UA", "EWR", "SFO", "2013-01-05 09:00", "2013-01-05 12:00", 20.0),  # late
    ("a4", "AA", "JFK", "LAX", "2013-01-09 15:00", "2013-01-09 18:00", -10.0),
    ("a5", "AA", "JFK", "LAX", "2013-01-10 22:00", None, None),  # cancelled: no outcome
    ("a6", "AA", "JFK", "LAX", "2013-01-11 23:00", "2013-01-12 02:00", 100.0),  # lands after the last snapshot
]


@pytest.fixture()
def synthetic_home(tmp_path: Path) -> Settings:
    """A home with the SYNTHETIC flights and outcomes landed, feature tables refreshed."""
    settings = flight_settings(home=tmp_path / "home")
    settings.ensure_dirs()
    rows = pd.DataFrame(SYNTHETIC, columns=["flight_id", "carrier", "origin", "dest", "sched_dep", "landed_at",
                                            "arr_delay"])
    rows["sched_dep"] = pd.to_datetime(rows["sched_dep"], utc=True, format="ISO8601")
    rows["landed_at"] = pd.to_datetime(rows["landed_at"], utc=True, format="ISO8601")
    rows["tailnum"] = "N1"
    rows["distance"] = 1000.0
    outcomes = land(settings, rows)
    assert sorted(outcomes["flight_id"]) == ["a1", "a2", "a3", "a4", "a6", "u1"]
    F.refresh_feature_tables(settings)
    return settings


def test_carrier_stats_count_only_flights_landed_before_each_snapshot(synthetic_home: Settings) -> None:
    carrier = read_table(synthetic_home, "carrier_stats")
    # one row per carrier and daily snapshot, from the first departure day to the day after the last
    days = pd.date_range("2013-01-02", "2013-01-12", freq="D", tz=UTC)
    for code in ("AA", "UA"):
        assert list(carrier.loc[carrier["carrier"] == code, "event_timestamp"]) == list(days)

    def aa(when: str) -> pd.Series:
        return row_at(carrier, "carrier", "AA", when)

    # 01-02 00:00: nothing has landed yet
    assert aa("2013-01-02")["carrier_flights_7d"] == 0
    assert math.isnan(aa("2013-01-02")["carrier_late_rate_7d"])
    assert math.isnan(aa("2013-01-02")["carrier_mean_delay_7d"])
    # 01-03 00:00: a1 and a2 (landed 23:59:59.999999); a3 landed AT 00:00, not before -> excluded
    r = aa("2013-01-03")
    assert (r["carrier_flights_7d"], r["carrier_late_rate_7d"], r["carrier_mean_delay_7d"]) == (2, 0.5, 17.5)
    assert r["carrier_late_rate_28d"] == 0.5
    # 01-04 00:00: a1, a2, a3
    r = aa("2013-01-04")
    assert r["carrier_flights_7d"] == 3
    assert r["carrier_late_rate_7d"] == pytest.approx(2 / 3)
    assert r["carrier_mean_delay_7d"] == pytest.approx(95 / 3)
    # 01-09 00:00: the 7-day window [01-02, 01-09) still holds a1..a3; a4 lands later that day
    assert aa("2013-01-09")["carrier_flights_7d"] == 3
    # 01-10 00:00: window [01-03, 01-10) -> a3 (landed 01-03 00:00) and a4; a1, a2 dropped out
    r = aa("2013-01-10")
    assert (r["carrier_flights_7d"], r["carrier_late_rate_7d"], r["carrier_mean_delay_7d"]) == (2, 0.5, 25.0)
    # ... while the 28-day window keeps all four landed AA flights
    assert r["carrier_late_rate_28d"] == 0.5
    # 01-12 00:00: window [01-05, 01-12) -> a4 only; a5 was cancelled (no outcome), a6 lands at 02:00
    r = aa("2013-01-12")
    assert (r["carrier_flights_7d"], r["carrier_late_rate_7d"], r["carrier_mean_delay_7d"]) == (1, 0.0, -10.0)
    # UA: u1 landed 01-05 12:00 -> counted from the 01-06 snapshot on, not on 01-05
    assert row_at(carrier, "carrier", "UA", "2013-01-05")["carrier_flights_7d"] == 0
    r = row_at(carrier, "carrier", "UA", "2013-01-06")
    assert (r["carrier_flights_7d"], r["carrier_late_rate_7d"], r["carrier_mean_delay_7d"]) == (1, 1.0, 20.0)


def test_route_stats_count_only_flights_landed_before_each_snapshot(synthetic_home: Settings) -> None:
    route = read_table(synthetic_home, "route_stats")
    assert set(route["route"]) == {"JFK-LAX", "LGA-ORD", "EWR-SFO"}

    def jfk_lax(when: str) -> pd.Series:
        return row_at(route, "route", "JFK-LAX", when)

    assert jfk_lax("2013-01-02")["route_flights_28d"] == 0
    r = jfk_lax("2013-01-03")
    assert (r["route_flights_28d"], r["route_late_rate_28d"], r["route_mean_delay_28d"]) == (2, 0.5, 17.5)
    r = jfk_lax("2013-01-10")  # + a4 (landed 01-09 18:00)
    assert (r["route_flights_28d"], r["route_late_rate_28d"], r["route_mean_delay_28d"]) == (3, 1 / 3, 25 / 3)
    assert row_at(route, "route", "LGA-ORD", "2013-01-03")["route_flights_28d"] == 0
    assert row_at(route, "route", "LGA-ORD", "2013-01-04")["route_mean_delay_28d"] == 60.0


def test_weather_rows_never_stamped_after_the_horizon() -> None:
    created = ts("2020-01-01")
    for horizon in (ts("2013-01-10 12:30"), ts("2013-01-10 13:00")):
        table = F.weather_table(horizon, created)
        assert table["event_timestamp"].max() <= horizon
        # and the table does reach up to the last observation at or before the horizon
        assert table["event_timestamp"].max() == horizon.floor("h")
        assert set(table["origin"]) == {"EWR", "JFK", "LGA"}
        assert not table.duplicated(["origin", "event_timestamp"]).any()


# ------------------------------------------------------------------ real January data


@pytest.fixture(scope="module")
def january_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, pd.DataFrame]:
    """January 2013 as seen at 2013-02-01 00:00 UTC, landed and refreshed (no Feast)."""
    settings = flight_settings(home=tmp_path_factory.mktemp("january"))
    settings.ensure_dirs()
    flights = released("2013-02-01")
    land(settings, flights)
    F.refresh_feature_tables(settings)
    return settings, flights


def pit_rows(table: pd.DataFrame, key: str, flights: pd.DataFrame, flight_key: pd.Series) -> pd.DataFrame:
    """The table row a point-in-time join selects per flight: latest event_timestamp <= sched_dep."""
    left = pd.DataFrame({"flight_id": flights["flight_id"].to_numpy(), key: flight_key.to_numpy(),
                         "at": F.entity_frame(flights)["event_timestamp"].to_numpy()})
    left = left.astype({"at": "datetime64[us, UTC]"}).sort_values("at")
    right = table.rename(columns={"event_timestamp": "snapshot"}).sort_values("snapshot")
    out = pd.merge_asof(left, right, left_on="at", right_on="snapshot", by=key, direction="backward")
    return out.set_index("flight_id").loc[flights["flight_id"]]


def brute_stats(outcomes: pd.DataFrame, snapshot: pd.Timestamp, days: int) -> tuple[int, float, float]:
    """(count, late rate, mean delay) of the outcomes that landed in [snapshot - days, snapshot)."""
    win = outcomes[(outcomes["landed_at"] >= snapshot - pd.Timedelta(days=days)) & (outcomes["landed_at"] < snapshot)]
    if win.empty:
        return 0, math.nan, math.nan
    return len(win), float(win["late"].mean()), float(win["arr_delay"].mean())


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


def test_own_outcome_never_feeds_own_stats_bruteforce(january_home: tuple[Settings, pd.DataFrame]) -> None:
    """For sampled flights, the stats row PIT-selected at departure equals a recomputation from
    flights landed before that snapshot, and that set never contains the flight itself."""
    settings, flights = january_home
    outcomes = F.landed_outcomes(settings).merge(flights[["flight_id", "carrier", "origin", "dest"]], on="flight_id")
    outcomes["route"] = outcomes["origin"] + "-" + outcomes["dest"]
    carrier = read_table(settings, "carrier_stats")
    route = read_table(settings, "route_stats")
    labelled = flights[flights["flight_id"].isin(outcomes["flight_id"])]
    sample = labelled.sample(n=300, random_state=7)
    by_carrier = pit_rows(carrier, "carrier", sample, sample["carrier"])
    by_route = pit_rows(route, "route", sample, sample["origin"] + "-" + sample["dest"])
    # (pit rows, key, window days, count column, rate column, mean delay column); None = not in the table
    specs = [
        (by_carrier, "carrier", 7, "carrier_flights_7d", "carrier_late_rate_7d", "carrier_mean_delay_7d"),
        (by_carrier, "carrier", 28, None, "carrier_late_rate_28d", None),
        (by_route, "route", 28, "route_flights_28d", "route_late_rate_28d", "route_mean_delay_28d"),
    ]
    sample = sample.assign(route=sample["origin"] + "-" + sample["dest"])
    problems: list[str] = []
    checked_nonempty = 0
    for f in sample.itertuples():
        for rows, key, days, n_col, rate_col, delay_col in specs:
            row = rows.loc[f.flight_id].to_dict()
            snapshot = pd.Timestamp(row["snapshot"])
            assert snapshot <= cast(pd.Timestamp, f.sched_dep)
            pool = outcomes[outcomes[key] == getattr(f, key)]
            window = pool[(pool["landed_at"] >= snapshot - pd.Timedelta(days=days)) & (pool["landed_at"] < snapshot)]
            if f.flight_id in set(window["flight_id"]):
                problems.append(f"{f.flight_id}: own outcome inside its {key} {days}d window")
            n, rate, delay = brute_stats(pool, snapshot, days)
            checked_nonempty += n > 0
            ok = same(row[rate_col], rate)
            ok &= n_col is None or row[n_col] == n
            ok &= delay_col is None or same(row[delay_col], delay)
            if not ok:
                problems.append(f"{f.flight_id} {key} {days}d @ {snapshot}: {row} != {(n, rate, delay)}")
    assert problems == [], problems[:10]
    assert checked_nonempty > 500  # the comparison is not vacuous: most windows hold flights


def test_own_outcome_never_feeds_own_stats_perturbation(
    january_home: tuple[Settings, pd.DataFrame], tmp_path: Path,
) -> None:
    """Rewrite the outcomes of every flight departing on 2013-01-15 (UTC): the rows those flights
    select at departure are unchanged, while the next snapshots do change."""
    settings, flights = january_home
    day = ts("2013-01-15")
    on_day = flights[(flights["sched_dep"] >= day) & (flights["sched_dep"] < day + pd.Timedelta(days=1))]
    changed = flights.copy()
    hit = changed["flight_id"].isin(on_day["flight_id"]) & changed["arr_delay"].notna()
    assert hit.sum() > 500
    changed.loc[hit, "arr_delay"] = np.where(changed.loc[hit, "arr_delay"] > 15, -30.0, 300.0)  # flip late
    other = flight_settings(home=tmp_path / "perturbed")
    other.ensure_dirs()
    land(other, changed)
    F.refresh_feature_tables(other)
    for name, key, flight_key in (("carrier_stats", "carrier", on_day["carrier"]),
                                  ("route_stats", "route", on_day["origin"] + "-" + on_day["dest"])):
        before = read_table(settings, name).drop(columns="created")
        after = read_table(other, name).drop(columns="created")
        pit_before = pit_rows(before, key, on_day, flight_key).drop(columns="at")
        pit_after = pit_rows(after, key, on_day, flight_key).drop(columns="at")
        assert (pit_before["snapshot"] == day).all()
        pd.testing.assert_frame_equal(pit_before, pit_after)
        # the perturbation is visible once those flights have landed: the tables are not identical
        next_day = after[after["event_timestamp"] == day + pd.Timedelta(days=1)].set_index(key)
        prev = before[before["event_timestamp"] == day + pd.Timedelta(days=1)].set_index(key)
        rate = [c for c in before.columns if "late_rate" in c][0]
        assert (next_day[rate] - prev.loc[next_day.index, rate]).abs().max() > 0.02


def test_tables_have_microsecond_utc_timestamps(january_home: tuple[Settings, pd.DataFrame]) -> None:
    settings, flights = january_home
    for name in F.FEATURE_TABLES:
        table = read_table(settings, name)
        assert str(table["event_timestamp"].dtype) == "datetime64[us, UTC]", name
        assert str(table["created"].dtype) == "datetime64[us, UTC]", name
    ents = F.entity_frame(flights)
    stamps = pd.DatetimeIndex(ents["event_timestamp"])
    assert str(stamps.tz) == "UTC"
    nanos = stamps.tz_convert(None).as_unit("ns").to_numpy().astype("int64")
    assert (nanos % 1000 == 0).all()  # no sub-microsecond part
    # UA1545 EWR was scheduled 05:15 New York time on 2013-01-01, i.e. 10:15 UTC
    first = ents[ents["flight_id"] == "2013-01-01_UA1545_EWR_0515"].iloc[0]
    assert first["event_timestamp"] == ts("2013-01-01 10:15")
    assert first["sched_dep_epoch"] == int(ts("2013-01-01 10:15").timestamp())


def test_weather_table_stops_at_the_last_departure(january_home: tuple[Settings, pd.DataFrame]) -> None:
    settings, flights = january_home
    weather = read_table(settings, "weather")
    horizon = flights["sched_dep"].max().ceil("h")
    assert weather["event_timestamp"].max() <= horizon
    # weather observed after the horizon exists in the source data, and none of it leaked in
    source = load_weather()
    assert (source["time_hour"] > horizon).sum() > 1000
    kept = source[source["time_hour"] <= horizon].drop_duplicates(["origin", "time_hour"], keep="last")
    # every observation is in the table, with its own values ...
    merged = kept.merge(weather, left_on=["origin", "time_hour"], right_on=["origin", "event_timestamp"],
                        suffixes=("_src", ""))
    assert len(merged) == len(kept)
    assert np.allclose(merged["temp"], merged["temp_src"], equal_nan=True)
    # ... and the only other rows fill hourly gaps, carrying the last observation <= 2 hours forward
    extra = weather.merge(kept[["origin", "time_hour"]], left_on=["origin", "event_timestamp"],
                          right_on=["origin", "time_hour"], how="left", indicator=True)
    filled = extra[extra["_merge"] == "left_only"]
    assert len(weather) == len(kept) + len(filled)
    for row in filled.itertuples():
        prior = kept[(kept["origin"] == row.origin) & (kept["time_hour"] < row.event_timestamp)]["time_hour"].max()
        assert row.event_timestamp - prior <= pd.Timedelta(hours=F.WEATHER_CARRY_HOURS)


def test_weather_after_the_last_observation_carries_it_to_the_horizon() -> None:
    """At the edge (the horizon's hour not observed yet) the last observation is carried forward, as the
    point-in-time join does, so an exact-hour lookup finds weather; never beyond WEATHER_CARRY_HOURS."""
    w = load_weather().drop_duplicates(["origin", "time_hour"], keep="last")
    ewr = w[w["origin"] == "EWR"].set_index("time_hour").sort_index()
    hours = ewr.index
    gap = next(h for h, nxt in zip(hours[:-1], hours[1:], strict=True) if nxt - h >= pd.Timedelta(hours=4))
    for ahead in (1, 2, 3):
        horizon = gap + pd.Timedelta(hours=ahead, minutes=30)
        table = F.weather_table(horizon, ts("2020-01-01"))
        rows = table[table["origin"] == "EWR"].set_index("event_timestamp")
        carried = [gap + pd.Timedelta(hours=k) for k in range(1, ahead + 1) if k <= F.WEATHER_CARRY_HOURS]
        assert rows.index.max() == (carried[-1] if carried else gap)
        for hour in carried:
            assert rows.loc[hour, "temp"] == ewr.loc[gap, "temp"]
