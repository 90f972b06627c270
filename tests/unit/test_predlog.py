"""Prediction log: batched writes, spill on database failure, replay without loss or duplicates.

Runs on SQLite and on PostgreSQL (a scratch database per test; skipped when the server of
RETRAIN_TEST_PG_ADMIN does not answer, failed instead under RETRAIN_REQUIRE_SERVICES=1): poisoned
spill files are quarantined, the buffer is bounded and its overflow counted, and a spill file
replayed twice inserts its rows once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from sqlalchemy import select
from tests.support.outage import Switchable
from tests.support.pg import scratch_database

from retrain.core.config import Settings
from retrain.core.db import Prediction, make_engine, session_factory, upgrade
from retrain.serving.predlog import LogBatch, PredictionLog, SpillDir, clean_features

T0 = datetime(2013, 2, 10, 11, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Switchable]:
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'retrain.db'}"
        else:
            url = stack.enter_context(scratch_database("predlog"))
        upgrade(url)
        engine = make_engine(url)
        stack.callback(engine.dispose)
        yield Switchable(session_factory(engine))


def rows(request_id: str, n: int) -> list[dict[str, Any]]:
    return [{"request_id": request_id, "model_name": "flight_delay", "model_version": "v1", "predicted_at": T0,
             "entity_key": f"{request_id}-{i}", "event_time": T0 + timedelta(minutes=i),
             "attributes": {"carrier": "UA", "origin": "EWR", "dest": "IAH", "tailnum": ""},
             "features": clean_features(["a", "b"], [1.0, float("nan")]),
             "missing_features": ["b"], "score": 0.25 + i / 1000, "shadow_version": None, "shadow_score": None}
            for i in range(n)]


def logged(sessions: Switchable) -> list[Prediction]:
    with sessions.real() as s:
        return list(s.scalars(select(Prediction).order_by(Prediction.id)))


def make_log(sessions: Switchable, tmp_path: Path, **kw: Any) -> PredictionLog:
    return PredictionLog(sessions, tmp_path / "spill", retry_seconds=kw.pop("retry_seconds", 0.0), **kw)  # type: ignore[arg-type]


def test_flush_writes_rows_with_json_safe_features(sessions: Switchable, tmp_path: Path) -> None:
    plog = make_log(sessions, tmp_path)
    plog.submit(LogBatch(rows("r1", 3)))
    plog.submit(LogBatch(rows("r2", 2)))
    assert plog.pending == 5
    assert plog.flush_once() == 5
    got = logged(sessions)
    assert [r.entity_key for r in got] == ["r1-0", "r1-1", "r1-2", "r2-0", "r2-1"]
    assert got[0].features == {"a": 1.0, "b": None} and got[0].event_time == T0
    assert got[0].attributes == {"carrier": "UA", "origin": "EWR", "dest": "IAH", "tailnum": ""}
    assert plog.tally.n_written == 5 and plog.tally.n_spilled == 0


def test_database_down_spills_then_replays_everything_once(sessions: Switchable, tmp_path: Path) -> None:
    plog = make_log(sessions, tmp_path)
    plog.submit(LogBatch(rows("ok", 2)))
    plog.flush_once()
    sessions.down = True
    for i in range(5):
        plog.submit(LogBatch(rows(f"down{i}", 4)))
        plog.flush_once()
    assert len(SpillDir(tmp_path / "spill").sealed()) == 5
    assert plog.tally.n_spilled == 20 and plog.tally.n_replayed == 0
    sessions.down = False
    plog.submit(LogBatch(rows("back", 1)))
    plog.flush_once(replay_budget_s=30)
    ids = Counter(r.entity_key for r in logged(sessions))
    assert sum(ids.values()) == 2 + 20 + 1 and max(ids.values()) == 1
    assert plog.tally.n_replayed == 20 and not SpillDir(tmp_path / "spill").sealed()
    # timestamps survive the JSON round trip as aware UTC
    assert {r.predicted_at for r in logged(sessions)} == {T0}


def test_two_workers_replaying_one_spill_dir_insert_each_row_once(sessions: Switchable, tmp_path: Path) -> None:
    writer = make_log(sessions, tmp_path)
    sessions.down = True
    for i in range(40):
        writer.submit(LogBatch(rows(f"s{i}", 5)))
        writer.flush_once(replay=False)
    sessions.down = False
    logs = [make_log(sessions, tmp_path) for _ in range(3)]
    threads = [threading.Thread(target=lg.flush_once, kwargs={"replay_budget_s": 60}) for lg in logs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = Counter(r.entity_key for r in logged(sessions))
    assert len(ids) == 200 and max(ids.values()) == 1
    assert sum(lg.tally.n_replayed for lg in logs) == 200


def test_spill_file_of_the_flight_only_layout_still_replays(sessions: Switchable, tmp_path: Path) -> None:
    """A spill file written before migration 0003 (flight_id, sched_dep, carrier, ...) replays mapped."""
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    legacy = [{"request_id": "old", "flight_id": f"old-{i}", "model_name": "flight_delay", "model_version": "v1",
               "predicted_at": T0.isoformat(), "sched_dep": (T0 + timedelta(minutes=i)).isoformat(),
               "carrier": "B6", "origin": "JFK", "dest": "BOS", "tailnum": "N123",
               "features": {"a": 1.0, "b": None}, "missing_features": ["b"], "score": 0.5,
               "shadow_version": "v2", "shadow_score": 0.4} for i in range(3)]
    (spill_dir / "predictions-20130210T110000000000-1-abcdef01.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in legacy), encoding="utf-8")
    plog = make_log(sessions, tmp_path)
    plog.flush_once(replay_budget_s=30)
    got = logged(sessions)
    assert [r.entity_key for r in got] == ["old-0", "old-1", "old-2"]
    assert [r.event_time for r in got] == [T0 + timedelta(minutes=i) for i in range(3)]
    assert got[0].attributes == {"carrier": "B6", "origin": "JFK", "dest": "BOS", "tailnum": "N123"}
    assert got[0].predicted_at == T0 and got[0].shadow_version == "v2" and got[0].shadow_score == 0.4
    assert plog.tally.n_replayed == 3 and not SpillDir(spill_dir).sealed()


def test_claim_left_by_a_dead_process_is_released(sessions: Switchable, tmp_path: Path) -> None:
    spill = SpillDir(tmp_path / "spill")
    path = spill.write(rows("orphan", 3))
    path.rename(path.with_name(path.name + ".claimed-999999999"))  # no such pid
    assert spill.sealed() == []
    assert spill.release_orphans() == 1
    plog = make_log(sessions, tmp_path)
    plog.flush_once()
    assert len(logged(sessions)) == 3


def test_shutdown_awaits_the_final_flush(sessions: Switchable, tmp_path: Path) -> None:
    plog = make_log(sessions, tmp_path, flush_seconds=3600.0)  # only the shutdown flush can write

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(plog.run(stop))
        await asyncio.sleep(0.05)
        for i in range(10):
            plog.submit(LogBatch(rows(f"late{i}", 10)))
        stop.set()
        await task

    asyncio.run(scenario())
    assert len(logged(sessions)) == 100 and plog.pending == 0


def test_shutdown_with_database_down_spills_instead_of_losing(sessions: Switchable, tmp_path: Path) -> None:
    plog = make_log(sessions, tmp_path, flush_seconds=3600.0)
    sessions.down = True
    plog.submit(LogBatch(rows("x", 7)))
    plog.close()
    assert plog.tally.n_spilled == 7 and logged(sessions) == []
    sessions.down = False
    make_log(sessions, tmp_path).flush_once()
    assert len(logged(sessions)) == 7


def test_failing_enrich_hook_does_not_lose_rows(sessions: Switchable, tmp_path: Path) -> None:
    def broken(_batches: list[LogBatch]) -> None:
        raise RuntimeError("challenger exploded")

    plog = make_log(sessions, tmp_path, enrich=broken)
    plog.submit(LogBatch(rows("e", 3), np.zeros((3, 2))))
    plog.flush_once()
    assert [r.shadow_score for r in logged(sessions)] == [None, None, None]


def test_enrich_hook_fills_shadow_scores(sessions: Switchable, tmp_path: Path) -> None:
    def shadow(batches: list[LogBatch]) -> None:
        for b in batches:
            assert b.matrix is not None
            for row, x in zip(b.rows, b.matrix, strict=True):
                row["shadow_version"], row["shadow_score"] = "v2", float(x.sum())

    plog = make_log(sessions, tmp_path, enrich=shadow)
    plog.submit(LogBatch(rows("s", 2), np.array([[0.1, 0.2], [0.3, 0.4]])))
    plog.flush_once()
    got = logged(sessions)
    assert [r.shadow_version for r in got] == ["v2", "v2"]
    assert [r.shadow_score for r in got] == pytest.approx([0.3, 0.7])


# ---------------------------------------------------------------------- quarantine of poisoned spill files


def spill_file(spill_dir: Path, stamp: str, lines: list[str]) -> Path:
    spill_dir.mkdir(parents=True, exist_ok=True)
    path = spill_dir / f"predictions-{stamp}-1-abcdef01.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def encoded(rows_: list[dict[str, Any]]) -> list[str]:
    return [json.dumps({k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in r.items()}) for r in rows_]


def test_poisoned_spill_files_are_quarantined_and_the_next_files_still_land(
        sessions: Switchable, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spill_dir = tmp_path / "spill"
    bad_json = spill_file(spill_dir, "20130210T110000000001", [*encoded(rows("j", 1)), '{"request_id": "j", "sc'])
    rejected = rows("n", 2)
    rejected[1]["score"] = None  # NOT NULL: the database refuses the row (IntegrityError)
    bad_row = spill_file(spill_dir, "20130210T110000000002", encoded(rejected))
    not_object = spill_file(spill_dir, "20130210T110000000003", ["[1, 2, 3]"])
    spill_file(spill_dir, "20130210T110000000004", encoded(rows("good", 3)))
    plog = make_log(sessions, tmp_path, retry_seconds=60.0)  # a "database down" verdict would stop the replay

    with caplog.at_level(logging.ERROR, logger="retrain.serving.predlog"):
        plog.flush_once(replay_budget_s=30)

    assert [r.entity_key for r in logged(sessions)] == ["good-0", "good-1", "good-2"]
    assert plog.tally.n_quarantined == 3 and plog.tally.n_replayed == 3 and plog.tally.n_failures == 0
    spill = SpillDir(spill_dir)
    assert spill.sealed() == []
    assert [p.name for p in spill.quarantined()] == [bad_json.name, bad_row.name, not_object.name]
    reasons = {p.name: json.loads(p.with_name(p.name + ".reason.json").read_text()) for p in spill.quarantined()}
    assert reasons[bad_json.name]["reason"].startswith("unreadable: line 2:")
    assert reasons[bad_row.name]["reason"].startswith("rejected by the database:")
    assert reasons[bad_row.name]["rows"] == 2
    assert "not an object" in reasons[not_object.name]["reason"]
    # the quarantined file keeps its content (fix it, move it back, it replays)
    assert (spill.quarantine_dir / bad_row.name).read_text(encoding="utf-8").count("\n") == 2
    quarantine_lines = [r.getMessage() for r in caplog.records if "quarantined" in r.getMessage()]
    assert len(quarantine_lines) == 3 and all(r.levelno == logging.ERROR for r in caplog.records
                                              if "quarantined" in r.getMessage())

    # the database was never taken for down: new rows go straight in, nothing is diverted to spill
    plog.submit(LogBatch(rows("after", 2)))
    plog.flush_once()
    assert plog.tally.n_written == 2 and plog.tally.n_spilled == 0
    assert len(logged(sessions)) == 5


def test_fixed_quarantined_file_moved_back_replays(sessions: Switchable, tmp_path: Path) -> None:
    spill_dir = tmp_path / "spill"
    rejected = rows("fix", 2)
    rejected[0]["model_name"] = None
    path = spill_file(spill_dir, "20130210T110000000001", encoded(rejected))
    plog = make_log(sessions, tmp_path)
    plog.flush_once()
    assert plog.tally.n_quarantined == 1 and logged(sessions) == []

    quarantined = SpillDir(spill_dir).quarantined()[0]
    fixed = [json.loads(line) for line in quarantined.read_text(encoding="utf-8").splitlines()]
    fixed[0]["model_name"] = "flight_delay"
    path.write_text("".join(json.dumps(r) + "\n" for r in fixed), encoding="utf-8")
    quarantined.unlink()
    plog.flush_once()
    assert sorted(r.entity_key for r in logged(sessions)) == ["fix-0", "fix-1"]
    assert plog.tally.n_quarantined == 1 and plog.tally.n_replayed == 2


def test_database_down_is_not_a_data_error_files_wait(sessions: Switchable, tmp_path: Path) -> None:
    spill_dir = tmp_path / "spill"
    first = spill_file(spill_dir, "20130210T110000000001", encoded(rows("a", 2)))
    spill_file(spill_dir, "20130210T110000000002", encoded(rows("b", 2)))
    plog = make_log(sessions, tmp_path)
    sessions.down = True
    plog.flush_once()
    assert plog.tally.n_quarantined == 0 and plog.tally.n_failures == 1
    assert SpillDir(spill_dir).quarantined() == [] and SpillDir(spill_dir).sealed()[0] == first
    sessions.down = False
    plog.flush_once(replay_budget_s=30)
    assert sorted(r.entity_key for r in logged(sessions)) == ["a-0", "a-1", "b-0", "b-1"]


def test_rejected_request_on_the_direct_write_costs_only_its_own_rows(sessions: Switchable, tmp_path: Path) -> None:
    plog = make_log(sessions, tmp_path)
    bad = rows("bad", 2)
    bad[0]["score"] = None  # NOT NULL
    plog.submit(LogBatch(rows("ok1", 2)))
    plog.submit(LogBatch(bad))
    plog.submit(LogBatch(rows("ok2", 3)))
    plog.flush_once()
    assert sorted(r.entity_key for r in logged(sessions)) == ["ok1-0", "ok1-1", "ok2-0", "ok2-1", "ok2-2"]
    assert plog.tally.n_written == 5 and plog.tally.n_quarantined == 1 and plog.tally.n_failures == 0
    (quarantined,) = SpillDir(tmp_path / "spill").quarantined()
    assert [json.loads(line)["request_id"] for line in quarantined.read_text().splitlines()] == ["bad", "bad"]


# ---------------------------------------------------------------------- bounded buffer


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def test_buffer_overflow_is_spilled_off_the_request_path_and_nothing_is_lost(
        sessions: Switchable, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plog = make_log(sessions, tmp_path, max_buffer_rows=10)  # no flush runs: only the overflow writer
    with caplog.at_level(logging.WARNING, logger="retrain.serving.predlog"):
        for i in range(10):
            plog.submit(LogBatch(rows(f"o{i}", 4)))
            assert plog.pending <= 2 * 10
            assert wait_until(lambda: plog.pending <= 8)  # the overflow writer spilled it
        assert plog.tally.n_spilled == 40 - 8
    assert plog.tally.n_overflowed == 32 and plog.tally.n_dropped == 0
    assert plog.pending == 8  # the bound held: two requests buffered, the rest on disk
    assert SpillDir(tmp_path / "spill").sealed()
    assert any("buffer full" in r.getMessage() for r in caplog.records)

    plog.close()
    ids = Counter(r.entity_key for r in logged(sessions))
    assert sum(ids.values()) == 40 and max(ids.values()) == 1
    assert not SpillDir(tmp_path / "spill").sealed() and plog.pending == 0


def test_overflow_that_cannot_be_spilled_is_dropped_bounded_and_counted(
        sessions: Switchable, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spill_path = tmp_path / "spill"
    spill_path.write_text("not a directory")  # every spill write fails
    plog = make_log(sessions, tmp_path, max_buffer_rows=10)
    with caplog.at_level(logging.WARNING, logger="retrain.serving.predlog"):
        for i in range(30):
            plog.submit(LogBatch(rows(f"d{i}", 2)))
            assert plog.pending <= 20
        assert plog.tally.n_dropped == 60 - 10 - 10 and plog.tally.n_overflowed == 50
        assert plog.pending == 20
        plog.close()  # the database answers: what was kept is written
    assert len(logged(sessions)) == 20
    assert len(logged(sessions)) + plog.tally.n_dropped == 60  # every row written or counted as dropped
    drops = [r for r in caplog.records if "DROPPED" in r.getMessage()]
    assert drops and all(r.levelno == logging.ERROR for r in drops)
    assert sum(int(r.getMessage().split("DROPPED ")[1].split()[0]) for r in drops) == 40


def test_submit_never_waits_for_a_stuck_spill_disk(
        sessions: Switchable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    writing = threading.Event()
    real_write = SpillDir.write

    def stuck_write(self: SpillDir, rows_: list[dict[str, Any]]) -> Path:
        writing.set()
        assert release.wait(30)
        return real_write(self, rows_)

    monkeypatch.setattr(SpillDir, "write", stuck_write)
    plog = make_log(sessions, tmp_path, max_buffer_rows=4)
    plog.submit(LogBatch(rows("s0", 4)))  # fills the buffer
    plog.submit(LogBatch(rows("s1", 4)))  # to the overflow writer, which gets stuck in the write
    assert writing.wait(10)
    for i in range(2, 12):  # returns at once: the overflow is full (in flight), so these are dropped
        plog.submit(LogBatch(rows(f"s{i}", 4)))
    assert plog.tally.n_dropped == 40 and plog.pending == 8
    release.set()
    assert wait_until(lambda: plog.pending == 4)
    plog.close()
    assert len(logged(sessions)) == 8 and plog.tally.n_spilled == 4 and plog.tally.n_replayed == 4


def test_one_request_larger_than_the_bound_still_fits_an_empty_buffer(sessions: Switchable, tmp_path: Path) -> None:
    plog = make_log(sessions, tmp_path, max_buffer_rows=3)
    plog.submit(LogBatch(rows("big", 7)))
    assert plog.pending == 7 and plog.tally.n_overflowed == 0
    plog.flush_once()
    assert len(logged(sessions)) == 7 and plog.tally.n_dropped == 0


def test_buffer_bound_setting_is_validated() -> None:
    assert Settings().serve_log_buffer_rows == 100_000
    with pytest.raises(ValidationError):
        Settings(serve_log_buffer_rows=0)
    with pytest.raises(ValueError, match="max_buffer_rows"):
        PredictionLog(None, Path("unused"), max_buffer_rows=0)  # type: ignore[arg-type]


def test_serving_counters_expose_quarantine_overflow_and_drops_on_metrics() -> None:
    from prometheus_client import REGISTRY

    from retrain.serving.runtime import _counters

    names = ("retrain_predlog_spill_quarantined_total", "retrain_predlog_buffer_overflow_rows_total",
             "retrain_predlog_rows_dropped_total")
    counters = _counters()
    before = [REGISTRY.get_sample_value(n) or 0.0 for n in names]
    counters.quarantined(1)
    counters.overflowed(7)
    counters.dropped(3)
    after = [REGISTRY.get_sample_value(n) or 0.0 for n in names]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1.0, 7.0, 3.0]


# ---------------------------------------------------------------------- exactly-once replay


def test_crash_between_commit_and_unlink_replays_the_file_once(
        sessions: Switchable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plog = make_log(sessions, tmp_path)
    sessions.down = True
    plog.submit(LogBatch(rows("c", 4)))
    plog.flush_once()
    (spilled,) = SpillDir(tmp_path / "spill").sealed()
    keys = [json.loads(line)["row_key"] for line in spilled.read_text().splitlines()]
    assert len(set(keys)) == 4 and all(keys)
    sessions.down = False

    real_unlink = Path.unlink

    def crash(self: Path, missing_ok: bool = False) -> None:
        if ".claimed-" in self.name:
            raise SystemExit("killed after the replay's commit, before the file is deleted")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", crash)
    with pytest.raises(SystemExit):
        plog.flush_once()
    monkeypatch.undo()
    assert len(logged(sessions)) == 4  # committed, and the claimed file is still there

    restarted = make_log(sessions, tmp_path)
    asyncio.run(_start_and_stop(restarted))  # releases the claim of the "dead" run, replays the file again
    got = logged(sessions)
    assert sorted(r.entity_key for r in got) == ["c-0", "c-1", "c-2", "c-3"]
    assert sorted(r.row_key for r in got) == sorted(keys)
    assert restarted.tally.n_replayed == 0 and restarted.tally.n_duplicates == 4
    assert not SpillDir(tmp_path / "spill").sealed() and not list((tmp_path / "spill").glob("*.claimed-*"))


async def _start_and_stop(plog: PredictionLog) -> None:
    stop = asyncio.Event()
    stop.set()
    await plog.run(stop)


def test_replaying_a_copy_of_a_spill_file_adds_nothing(sessions: Switchable, tmp_path: Path) -> None:
    plog = make_log(sessions, tmp_path)
    sessions.down = True
    plog.submit(LogBatch(rows("k", 3)))
    plog.flush_once()
    (spilled,) = SpillDir(tmp_path / "spill").sealed()
    copy = tmp_path / "copy.jsonl"
    shutil.copy(spilled, copy)
    sessions.down = False
    plog.flush_once()
    shutil.copy(copy, spilled)  # the same file again
    plog.flush_once()
    assert len(logged(sessions)) == 3 and plog.tally.n_replayed == 3 and plog.tally.n_duplicates == 3


def test_spill_file_without_row_keys_replays_exactly_once(sessions: Switchable, tmp_path: Path) -> None:
    """Files written before migration 0005 have no row_key: a key derived from their content dedupes them."""
    spill_dir = tmp_path / "spill"
    same_entity = rows("old", 3)
    same_entity[2]["entity_key"] = same_entity[1]["entity_key"]  # the same entity twice in one request
    lines = [json.dumps({k: v for k, v in json.loads(line).items() if k != "row_key"})
             for line in encoded(same_entity)]
    path = spill_file(spill_dir, "20130210T110000000001", lines)
    plog = make_log(sessions, tmp_path)
    plog.flush_once()
    spill_file(spill_dir, "20130210T110000000001", lines)  # a crash before the delete: the file is back
    plog.flush_once()
    got = logged(sessions)
    assert [r.entity_key for r in got] == ["old-0", "old-1", "old-1"]
    assert len({r.row_key for r in got}) == 3 and all(r.row_key.startswith("spill-") for r in got)
    assert plog.tally.n_replayed == 3 and plog.tally.n_duplicates == 3 and not path.exists()


def test_rows_written_directly_get_unique_keys(sessions: Switchable, tmp_path: Path) -> None:
    plog = make_log(sessions, tmp_path)
    for i in range(3):
        plog.submit(LogBatch(rows(f"u{i}", 2)))
    plog.flush_once()
    keys = [r.row_key for r in logged(sessions)]
    assert len(set(keys)) == 6 and all(keys)
    other = make_log(sessions, tmp_path)  # another worker process: its own key prefix
    other.submit(LogBatch(rows("u9", 2)))
    other.flush_once()
    assert len({r.row_key for r in logged(sessions)}) == 8
