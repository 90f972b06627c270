"""Every rule of the flights input contract: a row that breaks it, and the exact reason it produces.

The base row is the first real flight (UA1545 EWR->IAH, 2013-01-01 05:15 New York = 10:15 UTC);
each case changes it just enough to break one rule. `test_every_rule_has_a_case` keeps the table
complete when a rule is added.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from tests.support.ingest_home import base_row, frame_of, real_flights

from flight_delay import data
from flight_delay.ingest_contract import RULES, BatchRejected, content_hash, flight_ids, validate

FID = "2013-01-01_UA1545_EWR_0515"
HHMM = "must be a valid HHMM time (0-2400, minutes < 60)"
DELAY = "must be between -120 and 2000 minutes"

# (rule key, changes to the base row, exact reason)
CASES: list[tuple[str, dict[str, Any], str]] = [
    # presence and type, in column order
    ("year:type", {"year": "abc"}, "year: must be an integer (got 'abc')"),
    ("year:not_null", {"year": None}, "year: must not be null"),
    ("month:type", {"month": 1.5}, "month: must be an integer (got 1.5)"),
    ("month:not_null", {"month": np.nan}, "month: must not be null"),
    ("day:type", {"day": "first"}, "day: must be an integer (got 'first')"),
    ("day:not_null", {"day": None}, "day: must not be null"),
    ("dep_time:type", {"dep_time": "5:17"}, "dep_time: must be an integer (got '5:17')"),
    ("sched_dep_time:type", {"sched_dep_time": 515.5}, "sched_dep_time: must be an integer (got 515.5)"),
    ("sched_dep_time:not_null", {"sched_dep_time": None}, "sched_dep_time: must not be null"),
    ("dep_delay:type", {"dep_delay": "late"}, "dep_delay: must be a finite number (got 'late')"),
    ("arr_time:type", {"arr_time": "830pm"}, "arr_time: must be an integer (got '830pm')"),
    ("sched_arr_time:type", {"sched_arr_time": True}, "sched_arr_time: must be an integer (got True)"),
    ("sched_arr_time:not_null", {"sched_arr_time": None}, "sched_arr_time: must not be null"),
    ("arr_delay:type", {"arr_delay": float("inf")}, "arr_delay: must be a finite number (got inf)"),
    ("carrier:type", {"carrier": 12}, "carrier: must be a string (got 12)"),
    ("carrier:not_null", {"carrier": "  "}, "carrier: must not be null (got '  ')"),
    ("flight:type", {"flight": "UA1545"}, "flight: must be an integer (got 'UA1545')"),
    ("flight:not_null", {"flight": None}, "flight: must not be null"),
    ("tailnum:type", {"tailnum": 14228}, "tailnum: must be a string (got 14228)"),
    ("origin:type", {"origin": 3.0}, "origin: must be a string (got 3)"),
    ("origin:not_null", {"origin": None}, "origin: must not be null"),
    ("dest:type", {"dest": 42}, "dest: must be a string (got 42)"),
    ("dest:not_null", {"dest": ""}, "dest: must not be null (got '')"),
    ("air_time:type", {"air_time": "long"}, "air_time: must be a finite number (got 'long')"),
    ("distance:type", {"distance": "far"}, "distance: must be a finite number (got 'far')"),
    ("distance:not_null", {"distance": None}, "distance: must not be null"),
    ("hour:type", {"hour": "five"}, "hour: must be an integer (got 'five')"),
    ("hour:not_null", {"hour": None}, "hour: must not be null"),
    ("minute:type", {"minute": 15.5}, "minute: must be an integer (got 15.5)"),
    ("minute:not_null", {"minute": None}, "minute: must not be null"),
    ("time_hour:type", {"time_hour": "yesterday"}, "time_hour: must be an ISO-8601 timestamp (got 'yesterday')"),
    ("time_hour:not_null", {"time_hour": None}, "time_hour: must not be null"),
    # values, in column order
    ("year:range", {"year": 1999}, "year: must be between 2000 and 2100 (got 1999)"),
    ("month:range", {"month": 13}, "month: must be between 1 and 12 (got 13)"),
    ("day:range", {"day": 32}, "day: must be between 1 and 31 (got 32)"),
    ("dep_time:hhmm", {"dep_time": 1275}, f"dep_time: {HHMM} (got 1275)"),
    ("sched_dep_time:hhmm", {"sched_dep_time": 2460}, f"sched_dep_time: {HHMM} (got 2460)"),
    ("dep_delay:range", {"dep_delay": -121}, f"dep_delay: {DELAY} (got -121)"),
    ("arr_time:hhmm", {"arr_time": 2401}, f"arr_time: {HHMM} (got 2401)"),
    ("sched_arr_time:hhmm", {"sched_arr_time": 99}, f"sched_arr_time: {HHMM} (got 99)"),
    ("arr_delay:range", {"arr_delay": 2000.5}, f"arr_delay: {DELAY} (got 2000.5)"),
    ("carrier:known_carrier", {"carrier": "ZZ"}, "carrier: must be a known carrier code (got 'ZZ')"),
    ("flight:range", {"flight": 0}, "flight: must be between 1 and 9999 (got 0)"),
    ("tailnum:format", {"tailnum": "n14228"}, "tailnum: must be 1-8 upper-case letters or digits (got 'n14228')"),
    ("origin:known_airport", {"origin": "XXX"}, "origin: must be a known airport code (got 'XXX')"),
    ("dest:known_airport", {"dest": "QQQ"}, "dest: must be a known airport code (got 'QQQ')"),
    ("air_time:positive", {"air_time": 0}, "air_time: must be > 0 (got 0)"),
    ("distance:positive", {"distance": -5}, "distance: must be > 0 (got -5)"),
    ("hour:range", {"hour": 24}, "hour: must be between 0 and 23 (got 24)"),
    ("minute:range", {"minute": 60}, "minute: must be between 0 and 59 (got 60)"),
    # across fields
    ("day:calendar_date", {"month": 2, "day": 30},
     "day: must make a real calendar date with year and month (got 2013-02-30)"),
    ("hour:matches_sched_dep_time", {"hour": 6}, "hour: must equal sched_dep_time // 100 (got 6, sched_dep_time 515)"),
    ("minute:matches_sched_dep_time", {"minute": 16},
     "minute: must equal sched_dep_time % 100 (got 16, sched_dep_time 515)"),
    ("time_hour:matches_local_hour", {"time_hour": "2013-01-01T11:00:00Z"},
     "time_hour: must be year-month-day hour:00 in America/New_York "
     "(got 2013-01-01T11:00:00Z = 2013-01-01 06:00 local; expected 2013-01-01 05:00)"),
    ("dest:differs_from_origin", {"dest": "EWR"}, "dest: must differ from origin (got 'EWR')"),
]


def _one_reason(changes: dict[str, Any]) -> tuple[str, str, str]:
    row = {**base_row(), **changes}
    valid, quarantine = validate(frame_of(row))
    assert len(valid) == 0 and len(quarantine) == 1, (valid, quarantine)
    q = quarantine.iloc[0]
    return str(q["field"]), str(q["rule"]), str(q["reason"])


@pytest.mark.parametrize(("key", "changes", "reason"), CASES, ids=[c[0] for c in CASES])
def test_rule_produces_its_exact_reason(key: str, changes: dict[str, Any], reason: str) -> None:
    field, rule, got = _one_reason(changes)
    assert f"{field}:{rule}" == key
    assert got == reason


def test_every_rule_has_a_case() -> None:
    covered = {c[0] for c in CASES} | {"flight_id:duplicate"}  # duplicates: tests below
    assert covered == {r.key for r in RULES}


def test_the_base_row_is_valid() -> None:
    valid, quarantine = validate(frame_of(base_row()))
    assert len(quarantine) == 0
    assert valid["flight_id"].tolist() == [FID]
    assert valid["row_number"].tolist() == [0]


def test_duplicate_within_the_batch_keeps_the_first_valid_copy() -> None:
    row = base_row()
    broken = {**row, "distance": -5}
    valid, quarantine = validate(frame_of(broken, row, row))
    # row 0 fails on distance, so row 1 is the first valid copy and lands; row 2 duplicates it
    assert valid["row_number"].tolist() == [1]
    reasons = dict(zip(quarantine["row_number"], quarantine["reason"], strict=True))
    assert reasons == {
        0: "distance: must be > 0 (got -5)",
        2: f"flight_id: duplicate of row 1 in this batch (got '{FID}')",
    }
    assert quarantine.set_index("row_number").loc[2, "rule"] == "duplicate"


def test_duplicate_of_already_landed_flight() -> None:
    landed = pd.Series([3], index=[FID])
    valid, quarantine = validate(frame_of(base_row()), landed=landed)
    assert len(valid) == 0
    assert quarantine.iloc[0]["field"] == "flight_id" and quarantine.iloc[0]["rule"] == "duplicate"
    assert quarantine.iloc[0]["reason"] == f"flight_id: already ingested in batch 3 (got '{FID}')"


def test_first_failing_rule_wins_in_fixed_order() -> None:
    # presence/type of any column beats values; values beat cross-field rules
    assert _one_reason({"distance": -5, "carrier": None})[2] == "carrier: must not be null"
    assert _one_reason({"year": "abc", "month": 13})[2] == "year: must be an integer (got 'abc')"
    assert _one_reason({"minute": 60, "dest": "EWR"})[1] == "range"
    assert _one_reason({"hour": 6, "dest": "EWR"})[1] == "matches_sched_dep_time"


def test_nullable_outcome_columns_may_be_blank() -> None:
    row = {**base_row(), **dict.fromkeys(("dep_time", "dep_delay", "arr_time", "arr_delay", "air_time", "tailnum"))}
    valid, quarantine = validate(frame_of(row))
    assert len(valid) == 1 and len(quarantine) == 0


def test_integer_like_text_and_floats_are_accepted() -> None:
    row = {**base_row(), "year": "2013", "flight": 1545.0, "sched_dep_time": " 515 ", "distance": "1400"}
    valid, quarantine = validate(frame_of(row))
    assert len(quarantine) == 0
    assert valid["flight_id"].tolist() == [FID]


def test_time_hour_with_offset_or_timestamp_dtype() -> None:
    as_offset = {**base_row(), "time_hour": "2013-01-01T05:00:00-05:00"}
    assert len(validate(frame_of(as_offset))[1]) == 0
    df = frame_of(base_row())
    df["time_hour"] = pd.to_datetime(df["time_hour"], utc=True)
    assert len(validate(df)[1]) == 0


def test_daylight_saving_fall_back_hour_accepts_both_instants() -> None:
    # 2013-11-03 01:xx happens twice in New York: 05:xx UTC (EDT) and 06:xx UTC (EST)
    row = {**base_row(), "month": 11, "day": 3, "sched_dep_time": 130, "hour": 1, "minute": 30,
           "dep_time": None, "arr_time": None}
    first = {**row, "time_hour": "2013-11-03T05:00:00Z"}
    second = {**row, "time_hour": "2013-11-03T06:00:00Z", "flight": 1546}
    wrong = {**row, "time_hour": "2013-11-03T07:00:00Z", "flight": 1547}
    valid, quarantine = validate(frame_of(first, second, wrong))
    assert valid["row_number"].tolist() == [0, 1]
    assert quarantine["rule"].tolist() == ["matches_local_hour"]


def test_every_real_row_passes_the_contract() -> None:
    """No false positives: the whole real year validates clean (and ids match data.flight_ids)."""
    flights = real_flights()
    valid, quarantine = validate(flights)
    assert len(quarantine) == 0
    assert len(valid) == len(flights) == 336_776
    assert valid["flight_id"].is_unique
    assert (valid["flight_id"].astype(object).to_numpy() == data.flight_ids(flights).to_numpy()).all()


def test_arrow_flight_ids_equal_data_flight_ids() -> None:
    sample = real_flights().sample(5000, random_state=7)
    assert flight_ids(sample).tolist() == data.flight_ids(sample).tolist()


def test_missing_columns_refuse_the_whole_batch() -> None:
    df = frame_of(base_row()).drop(columns=["distance", "origin"])
    with pytest.raises(BatchRejected) as err:
        validate(df)
    assert err.value.missing == ["origin", "distance"]
    assert "missing required columns: origin, distance" in str(err.value)


def test_duplicate_column_names_refuse_the_batch() -> None:
    df = frame_of(base_row())
    df = pd.concat([df, df[["distance"]]], axis=1)
    with pytest.raises(BatchRejected, match="duplicate column names: distance"):
        validate(df)


def test_shuffled_columns_extra_columns_and_index_do_not_matter() -> None:
    rows = real_flights().iloc[:50].copy()
    rows.loc[rows.index[3], "distance"] = -1
    shuffled = rows[list(reversed(rows.columns))].copy()
    shuffled["note"] = "x"
    shuffled.index = np.arange(1000, 1050)
    v1, q1 = validate(rows)
    v2, q2 = validate(shuffled)
    assert v1["flight_id"].tolist() == v2["flight_id"].tolist()
    assert q1["reason"].tolist() == q2["reason"].tolist() == ["distance: must be > 0 (got -1)"]
    assert q2["note"].tolist() == ["x"]  # the received row is kept whole in quarantine
    assert q2["row_number"].tolist() == [3]


def test_content_hash_ignores_column_order_row_order_dtypes_and_extras() -> None:
    rows = real_flights().iloc[:200]
    h = content_hash(rows)
    assert content_hash(rows[list(reversed(rows.columns))]) == h
    assert content_hash(rows.sample(frac=1, random_state=1)) == h
    assert content_hash(rows.astype(str).replace("nan", "")) == h  # a CSV read as text
    assert content_hash(rows.assign(extra=1)) == h
    changed = rows.copy()
    changed.loc[changed.index[5], "distance"] = 1401
    assert content_hash(changed) != h
    assert content_hash(rows.iloc[:199]) != h
