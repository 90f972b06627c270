"""Per-day work stays incremental: id lookups kept per process, the replay watermark, skipped table rebuilds.

Each shortcut must give exactly the answer the full recomputation gives, and must be dropped as
soon as the data under it changed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.support.flights import flight_settings
from tests.support.ingest_home import Home, make_home, real_flights

from flight_delay import data, features
from flight_delay.data import FLIGHTS_TABLE
from flight_delay.ingest import REPLAY_MARK, ingest_frame, replay_until
from retrain.features import offline


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return make_home(tmp_path / "home")


def small_clock() -> data.ReplayClock:
    return data.ReplayClock(data.enrich_flights(real_flights().iloc[:2000].copy()))


def uncached(paths: list[Path], columns: list[str]) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p, columns=columns) for p in paths], ignore_index=True)


def test_part_reads_follow_new_and_rewritten_parts(tmp_path: Path) -> None:
    parts = [tmp_path / f"part-{i:08d}.parquet" for i in range(3)]
    for i, p in enumerate(parts):
        pd.DataFrame({"flight_id": [f"f{i}a", f"f{i}b"], "n": [i, i]}).to_parquet(p, index=False)
    first = offline.read_parts(parts[:2], ["flight_id", "n"])
    assert first is not None and first["flight_id"].tolist() == ["f0a", "f0b", "f1a", "f1b"]
    first.loc[0, "flight_id"] = "mutated by the caller"  # a caller's frame is its own
    grown = offline.read_parts(parts, ["flight_id", "n"])
    assert grown is not None
    pd.testing.assert_frame_equal(grown, uncached(parts, ["flight_id", "n"]))
    # a part rewritten in place is read as it is now
    pd.DataFrame({"flight_id": ["g1"], "n": [9]}).to_parquet(parts[1], index=False)
    os.utime(parts[1], ns=(1, 1))
    again = offline.read_parts(parts, ["flight_id", "n"])
    assert again is not None
    pd.testing.assert_frame_equal(again, uncached(parts, ["flight_id", "n"]))
    # any list of parts, not only an extension of an earlier one
    assert offline.read_parts(parts[1:], ["n"])["n"].tolist() == [9, 2, 2]  # type: ignore[index]


def test_id_lookups_follow_new_and_rewritten_parts(tmp_path: Path) -> None:
    from flight_delay.ingest import _part_ids

    parts = [tmp_path / f"part-{i:08d}.parquet" for i in range(3)]
    for i, p in enumerate(parts):
        pd.DataFrame({"flight_id": [f"f{i}a", f"f{i}b"], "batch_id": [i, i]}).to_parquet(p, index=False)
    first = _part_ids(parts[:2], "flight_id", "batch_id")
    assert dict(first) == {"f0a": 0, "f0b": 0, "f1a": 1, "f1b": 1}
    assert _part_ids(parts[:2], "flight_id", "batch_id") == first  # nothing new: the same answer
    grown = _part_ids(parts, "flight_id", "batch_id")
    assert dict(grown) == {"f0a": 0, "f0b": 0, "f1a": 1, "f1b": 1, "f2a": 2, "f2b": 2}
    assert len(first) == 4  # the earlier answer did not grow under its holder
    pd.DataFrame({"flight_id": ["g1"], "batch_id": [9]}).to_parquet(parts[1], index=False)
    os.utime(parts[1], ns=(1, 1))  # rewritten in place: a different signature, read afresh
    assert dict(_part_ids(parts, "flight_id", "batch_id")) == {"f0a": 0, "f0b": 0, "g1": 9, "f2a": 2, "f2b": 2}
    assert dict(_part_ids(parts[1:], "flight_id", None)) == {"g1": -1, "f2a": -1, "f2b": -1}


def test_replay_watermark_skips_repeat_calls_until_a_batch_lands(home: Home,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    s, f = home.settings, home.sessions
    first = replay_until(s, f, "2013-01-02T06:00:00Z", clock=small_clock())
    assert first.accepted > 0 and (s.home / REPLAY_MARK).exists()

    def no_clock(*_a: object, **_k: object) -> data.ReplayClock:
        raise AssertionError("the watermark should have answered without loading the 2013 data")

    monkeypatch.setattr(data, "ReplayClock", no_clock)
    again = replay_until(s, f, "2013-01-02T03:00:00Z")  # earlier than the watermark: nothing to do
    assert (again.received, again.outcomes, again.batch_ids) == (0, 0, [])
    same = replay_until(s, f, "2013-01-02T06:00:00Z")
    assert same.batch_ids == []
    monkeypatch.undo()

    # a later `until` is real work; so is any call after a batch landed by another path
    later = replay_until(s, f, "2013-01-02T09:00:00Z", clock=small_clock())
    assert later.batch_ids  # outcomes that matured between 06:00 and 09:00
    extra = data.enrich_flights(real_flights().iloc[5000:5010].copy())[list(data.FLIGHT_COLUMNS)]
    assert ingest_frame(extra, settings=s, sessions=f, source="manual").accepted == 10
    called: list[bool] = []

    class Spy(data.ReplayClock):
        def flights_between(self, since, until):  # type: ignore[no-untyped-def]
            called.append(True)
            return super().flights_between(since, until)

    replay_until(s, f, "2013-01-02T09:00:00Z", clock=Spy(data.enrich_flights(real_flights().iloc[:2000].copy())))
    assert called, "a batch landed since the watermark, so the replay must look again"


def test_feature_tables_are_rebuilt_only_when_parts_or_horizon_change(home: Home) -> None:
    s, f = home.settings, home.sessions
    replay_until(s, f, "2013-01-02T06:00:00Z", clock=small_clock())
    rows = features.refresh_feature_tables(s, "2013-01-02T06:00:00Z")
    tables = [features.features_dir(s) / f"{n}.parquet" for n in features.FEATURE_TABLES]
    stamps = [p.stat().st_mtime_ns for p in tables]
    assert features.refresh_feature_tables(s, "2013-01-02T06:00:00Z") == rows
    assert [p.stat().st_mtime_ns for p in tables] == stamps  # nothing rewritten

    replay_until(s, f, "2013-01-02T09:00:00Z", clock=small_clock())  # new parts landed
    grown = features.refresh_feature_tables(s, "2013-01-02T09:00:00Z")
    assert [p.stat().st_mtime_ns for p in tables] != stamps
    assert grown["weather"] > rows["weather"]


@pytest.mark.parametrize("horizon", ["2013-01-01 08:00", "2013-03-10 06:00", "2013-07-19 13:00", "2013-12-31 23:00"])
def test_weather_cut_from_the_year_grid_equals_building_from_observations_so_far(horizon: str) -> None:
    """The cached year grid cut at the horizon is the per-call build from the observations <= horizon
    (gaps and the tail after the last observation carried <= WEATHER_CARRY_HOURS)."""
    h = pd.Timestamp(horizon, tz="UTC")
    w = data.load_weather()
    w = w[w["time_hour"] <= h].drop_duplicates(["origin", "time_hour"], keep="last")
    frames = []
    for origin, grp in w.groupby("origin"):
        g = grp.set_index("time_hour")[features.WEATHER_FEATURES].astype("float64")
        tail = min(g.index.max() + pd.Timedelta(hours=features.WEATHER_CARRY_HOURS), h.floor("h"))
        g = g.reindex(pd.date_range(g.index.min(), tail, freq="h"))
        g = g.ffill(limit=features.WEATHER_CARRY_HOURS).dropna(how="all")
        g.insert(0, "origin", str(origin))
        frames.append(g.rename_axis("event_timestamp").reset_index())
    expected = pd.concat(frames, ignore_index=True)
    got = features.weather_table(h, pd.Timestamp("2026-01-01", tz="UTC"))
    assert len(got) == len(expected) and got["event_timestamp"].max() <= h
    assert got["origin"].tolist() == expected["origin"].tolist()
    assert (got["event_timestamp"].to_numpy() == expected["event_timestamp"].to_numpy()).all()
    for col in features.WEATHER_FEATURES:
        assert np.allclose(got[col], expected[col], equal_nan=True), col


def test_landed_id_lookups_grow_with_each_batch_and_old_answers_stay_put(home: Home) -> None:
    from flight_delay.ingest import landed_flight_ids, member

    s, f = home.settings, home.sessions
    rows = data.enrich_flights(real_flights().iloc[:40].copy())[list(data.FLIGHT_COLUMNS)]
    one = ingest_frame(rows.iloc[:25], settings=s, sessions=f, source="one")
    before = landed_flight_ids(s, f)
    two = ingest_frame(rows.iloc[20:], settings=s, sessions=f, source="two")  # 5 overlap: quarantined
    after = landed_flight_ids(s, f)
    assert (one.accepted, two.accepted, two.quarantined) == (25, 15, 5)
    assert len(before) == 25 and len(after) == 40  # the earlier answer did not change under its holder
    ids = data.flight_ids(rows)
    assert set(after.values()) == {one.batch_id, two.batch_id}
    assert member(ids, after).all() and member(ids, before).sum() == 25
    landed = offline.read_table(s, FLIGHTS_TABLE)
    assert landed is not None and sorted(after) == sorted(landed["flight_id"])


def test_delay_stats_built_part_by_part_equal_a_build_from_scratch(home: Home) -> None:
    from flight_delay import delay_facts

    s, f = home.settings, home.sessions
    clock = small_clock()
    for until in ("2013-01-01T14:00:00Z", "2013-01-01T20:00:00Z", "2013-01-02T03:00:00Z", "2013-01-02T12:00:00Z"):
        replay_until(s, f, until, clock=clock)
        features.refresh_feature_tables(s, until)
    assert len(offline.all_parts(s, offline.OUTCOMES)) >= 4  # flights parts plus matured-outcome parts
    step = {n: pd.read_parquet(features.features_dir(s) / f"{n}.parquet").drop(columns="created")
            for n in ("carrier_stats", "route_stats")}
    delay_facts._STATE.clear()
    (features.features_dir(s) / ".tables.json").unlink()
    features.refresh_feature_tables(s, "2013-01-02T12:00:00Z")
    for name, table in step.items():
        scratch = pd.read_parquet(features.features_dir(s) / f"{name}.parquet").drop(columns="created")
        pd.testing.assert_frame_equal(table, scratch)
    facts = delay_facts.delay_facts(s)
    landed = offline.read_table(s, offline.OUTCOMES)
    assert landed is not None and sorted(facts.outcomes["flight_id"]) == sorted(landed["flight_id"])


def test_an_outcome_waits_for_its_flight_and_a_repeated_outcome_counts_once(tmp_path: Path) -> None:
    from flight_delay import delay_facts
    from flight_delay.landed import register_parts

    s = flight_settings(home=tmp_path / "h")
    s.ensure_dirs()

    def write(table: str, n: int, frame: pd.DataFrame) -> None:
        """Land `frame` as batch `n` of `table` (a batch row in the database, its part on disk)."""
        rows = {"flights": frame} if table == FLIGHTS_TABLE else {"outcomes": frame}
        assert register_parts(s, **rows) == n

    t = pd.Timestamp("2013-01-02 10:00", tz="UTC")
    outcome = pd.DataFrame({"flight_id": ["x"], "sched_dep": [t], "landed_at": [t + pd.Timedelta(hours=2)],
                            "arr_delay": [30.0], "late": [True], "batch_id": [1]})
    write(offline.OUTCOMES, 1, outcome)  # the outcome's flight has not landed yet
    assert delay_facts.delay_facts(s).outcomes.empty and delay_facts.delay_facts(s).sched_min is None
    write(FLIGHTS_TABLE, 2, pd.DataFrame({"flight_id": ["x"], "carrier": ["AA"], "origin": ["JFK"],
                                            "dest": ["LAX"], "sched_dep": [t], "batch_id": [2]}))
    facts = delay_facts.delay_facts(s)
    assert facts.outcomes[["flight_id", "carrier", "route"]].values.tolist() == [["x", "AA", "JFK-LAX"]]
    write(offline.OUTCOMES, 3, outcome.assign(arr_delay=5.0, late=False, batch_id=3))  # recorded again
    again = delay_facts.delay_facts(s).outcomes
    assert again[["flight_id", "arr_delay"]].values.tolist() == [["x", 5.0]]  # the latest record wins
