"""Prediction log: batched writes, spill on database failure, replay without loss or duplicates."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from retrain.core.db import Prediction, make_engine, session_factory, upgrade
from retrain.serving.predlog import LogBatch, PredictionLog, SpillDir, clean_features

T0 = datetime(2013, 2, 10, 11, 0, tzinfo=UTC)


class Switchable:
    """A session factory that fails like an unreachable database while `down` is set."""

    def __init__(self, real: sessionmaker[Session]) -> None:
        self.real = real
        self.down = False

    def __call__(self) -> Session:
        if self.down:
            raise OperationalError("connect", {}, Exception("connection refused (test: database down)"))
        return self.real()


@pytest.fixture
def sessions(tmp_path: Path) -> Switchable:
    url = f"sqlite:///{tmp_path / 'retrain.db'}"
    upgrade(url)
    return Switchable(session_factory(make_engine(url)))


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
