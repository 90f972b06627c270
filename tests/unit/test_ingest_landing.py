"""Landing: what reaches the offline store, the quarantine and the database, and what never does."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, select
from tests.support.ingest_home import Home, make_home, real_flights
from typer.testing import CliRunner

from flight_delay import data, ingest
from flight_delay.data import FLIGHTS_TABLE
from flight_delay.ingest import BatchRejected, ingest_file, ingest_frame, ingest_outcomes, replay_until
from retrain.core import db
from retrain.core.config import get_settings
from retrain.core.status import summary
from retrain.features import offline

FLIGHT_PART = "offline/flights/part-{:08d}.parquet"
OUTCOME_PART = "offline/outcomes/part-{:08d}.parquet"


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return make_home(tmp_path / "home")


def planted_batch(n: int = 300) -> pd.DataFrame:
    """`n` real rows (January 1st) with five planted errors and one extra column."""
    rows = real_flights().iloc[:n].copy().astype(object)
    rows.loc[3, "distance"] = -5
    rows.loc[10, "carrier"] = "ZZ"
    rows.loc[20, "month"] = None
    rows.loc[30, "time_hour"] = "not a time"
    rows.loc[40] = rows.loc[41]  # same flight twice: row 41 is the duplicate
    rows["note"] = [f"r{i}" for i in range(n)]
    return rows


def outcome_rows(home: Home) -> int:
    with home.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(db.Outcome)) or 0)


def test_valid_rows_land_and_each_bad_row_is_quarantined_once(home: Home) -> None:
    batch = planted_batch()
    result = ingest_frame(batch, settings=home.settings, sessions=home.sessions, source="planted")

    assert (result.status, result.received, result.accepted, result.quarantined) == ("landed", 300, 295, 5)
    assert result.received == result.accepted + result.quarantined + result.refused
    assert result.extra_columns == ["note"]
    assert "ignored extra columns: note" in result.message
    assert result.reasons == {"distance:positive": 1, "carrier:known_carrier": 1, "month:not_null": 1,
                              "time_hour:type": 1, "flight_id:duplicate": 1}

    landed = pd.read_parquet(home.settings.home / FLIGHT_PART.format(result.batch_id))
    assert len(landed) == 295 and landed["flight_id"].is_unique
    assert "note" not in landed.columns
    assert set(landed["batch_row"]) == set(range(300)) - {3, 10, 20, 30, 41}
    assert (landed["batch_id"] == result.batch_id).all()

    rows = home.quarantined(result.batch_id)
    by_row = {r.row_number: r for r in rows}
    assert sorted(by_row) == [3, 10, 20, 30, 41]
    assert by_row[3].reason == "distance: must be > 0 (got -5)"
    assert (by_row[3].field, by_row[3].rule) == ("distance", "positive")
    assert by_row[30].reason == "time_hour: must be an ISO-8601 timestamp (got 'not a time')"
    assert by_row[41].reason == f"flight_id: duplicate of row 40 in this batch (got '{by_row[41].row_key}')"
    assert by_row[3].raw["note"] == "r3" and by_row[3].raw["distance"] == -5
    assert by_row[20].raw["month"] is None
    json.dumps([r.raw for r in rows])  # JSON-safe

    qfile = pd.read_parquet(home.settings.quarantine_dir / f"batch-{result.batch_id}.parquet")
    assert qfile["row_number"].tolist() == [3, 10, 20, 30, 41]
    assert qfile["reason"].tolist() == [by_row[i].reason for i in [3, 10, 20, 30, 41]]
    assert qfile["note"].tolist() == ["r3", "r10", "r20", "r30", "r41"]

    expected_outcomes = int((landed["arr_delay"].notna() & landed["landed_at"].notna()).sum())
    assert result.outcomes == expected_outcomes == outcome_rows(home)
    parts = pd.read_parquet(home.settings.home / OUTCOME_PART.format(result.batch_id))
    assert len(parts) == expected_outcomes

    (batch_row,) = home.batches()
    assert (batch_row.status, batch_row.received, batch_row.accepted, batch_row.quarantined) == ("landed", 300, 295, 5)
    assert batch_row.content_hash == result.content_hash
    assert batch_row.min_event_time == landed["sched_dep"].min().to_pydatetime()
    assert batch_row.max_event_time == landed["sched_dep"].max().to_pydatetime()


def test_landed_rows_match_data_enrich_flights(home: Home) -> None:
    rows = real_flights().iloc[1000:3000]
    result = ingest_frame(rows, settings=home.settings, sessions=home.sessions)
    landed = pd.read_parquet(home.settings.home / FLIGHT_PART.format(result.batch_id))
    expected = data.enrich_flights(rows.copy()).reset_index(drop=True)
    assert landed["flight_id"].tolist() == expected["flight_id"].tolist()
    for col in ("sched_dep", "landed_at"):
        pd.testing.assert_series_equal(landed[col], expected[col].astype("datetime64[us, UTC]"), check_names=False)
    assert landed["distance"].tolist() == expected["distance"].astype(float).tolist()
    outcomes = pd.read_parquet(home.settings.home / OUTCOME_PART.format(result.batch_id))
    ref = data.outcomes_of(expected, home.settings.delay_threshold_minutes)
    assert outcomes["flight_id"].tolist() == ref["flight_id"].tolist()
    assert outcomes["late"].tolist() == ref["late"].tolist()


def test_outcomes_table_reads_back_what_the_bulk_insert_wrote(home: Home) -> None:
    rows = real_flights().iloc[:500]
    ingest_frame(rows, settings=home.settings, sessions=home.sessions)
    parquet = offline.read_table(home.settings, offline.OUTCOMES)
    assert parquet is not None
    with home.sessions() as s:
        sql = {o.entity_key: o for o in s.scalars(select(db.Outcome))}
    assert len(sql) == len(parquet)
    for fid, sched, landed, delay, late in zip(*(parquet[c].tolist() for c in (
            "flight_id", "sched_dep", "landed_at", "arr_delay", "late")), strict=True):
        o = sql[fid]
        assert o.model_name == home.settings.model_name
        assert (o.event_time, o.available_at) == (sched.to_pydatetime(), landed.to_pydatetime())
        assert (o.detail, o.label) == ({"arr_delay": delay}, float(late))


def test_same_content_again_adds_nothing_and_says_so(home: Home, tmp_path: Path) -> None:
    batch = planted_batch()
    first = ingest_frame(batch, settings=home.settings, sessions=home.sessions)
    files = home.files()
    outcomes = outcome_rows(home)
    csv = tmp_path / "same.csv"
    batch[list(reversed(batch.columns))].to_csv(csv, index=False)  # other column order, via CSV

    for again in (ingest_frame(batch, settings=home.settings, sessions=home.sessions), ingest_file(
            csv, settings=home.settings, sessions=home.sessions)):
        assert again.status == "duplicate" and again.duplicate and again.duplicate_of == first.batch_id
        assert (again.received, again.accepted, again.quarantined, again.refused) == (300, 0, 0, 300)
        assert f"same content as batch {first.batch_id}" in again.message and "nothing added" in again.message
    assert home.files() == files
    assert outcome_rows(home) == outcomes
    assert len(home.quarantined()) == 5
    batches = home.batches()
    assert [b.status for b in batches] == ["landed", "duplicate", "duplicate"]
    assert all(b.content_hash == first.content_hash for b in batches)
    assert all((b.error or "").endswith("nothing added") for b in batches[1:])


def test_overlapping_batch_quarantines_flights_already_landed(home: Home) -> None:
    first = ingest_frame(real_flights().iloc[:100], settings=home.settings, sessions=home.sessions)
    second = ingest_frame(real_flights().iloc[50:150], settings=home.settings, sessions=home.sessions)
    assert (second.accepted, second.quarantined) == (50, 50)
    assert second.reasons == {"flight_id:duplicate": 50}
    reasons = {q.reason for q in home.quarantined(second.batch_id)}
    assert all(r.startswith(f"flight_id: already ingested in batch {first.batch_id} (got '") for r in reasons)
    landed = offline.read_table(home.settings, FLIGHTS_TABLE)
    assert landed is not None and len(landed) == 150 and landed["flight_id"].is_unique


def test_missing_columns_are_refused_and_recorded(home: Home) -> None:
    df = real_flights().iloc[:10].drop(columns=["origin", "distance"])
    with pytest.raises(BatchRejected, match="missing required columns: origin, distance") as err:
        ingest_frame(df, settings=home.settings, sessions=home.sessions, source="bad")
    (batch,) = home.batches()
    assert batch.id == err.value.batch_id
    assert (batch.status, batch.received, batch.accepted) == ("rejected", 10, 0)
    assert batch.error is not None and "origin, distance" in batch.error
    assert home.files() == []


@pytest.mark.parametrize("kind", ["binary", "not_a_table", "empty", "fake_parquet", "missing", "directory"])
def test_unreadable_files_are_refused_with_nothing_written(home: Home, tmp_path: Path, kind: str) -> None:
    path = tmp_path / {"fake_parquet": "x.parquet", "directory": "adir"}.get(kind, "x.csv")
    if kind == "binary":
        path.write_bytes(bytes(range(256)) * 64)
    elif kind == "not_a_table":
        path.write_text("# notes\nthis is not a flights table\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "fake_parquet":
        real_flights().iloc[:5].to_csv(path, index=False)
    elif kind == "directory":
        path.mkdir()
    with pytest.raises(BatchRejected) as err:
        ingest_file(path, settings=home.settings, sessions=home.sessions)
    message = str(err.value)
    assert str(path) in message or "not a flights table" in message
    (batch,) = home.batches()
    assert batch.status == "rejected" and batch.error == message
    assert home.files() == []


def test_a_failure_while_landing_leaves_nothing_half_written(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = planted_batch(120)

    def boom(*_args: object, **_kw: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ingest, "_insert_outcomes", boom)  # fails after the parquet parts are written
    with pytest.raises(OSError, match="disk full"):
        ingest_frame(batch, settings=home.settings, sessions=home.sessions)
    assert home.files() == []  # no part, no quarantine file, no temp file
    assert [(b.status, b.error) for b in home.batches()] == [("failed", "OSError: disk full")]
    assert home.quarantined() == [] and outcome_rows(home) == 0

    monkeypatch.undo()
    result = ingest_frame(batch, settings=home.settings, sessions=home.sessions)
    assert (result.status, result.accepted, result.quarantined) == ("landed", 115, 5)


def test_csv_and_parquet_files_land_the_same_rows(home: Home, tmp_path: Path) -> None:
    rows = real_flights().iloc[:200]
    rows.to_csv(tmp_path / "a.csv.gz", index=False)
    rows.iloc[::-1].to_parquet(tmp_path / "b.parquet")
    a = ingest_file(tmp_path / "a.csv.gz", settings=home.settings, sessions=home.sessions)
    b = ingest_file(tmp_path / "b.parquet", settings=home.settings, sessions=home.sessions)
    assert (a.status, a.accepted) == ("landed", 200)
    assert b.status == "duplicate" and b.duplicate_of == a.batch_id


# ------------------------------------------------------------------ outcomes and replay


def small_clock() -> data.ReplayClock:
    flights = data.enrich_flights(real_flights().iloc[:2000].copy())  # Jan 1st and part of Jan 2nd
    return data.ReplayClock(flights)


def test_replay_lands_released_flights_then_matured_outcomes_idempotently(home: Home) -> None:
    clock = small_clock()
    s, f = home.settings, home.sessions

    noon = replay_until(s, f, "2013-01-01T17:00:00Z", clock=clock)
    released = clock.flights_between(None, pd.Timestamp("2013-01-01T17:00:00Z").to_pydatetime())
    assert noon.accepted == noon.received == len(released) > 0
    matured = clock.outcomes_between(None, pd.Timestamp("2013-01-01T17:00:00Z").to_pydatetime())
    assert noon.outcomes == len(matured)  # only flights landed by noon-ish carry an outcome
    assert noon.outcome_batch is None

    later = replay_until(s, f, "2013-01-02T06:00:00Z", clock=clock)
    assert later.flights is not None and later.outcome_batch is not None
    assert later.outcome_batch.kind == "outcomes" and later.outcome_batch.quarantined == 0

    again = replay_until(s, f, "2013-01-02T06:00:00Z", clock=clock)
    assert (again.received, again.outcomes, again.batch_ids) == (0, 0, [])

    until = pd.Timestamp("2013-01-02T06:00:00Z").to_pydatetime()
    landed = offline.read_table(s, FLIGHTS_TABLE)
    outcomes = offline.read_table(s, offline.OUTCOMES)
    assert landed is not None and outcomes is not None
    assert sorted(landed["flight_id"]) == sorted(clock.flights_between(None, until)["flight_id"])
    assert sorted(outcomes["flight_id"]) == sorted(clock.outcomes_between(None, until)["flight_id"])
    assert outcome_rows(home) == len(outcomes) == noon.outcomes + later.outcomes
    assert ingest.last_landed_sched_dep(f, replay_only=True) == landed["sched_dep"].max().to_pydatetime()


def test_ingest_outcomes_quarantines_unknown_and_repeated_flights(home: Home) -> None:
    clock = small_clock()
    until = pd.Timestamp("2013-01-01T12:00:00Z").to_pydatetime()
    flights = clock.flights_between(None, until)[list(data.FLIGHT_COLUMNS)]
    ingest_frame(flights, settings=home.settings, sessions=home.sessions)  # outcomes blank at 12:00
    recorded_before = outcome_rows(home)
    matured = clock.outcomes_between(None, pd.Timestamp("2013-01-02").to_pydatetime())
    known = matured[matured["flight_id"].isin(clock.flights_between(None, until)["flight_id"])]
    batch = pd.concat([known.iloc[:20], known.iloc[:1], matured[~matured.index.isin(known.index)].iloc[:2]])
    batch = batch[list(ingest.OUTCOME_INPUT_COLUMNS)].reset_index(drop=True)
    batch.loc[5, "arr_delay"] = 5000.0

    result = ingest_outcomes(batch, settings=home.settings, sessions=home.sessions)
    already = result.reasons.get("flight_id:duplicate", 0)
    assert result.received == 23 == result.accepted + result.quarantined
    assert result.reasons.get("arr_delay:range") == 1
    assert result.reasons.get("flight_id:unknown_flight") == 2
    assert already >= 1  # row 20 repeats row 0; earlier landed outcomes are also refused
    assert outcome_rows(home) == recorded_before + result.accepted
    reasons = {q.row_number: q.reason for q in home.quarantined(result.batch_id)}
    assert reasons[5] == "arr_delay: must be between -120 and 2000 minutes (got 5000)"
    assert reasons[21].startswith("flight_id: must be a flight that was ingested (got '")


# ------------------------------------------------------------------ status and CLI


def test_status_summary_counts(home: Home) -> None:
    ingest_frame(planted_batch(), settings=home.settings, sessions=home.sessions)
    ingest_frame(planted_batch(), settings=home.settings, sessions=home.sessions)
    with pytest.raises(BatchRejected):
        ingest_frame(pd.DataFrame({"a": [1]}), settings=home.settings, sessions=home.sessions)
    ing = summary(home.settings, home.sessions)["ingestion"]
    assert ing["batches_by_status"] == {"flights:duplicate": 1, "flights:landed": 1, "flights:rejected": 1}
    assert (ing["rows_received"], ing["rows_landed"], ing["rows_quarantined"]) == (300, 295, 5)
    assert ing["latest_event_time"] is not None and ing["last_batch"]["status"] == "rejected"


def test_cli_ingest_json_refusal_and_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from retrain.cli.main import build_app

    monkeypatch.setenv("RETRAIN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RETRAIN_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        app = build_app()
        runner = CliRunner()
        good = tmp_path / "batch.csv"
        planted_batch().to_csv(good, index=False)
        res = runner.invoke(app, ["ingest", str(good), "--json", "--no-refresh"])
        assert res.exit_code == 0, res.output
        payload = json.loads(res.stdout.strip().splitlines()[-1])
        assert {k: payload[k] for k in ("status", "received", "accepted", "quarantined")} == {
            "status": "landed", "received": 300, "accepted": 295, "quarantined": 5}
        assert payload["batch_id"] == 1 and payload["message"].startswith("landed 295 of 300 rows")

        bad = tmp_path / "bad.csv"
        bad.write_text("a,b\n1,2\n")
        res = runner.invoke(app, ["ingest", str(bad), "--json"])
        assert res.exit_code == 1
        assert json.loads(res.stdout.strip().splitlines()[-1])["status"] == "rejected"

        res = runner.invoke(app, ["ingest"])
        assert res.exit_code == 2

        res = runner.invoke(app, ["status", "--json"])
        assert res.exit_code == 0, res.output
        ing = json.loads(res.stdout)["ingestion"]
        assert ing["rows_landed"] == 295 and ing["batches_by_status"]["flights:rejected"] == 1
    finally:
        get_settings.cache_clear()


def test_landed_ids_ignore_parts_the_database_does_not_know(home: Home) -> None:
    result = ingest_frame(real_flights().iloc[:20], settings=home.settings, sessions=home.sessions)
    orphan = offline.part_path(home.settings, FLIGHTS_TABLE, 99)
    orphan.write_bytes((home.settings.home / FLIGHT_PART.format(result.batch_id)).read_bytes())
    ids = ingest.landed_flight_ids(home.settings, home.sessions)
    assert len(ids) == 20 and set(ids.values()) == {result.batch_id}


def test_readers_take_the_database_batches_whether_published_or_still_staged(home: Home) -> None:
    """Killed between commit and publish, a batch's parts are still staged: readers find them there, a
    staged part of a batch that never committed is read by nobody, and the sweep settles both."""
    from flight_delay import features
    from flight_delay.landed import sweep_now

    s = home.settings
    result = ingest_frame(real_flights().iloc[:20], settings=s, sessions=home.sessions)
    assert result.batch_id is not None
    part = offline.part_path(s, FLIGHTS_TABLE, result.batch_id)
    part.replace(offline.staged_path(part))  # committed, not yet published
    never = offline.staged_path(offline.part_path(s, FLIGHTS_TABLE, 99))  # staged, never committed
    never.write_bytes(offline.staged_path(part).read_bytes())
    assert len(features.landed_flights(s, ["flight_id"])) == 20
    assert len(ingest.landed_flight_ids(s, home.sessions)) == 20
    assert offline.all_parts(s, FLIGHTS_TABLE) == []  # nothing published on disk

    assert sweep_now(s, home.sessions).counts() == {"published": 1, "discarded": 1}
    assert part.exists() and not never.exists() and not offline.staged_path(part).exists()
    assert sweep_now(s, home.sessions).counts() == {}  # settled
    again = ingest_frame(real_flights().iloc[:20], settings=s, sessions=home.sessions)
    assert again.status == "duplicate" and again.swept == {}


def test_replay_after_a_partial_file_fills_the_rest_of_the_day(home: Home) -> None:
    """A file covering part of a day must not hide that day's other flights from the replay."""
    clock = small_clock()
    by_dep_time = real_flights().iloc[:300]  # raw order is by actual departure, not schedule
    ingest_frame(by_dep_time, settings=home.settings, sessions=home.sessions, source="file")
    until = pd.Timestamp("2013-01-02T00:00:00Z")
    replay_until(home.settings, home.sessions, until, clock=clock)
    landed = offline.read_table(home.settings, FLIGHTS_TABLE)
    assert landed is not None and landed["flight_id"].is_unique
    assert set(landed["flight_id"]) == set(clock.flights_between(None, until.to_pydatetime())["flight_id"])


def test_flow_tasks_call_the_ingest_functions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The flow's task bodies, run without a Prefect server (`.fn`)."""
    import importlib.util

    from retrain.core.config import REPO_ROOT

    spec = importlib.util.spec_from_file_location("flows_ingest_under_test", REPO_ROOT / "flows" / "ingest.py")
    assert spec is not None and spec.loader is not None
    flows = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flows)
    monkeypatch.setenv("RETRAIN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RETRAIN_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        path = tmp_path / "b.csv"
        real_flights().iloc[:100].to_csv(path, index=False)
        result = flows.ingest_task.fn("flight_delay", str(path), None)
        assert (result["status"], result["accepted"]) == ("landed", 100)
        assert flows.ingest_task.fn("", str(path), None)["status"] == "duplicate"  # "": the default use case
        empty = tmp_path / "empty.csv"
        empty.write_text("year,month\n")
        with pytest.raises(flows.BatchRefused):
            flows.ingest_task.fn("flight_delay", str(empty), None)
        assert flows.retry_unless_refused(None, None, type("S", (), {"data": flows.BatchRefused("x")})()) is False
        assert flows.retry_unless_refused(None, None, type("S", (), {"data": OSError("x")})()) is True
    finally:
        get_settings.cache_clear()
