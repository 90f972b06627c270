"""Property: corrupted real rows are never lost, never duplicated, and land exactly when they should.

Hypothesis draws the shape of each example (seed, corruption rate, column/row shuffles, whether
the batch goes through a CSV file); a seeded RNG then corrupts 600 real rows, each with one or two
corruptions from the catalogue below. Every row carries an extra `row_id` column, so each input
row can be found again among the landed rows (`batch_row`) or the quarantined ones (`raw`).

An oracle predicts each row's fate: a row with an invalid corruption is quarantined; otherwise it
lands unless its flight was landed before (pre-landed rows, or an earlier copy in the batch).
20 examples x >= 510 corrupted rows >= 10,000 corrupted rows per run (checked at module teardown).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.ingest_home import Home, make_home, real_flights

from flight_delay import data
from flight_delay.data import FLIGHTS_TABLE
from flight_delay.ingest import ingest_file, ingest_frame
from flight_delay.ingest_contract import NULLABLE_COLUMNS
from retrain.features import offline

N_ROWS = 600
N_PRELANDED = 40
EXAMPLES = 20
MIN_CORRUPTED_PER_EXAMPLE = 510
REQUIRED = [c for c in data.FLIGHT_COLUMNS if c not in NULLABLE_COLUMNS]
INT_COLS = ["year", "month", "day", "dep_time", "sched_dep_time", "arr_time", "sched_arr_time", "flight", "hour",
            "minute"]
FLOAT_COLS = ["dep_delay", "arr_delay", "air_time", "distance"]
# a value of each column that breaks its range/format rule, whatever the row
OUT_OF_RANGE: dict[str, list[Any]] = {
    "year": [1990, 2101], "month": [0, 13], "day": [0, 32], "dep_time": [1261, 2401, -5],
    "sched_dep_time": [2460, 2401], "arr_time": [2475, -1], "sched_arr_time": [99, 3000],
    "dep_delay": [-500, 5000], "arr_delay": [-121, 2001], "flight": [0, 10000], "air_time": [0, -3],
    "distance": [0, -100], "hour": [24, -1], "minute": [60, 99], "carrier": ["ZZ", "ua"],
    "origin": ["XXX", "jfk"], "dest": ["QQQ", " LAX"], "tailnum": ["bad tail", "N123-45"],
}


@dataclass
class Fate:
    invalid: bool = False
    field: str | None = None  # the field the reason must name (set for invalid corruptions)


Corruption = Callable[[dict[str, Any], np.random.Generator], tuple[bool, str | None]]


def _iso(ts: pd.Timestamp) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def null_required(row: dict[str, Any], rng: np.random.Generator) -> tuple[bool, str | None]:
    col = str(rng.choice(REQUIRED))
    row[col] = [None, np.nan, "", "   "][rng.integers(4)]
    return True, col


def wrong_type(row: dict[str, Any], rng: np.random.Generator) -> tuple[bool, str | None]:
    col = str(rng.choice(INT_COLS + FLOAT_COLS + ["carrier", "origin", "dest", "tailnum", "time_hour"]))
    if col in INT_COLS:
        base = row[col] if pd.notna(row[col]) else 100
        row[col] = ["x#1", float(base) + 0.5, True, "12abc"][rng.integers(4)]
    elif col in FLOAT_COLS:
        row[col] = ["late", float("inf"), float("-inf"), "1,400"][rng.integers(4)]
    elif col == "time_hour":
        row[col] = ["not a time", "2013-13-45T99:00:00Z", "yesterday"][rng.integers(3)]
    else:
        row[col] = [3.5, "?!"][rng.integers(2)]  # through a CSV these become unknown codes: still invalid
    return True, col


def out_of_range(row: dict[str, Any], rng: np.random.Generator) -> tuple[bool, str | None]:
    col = str(rng.choice(list(OUT_OF_RANGE)))
    values = OUT_OF_RANGE[col]
    row[col] = values[rng.integers(len(values))]
    return True, col


def cross_field(row: dict[str, Any], rng: np.random.Generator) -> tuple[bool, str | None]:
    kind = rng.integers(5)
    if kind == 0:
        row["minute"] = (int(row["minute"]) + 1) % 60
        return True, "minute"
    if kind == 1:
        row["hour"] = (int(row["hour"]) + 1) % 24
        return True, "hour"
    if kind == 2:
        # >= 2 hours: the one-hour DST fall-back ambiguity can never make a shifted hour match again
        row["time_hour"] = _iso(pd.Timestamp(row["time_hour"]) + pd.Timedelta(hours=int(rng.choice([-2, 2, 3]))))
        return True, "time_hour"
    if kind == 3:
        row["dest"] = row["origin"]
        return True, "dest"
    row["month"], row["day"] = [(2, 30), (4, 31), (2, 29), (11, 31)][rng.integers(4)]
    return True, "day"


def harmless(row: dict[str, Any], rng: np.random.Generator) -> tuple[bool, str | None]:
    kind = rng.integers(4)
    if kind == 0:
        row[str(rng.choice(sorted(NULLABLE_COLUMNS)))] = None
    elif kind == 1:
        col = str(rng.choice(["year", "month", "day", "flight", "sched_dep_time", "hour", "minute", "distance"]))
        row[col] = f" {int(row[col])} " if rng.integers(2) else str(int(row[col]))
    elif kind == 2:
        col = str(rng.choice(["sched_arr_time", "flight", "minute", "distance"]))
        row[col] = float(row[col])
    else:
        row["time_hour"] = pd.Timestamp(row["time_hour"]).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    return False, None


CATALOGUE: list[Corruption] = [null_required, wrong_type, out_of_range, cross_field, harmless]


@dataclass
class Example:
    batch: pd.DataFrame  # as handed to ingestion (row_id + junk extra columns)
    keys: list[str]  # the real flight each final row is a copy of
    fates: list[Fate]
    prelanded: pd.DataFrame
    corrupted: int


def build_example(seed: int, rate: float, shuffle_cols: bool, shuffle_rows: bool) -> Example:
    rng = np.random.default_rng(seed)
    flights = real_flights()
    picks = rng.choice(len(flights), N_ROWS + N_PRELANDED, replace=False)
    clean = flights.iloc[picks[:N_ROWS]].reset_index(drop=True)
    prelanded = flights.iloc[picks[N_ROWS:]].reset_index(drop=True)
    clean_ids = data.flight_ids(clean).tolist()
    pre_ids = data.flight_ids(prelanded).tolist()
    rows: list[dict[str, Any]] = []
    keys: list[str] = []
    fates: list[Fate] = []
    corrupted = 0
    records = cast(list[dict[str, Any]], clean.to_dict("records"))
    pre_records = cast(list[dict[str, Any]], prelanded.to_dict("records"))
    # exactly max(MIN, rate * N) corrupted rows (a per-row coin flip can fall short of the floor)
    n_corrupt = max(MIN_CORRUPTED_PER_EXAMPLE, round(rate * N_ROWS))
    to_corrupt = set(rng.choice(N_ROWS, size=n_corrupt, replace=False).tolist())
    for i, original in enumerate(records):
        row, key, fate = dict(original), clean_ids[i], Fate()
        if i in to_corrupt:
            corrupted += 1
            roll = rng.random()
            if roll < 0.08 and i > 0:  # an exact copy of an earlier row of this batch
                j = int(rng.integers(i))
                row, key = dict(records[j]), clean_ids[j]
            elif roll < 0.14:  # an exact copy of a flight landed by an earlier batch
                j = int(rng.integers(N_PRELANDED))
                row, key = dict(pre_records[j]), pre_ids[j]
            else:
                # at most one invalid corruption per row (a second could undo the first, e.g. minute 99
                # then +1 -> 40), optionally preceded by a harmless one on the clean values
                if rng.random() < 0.3:
                    harmless(row, rng)
                bad, field = CATALOGUE[int(rng.integers(len(CATALOGUE)))](row, rng)
                fate.invalid, fate.field = bad, field
        rows.append(row)
        keys.append(key)
        fates.append(fate)
    batch = pd.DataFrame(rows, columns=list(data.FLIGHT_COLUMNS), dtype=object)
    batch["row_id"] = np.arange(N_ROWS)
    batch["junk"] = rng.integers(0, 9, N_ROWS).astype(str)
    order = rng.permutation(N_ROWS) if shuffle_rows else np.arange(N_ROWS)
    batch = batch.iloc[order].reset_index(drop=True)
    keys = [keys[k] for k in order]
    fates = [fates[k] for k in order]
    if shuffle_cols:
        batch = batch[list(rng.permutation(batch.columns))]
    return Example(batch=batch, keys=keys, fates=fates, prelanded=prelanded, corrupted=corrupted)


def expected_landed(ex: Example) -> set[int]:
    """Positions (in the final batch) the oracle says must land."""
    seen = set(data.flight_ids(ex.prelanded))
    out: set[int] = set()
    for pos, (key, fate) in enumerate(zip(ex.keys, ex.fates, strict=True)):
        if fate.invalid or key in seen:
            continue
        seen.add(key)
        out.add(pos)
    return out


@pytest.fixture(scope="module")
def tally(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    counts: dict[str, Any] = {"examples": 0, "corrupted": 0, "template": tmp_path_factory.mktemp("dbtemplate")}
    yield counts
    if counts["examples"]:
        assert counts["examples"] >= EXAMPLES and counts["corrupted"] >= 10_000, counts


@settings(max_examples=EXAMPLES, deadline=None, derandomize=False, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    rate=st.floats(0.86, 1.0),
    shuffle_cols=st.booleans(),
    shuffle_rows=st.booleans(),
    via_csv=st.booleans(),
)
def test_corrupted_real_rows_reconcile(
    tally: dict[str, Any], seed: int, rate: float, shuffle_cols: bool, shuffle_rows: bool, via_csv: bool
) -> None:
    ex = build_example(seed, rate, shuffle_cols, shuffle_rows)
    assert ex.corrupted >= MIN_CORRUPTED_PER_EXAMPLE
    with tempfile.TemporaryDirectory() as tmp:
        home: Home = make_home(Path(tmp) / "home", template_dir=tally["template"])
        s, f = home.settings, home.sessions
        pre = ingest_frame(ex.prelanded, settings=s, sessions=f, source="prelanded")
        assert pre.accepted == N_PRELANDED
        if via_csv:
            path = Path(tmp) / "batch.csv"
            ex.batch.to_csv(path, index=False)
            result = ingest_file(path, settings=s, sessions=f)
        else:
            result = ingest_frame(ex.batch, settings=s, sessions=f)

        # reconciliation
        assert result.status == "landed"
        assert result.received == N_ROWS == result.accepted + result.quarantined
        assert sum(result.reasons.values()) == result.quarantined
        assert set(result.extra_columns) == {"row_id", "junk"}

        row_ids = ex.batch["row_id"].to_numpy()
        landed = offline.read_table(s, FLIGHTS_TABLE)
        assert landed is not None
        landed = landed[landed["batch_id"] == result.batch_id]
        assert len(landed) == result.accepted and landed["flight_id"].is_unique
        quarantined = home.quarantined(result.batch_id)
        assert len(quarantined) == result.quarantined
        landed_pos = landed["batch_row"].astype(int).tolist()
        q_pos = [q.row_number for q in quarantined]
        # each input row exactly once among landed + quarantined, found again by its row_id
        assert sorted(landed_pos + q_pos) == list(range(N_ROWS))
        assert all(int(q.raw["row_id"]) == row_ids[q.row_number] for q in quarantined)
        if result.quarantine_path:
            qfile = pd.read_parquet(result.quarantine_path)
            assert qfile["row_number"].tolist() == q_pos
            assert qfile["row_id"].astype(int).tolist() == [int(row_ids[p]) for p in q_pos]

        # the oracle: exactly the rows that should land did
        assert set(landed_pos) == expected_landed(ex)
        for q in quarantined:
            fate = ex.fates[q.row_number]
            assert q.reason.startswith(f"{q.field}: ")
            if fate.invalid:
                assert q.rule != "duplicate", q.reason
                assert q.field == fate.field, (q.reason, ex.batch.iloc[q.row_number].to_dict())
            else:
                assert (q.field, q.rule) == ("flight_id", "duplicate"), q.reason

        # the same batch again (same route: a CSV reads 3.5 back as the text '3.5') adds nothing
        files = home.files()
        again = ingest_file(path, settings=s, sessions=f) if via_csv else ingest_frame(ex.batch, settings=s, sessions=f)
        assert again.status == "duplicate" and again.duplicate_of == result.batch_id
        assert (again.accepted, again.quarantined, again.refused) == (0, 0, N_ROWS)
        assert home.files() == files
    tally["examples"] += 1
    tally["corrupted"] += ex.corrupted
