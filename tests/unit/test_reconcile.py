"""Cancelled retrain runs reach the alerts table once each (no Prefect server: runs are plain records)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from retrain import events
from retrain.config import Settings
from retrain.db import Alert
from retrain.reconcile import CANCELLED, CancelledRun, payload_from_parameters, record_cancelled
from retrain.registry import open_registry

NOW = datetime(2013, 3, 1, tzinfo=UTC)
MESSAGE = "Deployment concurrency limit reached."


def params(**over: Any) -> dict[str, Any]:
    """Parameters as the deployment trigger renders them (missing payload fields are '')."""
    base: dict[str, Any] = {"kind": "data_drift", "model_name": "flight_delay", "metric": "", "value": "",
                            "threshold": "", "window_from": "", "window_to": "", "dedupe_key": "",
                            "reason": "", "source": "event", "event_id": "e0"}
    return {**base, **over}


def run(i: int, **over: Any) -> CancelledRun:
    return CancelledRun(f"run-{i}", params(**over), MESSAGE, datetime(2026, 1, 1, 12, 0, i, tzinfo=UTC))


@pytest.fixture
def home(tmp_path: Path) -> tuple[Settings, Any]:
    settings = Settings(home=tmp_path)
    return settings, open_registry(settings)


def rows(sessions: Any) -> list[Alert]:
    with sessions() as s:
        return list(s.scalars(select(Alert).order_by(Alert.id)))


def test_each_cancelled_run_is_recorded_once_with_its_alert(home: tuple[Settings, Any]) -> None:
    settings, sessions = home
    runs = [run(1, metric="psi:distance", value=0.31, threshold="0.25", dedupe_key="k", source="monitor",
                window_from="2013-02-22T00:00:00Z"),
            run(2, kind="manual", reason="ops", dedupe_key=7)]
    first = record_cancelled(settings, sessions, runs, NOW)
    assert (first.seen, len(first.recorded), first.already, first.freed) == (2, 2, 0, [])
    a, b = rows(sessions)
    assert (a.flow_run_id, a.outcome, a.kind, a.metric, a.dedupe_key, a.source) == (
        "run-1", CANCELLED, "data_drift", "psi:distance", "k", "monitor")
    assert a.value == pytest.approx(0.31) and a.threshold == pytest.approx(0.25)
    assert a.window_from == datetime(2013, 2, 22, tzinfo=UTC) and a.received_at == NOW
    assert MESSAGE in (a.detail or "") and "2026-01-01T12:00:01" in (a.detail or "")
    assert (b.kind, b.dedupe_key, b.payload["reason"]) == ("manual", "7", "ops")

    again = record_cancelled(settings, sessions, [*runs, run(3, dedupe_key="k3")], NOW)
    assert (again.seen, again.already, len(again.recorded)) == (3, 2, 1)
    assert [r.flow_run_id for r in rows(sessions)] == ["run-1", "run-2", "run-3"]


def test_missing_dedupe_key_gets_the_ledger_bucket_key(home: tuple[Settings, Any]) -> None:
    settings, sessions = home
    record_cancelled(settings, sessions, [run(1)], NOW)
    [row] = rows(sessions)
    expected = events.AlertPayload(kind="data_drift", source="event").effective_dedupe_key("flight_delay", NOW,
                                                                                          settings)
    assert row.dedupe_key == expected and row.value is None and row.metric is None


def test_an_admitted_alert_whose_run_was_cancelled_frees_its_key(home: tuple[Settings, Any]) -> None:
    settings, sessions = home
    payload = events.AlertPayload(kind="data_drift", dedupe_key="k")
    admitted = events.admit(sessions, settings, payload, NOW, flow_run_id="run-1")
    assert admitted.run
    assert not events.admit(sessions, settings, payload, NOW, flow_run_id="run-x").run  # key taken

    result = record_cancelled(settings, sessions, [run(1, dedupe_key="k")], NOW)
    assert (result.freed, result.recorded, result.already) == ([admitted.alert_id], [], 1)
    by_id = {r.id: r for r in rows(sessions)}
    assert by_id[admitted.alert_id].outcome == CANCELLED
    assert "admitted, then flow run cancelled" in (by_id[admitted.alert_id].detail or "")
    assert events.admit(sessions, settings, payload, NOW, flow_run_id="run-2").run  # the key is free again
    # rows with other outcomes (the dedupe of run-x) are left alone, and nothing is freed twice
    assert record_cancelled(settings, sessions, [run(1)], NOW).freed == []


def test_unparseable_parameters_are_still_recorded_with_the_raw_kind(home: tuple[Settings, Any]) -> None:
    settings, sessions = home
    payload, model = payload_from_parameters(params(kind="drift_of_the_moon", dedupe_key="m"), "flight_delay")
    assert model == "flight_delay" and payload.kind == "drift_of_the_moon"
    assert payload.reason.startswith("unparseable parameters (kind:")
    record_cancelled(settings, sessions, [run(1, kind="drift_of_the_moon", dedupe_key="m")], NOW)
    [row] = rows(sessions)
    assert (row.kind, row.dedupe_key, row.outcome) == ("drift_of_the_moon", "m", CANCELLED)
    assert row.payload["reason"].startswith("unparseable parameters")


def test_no_runs_is_a_no_op(home: tuple[Settings, Any]) -> None:
    settings, sessions = home
    result = record_cancelled(settings, sessions, [], NOW)
    assert (result.seen, result.recorded, result.already) == (0, [], 0) and rows(sessions) == []


class FakeRuns:
    """The two Prefect client reads `covering_retrain` makes, over a fixed list of flow runs."""

    def __init__(self, runs: list[Any], created: datetime) -> None:
        self.runs, self.created = runs, created
        self.asked: list[Any] = []

    def read_flow_run(self, _run_id: Any) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(created=self.created)

    def read_flow_runs(self, **kw: Any) -> list[Any]:
        self.asked.append(kw)
        after = kw["flow_run_filter"].start_time.after_
        return [r for r in self.runs if r.start_time is not None and r.start_time >= after]


def flow_run(run_id: str, start: datetime | None) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(id=run_id, name=f"name-{run_id}", start_time=start)


def test_a_storm_straggler_is_covered_by_the_retrain_that_started_after_it(home: tuple[Settings, Any]) -> None:
    from retrain.reconcile import covering_retrain

    settings, sessions = home
    t0 = datetime(2026, 12, 1, 20, 0, 0, tzinfo=UTC)
    win, strag = "6f1c2c1e-0000-4000-8000-000000000001", "6f1c2c1e-0000-4000-8000-000000000002"
    winner = events.admit(sessions, settings, events.AlertPayload(kind="data_drift", dedupe_key="a"), NOW,
                          flow_run_id=win)
    assert winner.run
    runs = [flow_run(win, t0.replace(second=2)), flow_run(strag, t0.replace(second=30)),
            flow_run("cancelled", None)]
    # raised at t0 (before the winner started at t0+2s): covered, with the winner named
    detail = covering_retrain(sessions, strag, t0, client=FakeRuns(runs, t0))  # type: ignore[arg-type]
    assert detail is not None and detail.startswith(f"covered by the retrain of alert {winner.alert_id}")
    decision = events.admit(sessions, settings, events.AlertPayload(kind="data_drift", dedupe_key="b"), NOW,
                            flow_run_id=strag, covered_by=detail)
    assert (decision.run, decision.outcome, decision.detail) == (False, "deduplicated", detail)
    # raised after the winner started: not covered (its evidence is newer); no raised_at: the run's creation
    assert covering_retrain(sessions, strag, t0.replace(second=5),
                            client=FakeRuns(runs, t0)) is None  # type: ignore[arg-type]
    assert covering_retrain(sessions, strag, None,
                            client=FakeRuns(runs, t0.replace(second=1))) is not None  # type: ignore[arg-type]
    # a retrain that failed (key freed) answers nothing; the winner never covers itself
    events.finish_alert(sessions, winner.alert_id, outcome="failed", detail="boom")
    assert covering_retrain(sessions, strag, t0, client=FakeRuns(runs, t0)) is None  # type: ignore[arg-type]
    assert covering_retrain(sessions, win, t0, client=FakeRuns(runs, t0)) is None  # type: ignore[arg-type]
