"""Cancelled, crashed and failed retrain runs reach the alerts table once each (no Prefect server: runs are
plain records)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from retrain.alerts import ledger
from retrain.alerts.reconcile import (
    CANCELLED,
    CRASHED,
    FAILED,
    CancelledRun,
    EndedRun,
    ended_retrain_runs,
    payload_from_parameters,
    reconcile_runs,
    record_cancelled,
    record_ended,
)
from retrain.core import events
from retrain.core.config import Settings
from retrain.core.db import Alert
from retrain.models import registry
from retrain.models.registry import open_registry

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
    settings = Settings(home=tmp_path, model_name="flight_delay")
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
    admitted = ledger.admit(sessions, settings, payload, NOW, flow_run_id="run-1")
    assert admitted.run
    assert not ledger.admit(sessions, settings, payload, NOW, flow_run_id="run-x").run  # key taken

    result = record_cancelled(settings, sessions, [run(1, dedupe_key="k")], NOW)
    assert (result.freed, result.recorded, result.already) == ([admitted.alert_id], [], 1)
    by_id = {r.id: r for r in rows(sessions)}
    assert by_id[admitted.alert_id].outcome == CANCELLED
    assert "admitted, then flow run cancelled" in (by_id[admitted.alert_id].detail or "")
    assert ledger.admit(sessions, settings, payload, NOW, flow_run_id="run-2").run  # the key is free again
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

    def __init__(self, runs: list[Any], created: datetime, model: str = "flight_delay") -> None:
        self.runs, self.created, self.model = runs, created, model
        self.asked: list[Any] = []

    def read_flow_run(self, _run_id: Any) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(created=self.created, parameters=params(model_name=self.model))

    def read_flow_runs(self, **kw: Any) -> list[Any]:
        self.asked.append(kw)
        after = kw["flow_run_filter"].start_time.after_
        return [r for r in self.runs if r.start_time is not None and r.start_time >= after]


def flow_run(run_id: str, start: datetime | None, state_type: str | None = None) -> Any:
    from types import SimpleNamespace

    from prefect.client.schemas.objects import StateType

    return SimpleNamespace(id=run_id, name=f"name-{run_id}", start_time=start,
                           state_type=StateType[state_type] if state_type else None)


def test_a_storm_straggler_is_covered_by_the_retrain_that_started_after_it(home: tuple[Settings, Any]) -> None:
    from retrain.alerts.reconcile import covering_retrain

    settings, sessions = home
    t0 = datetime(2026, 12, 1, 20, 0, 0, tzinfo=UTC)
    win, strag = "6f1c2c1e-0000-4000-8000-000000000001", "6f1c2c1e-0000-4000-8000-000000000002"
    winner = ledger.admit(sessions, settings, events.AlertPayload(kind="data_drift", dedupe_key="a"), NOW,
                          flow_run_id=win)
    assert winner.run
    runs = [flow_run(win, t0.replace(second=2)), flow_run(strag, t0.replace(second=30)),
            flow_run("cancelled", None)]
    # raised at t0 (before the winner started at t0+2s): covered, with the winner named
    detail = covering_retrain(sessions, strag, t0, client=FakeRuns(runs, t0))  # type: ignore[arg-type]
    assert detail is not None and detail.startswith(f"covered by the retrain of alert {winner.alert_id}")
    decision = ledger.admit(sessions, settings, events.AlertPayload(kind="data_drift", dedupe_key="b"), NOW,
                            flow_run_id=strag, covered_by=detail)
    assert (decision.run, decision.outcome, decision.detail) == (False, "deduplicated", detail)
    # raised after the winner started: not covered (its evidence is newer); no raised_at: the run's creation
    assert covering_retrain(sessions, strag, t0.replace(second=5),
                            client=FakeRuns(runs, t0)) is None  # type: ignore[arg-type]
    assert covering_retrain(sessions, strag, None,
                            client=FakeRuns(runs, t0.replace(second=1))) is not None  # type: ignore[arg-type]
    # a retrain that failed (key freed) answers nothing; the winner never covers itself
    ledger.finish_alert(sessions, winner.alert_id, outcome="failed", detail="boom")
    assert covering_retrain(sessions, strag, t0, client=FakeRuns(runs, t0)) is None  # type: ignore[arg-type]
    assert covering_retrain(sessions, win, t0, client=FakeRuns(runs, t0)) is None  # type: ignore[arg-type]


def test_covering_retrain_counts_only_retrains_of_the_same_model(home: tuple[Settings, Any]) -> None:
    from retrain.alerts.reconcile import covering_retrain

    settings, sessions = home
    t0 = datetime(2026, 12, 1, 20, 0, 0, tzinfo=UTC)
    other, strag = "6f1c2c1e-0000-4000-8000-00000000000a", "6f1c2c1e-0000-4000-8000-00000000000b"
    bikes = ledger.admit(sessions, settings, events.AlertPayload(kind="data_drift", dedupe_key="a"), NOW,
                         model_name="bike_demand", flow_run_id=other)
    assert bikes.run
    runs = [flow_run(other, t0.replace(second=2)), flow_run(strag, t0.replace(second=30))]
    # another use case's retrain started after this alert was raised: it answers nothing here
    assert covering_retrain(sessions, strag, t0, client=FakeRuns(runs, t0),  # type: ignore[arg-type]
                            model_name="flight_delay") is None
    # without model_name the alert's model comes from this run's parameters
    assert covering_retrain(sessions, strag, t0, client=FakeRuns(runs, t0, model="flight_delay")) is None  # type: ignore[arg-type]
    covered = covering_retrain(sessions, strag, t0, client=FakeRuns(runs, t0, model="bike_demand"))  # type: ignore[arg-type]
    assert covered is not None and f"alert {bikes.alert_id}" in covered
    assert covering_retrain(sessions, strag, t0, client=FakeRuns(runs, t0),  # type: ignore[arg-type]
                            model_name="bike_demand") == covered


@pytest.mark.parametrize("state", ["CRASHED", "FAILED", "CANCELLED"])
def test_a_retrain_whose_run_ended_without_a_result_covers_nothing(home: tuple[Settings, Any], state: str) -> None:
    from retrain.alerts.reconcile import covering_retrain

    settings, sessions = home
    t0 = datetime(2026, 12, 1, 20, 0, 0, tzinfo=UTC)
    dead, strag = "6f1c2c1e-0000-4000-8000-00000000000c", "6f1c2c1e-0000-4000-8000-00000000000d"
    # admitted, then the run died: its row still says "run" until a reconcile pass sees it
    assert ledger.admit(sessions, settings, events.AlertPayload(kind="data_drift", dedupe_key="a"), NOW,
                        flow_run_id=dead).run
    alive = [flow_run(dead, t0.replace(second=2), "RUNNING"), flow_run(strag, t0.replace(second=30))]
    assert covering_retrain(sessions, strag, t0, client=FakeRuns(alive, t0)) is not None  # type: ignore[arg-type]
    ended = [flow_run(dead, t0.replace(second=2), state), flow_run(strag, t0.replace(second=30))]
    assert covering_retrain(sessions, strag, t0, client=FakeRuns(ended, t0)) is None  # type: ignore[arg-type]


def ended(i: int, outcome: str, message: str = "worker process exited", **over: Any) -> EndedRun:
    return EndedRun(f"run-{i}", params(**over), message, datetime(2026, 1, 1, 12, 0, i, tzinfo=UTC), outcome)


def version(sessions: Any, name: str) -> str:
    from tests.support.models import fake_version_fields

    fields = {**fake_version_fields(1), "bento_model_tag": f"flight_delay:{name}"}
    return registry.register_version(sessions, version=name, **fields).version


@pytest.mark.parametrize("outcome", [CRASHED, FAILED])
def test_a_crashed_or_failed_run_frees_its_key_and_takes_back_its_challenger(home: tuple[Settings, Any],
                                                                             outcome: str) -> None:
    settings, sessions = home
    payload = events.AlertPayload(kind="data_drift", dedupe_key="k")
    admitted = ledger.admit(sessions, settings, payload, NOW, flow_run_id="run-1")
    trained = version(sessions, "trained")
    registry.set_challenger(sessions, trained, ledger.shadow_reason(admitted.alert_id), "flow:retrain")
    # the run died: the next alert with the same key is deduplicated against it ...
    blocked = ledger.admit(sessions, settings, payload, NOW, flow_run_id="run-2")
    assert (blocked.run, blocked.outcome) == (False, "deduplicated")

    result = record_ended(settings, sessions, [ended(1, outcome, dedupe_key="k")], NOW)
    assert (result.freed, result.recorded, result.already, result.cleared) == ([admitted.alert_id], [], 1, [trained])
    row = {r.id: r for r in rows(sessions)}[admitted.alert_id]
    assert row.outcome == outcome
    assert (row.detail or "").startswith(f"admitted, then flow run {outcome} at 2026-01-01T12:00:01")
    assert "worker process exited" in (row.detail or "")
    assert registry.get_alias(sessions, registry.CHALLENGER, "flight_delay") is None
    assert registry.get_version(sessions, trained).status == "candidate"
    # ... until the reconcile: then the next alert runs, and a second pass changes nothing
    assert ledger.admit(sessions, settings, payload, NOW, flow_run_id="run-3").run
    again = record_ended(settings, sessions, [ended(1, outcome, dedupe_key="k")], NOW)
    assert (again.freed, again.recorded, again.already, again.cleared) == ([], [], 1, [])


def test_a_challenger_set_by_someone_else_is_left_alone(home: tuple[Settings, Any]) -> None:
    settings, sessions = home
    admitted = ledger.admit(sessions, settings, events.AlertPayload(kind="data_drift", dedupe_key="k"), NOW,
                            flow_run_id="run-1")
    ours, theirs = version(sessions, "ours"), version(sessions, "theirs")
    registry.set_challenger(sessions, ours, ledger.shadow_reason(admitted.alert_id), "flow:retrain")
    registry.set_challenger(sessions, theirs, "operator's shadow test", "ops")
    result = record_ended(settings, sessions, [ended(1, CRASHED, dedupe_key="k")], NOW)
    assert result.freed == [admitted.alert_id] and result.cleared == []
    current = registry.get_alias(sessions, registry.CHALLENGER, "flight_delay")
    assert current is not None and current.version == theirs


def test_a_run_that_crashed_after_its_retrain_reported_back_keeps_its_answer(home: tuple[Settings, Any]) -> None:
    settings, sessions = home
    payload = events.AlertPayload(kind="data_drift", dedupe_key="k")
    admitted = ledger.admit(sessions, settings, payload, NOW, flow_run_id="run-1")
    ledger.finish_alert(sessions, admitted.alert_id, detail="trained v1 on [...), evaluation 1: reject")
    result = record_ended(settings, sessions, [ended(1, CRASHED, dedupe_key="k")], NOW)
    assert (result.freed, result.recorded, result.already) == ([], [], 1)
    [row] = rows(sessions)
    assert row.outcome == "run" and row.detail == "trained v1 on [...), evaluation 1: reject"
    assert ledger.admit(sessions, settings, payload, NOW, flow_run_id="run-2").outcome == "deduplicated"


def test_crashed_and_failed_runs_the_ledger_never_saw_are_recorded(home: tuple[Settings, Any]) -> None:
    settings, sessions = home
    result = record_ended(settings, sessions, [ended(1, CRASHED, dedupe_key="a"),
                                               ended(2, FAILED, "ValidationError: kind", dedupe_key="b")], NOW)
    assert len(result.recorded) == 2 and result.freed == []
    a, b = rows(sessions)
    assert (a.flow_run_id, a.outcome, a.dedupe_key) == ("run-1", CRASHED, "a")
    assert (b.flow_run_id, b.outcome, b.dedupe_key) == ("run-2", FAILED, "b")
    assert (a.detail or "").startswith("flow run crashed at") and "ValidationError: kind" in (b.detail or "")
    for row in (a, b):  # neither holds its key
        assert ledger.admit(sessions, settings, events.AlertPayload(kind="data_drift", dedupe_key=row.dedupe_key),
                            NOW).run
    with pytest.raises(ValueError, match="outcome: 'completed'"):
        EndedRun("run-9", {}, outcome="completed")


class FakeEnded:
    """`read_flow_runs` over flow runs in end states, filtered by state type as the Prefect server does."""

    def __init__(self, runs: list[Any]) -> None:
        self.runs = runs
        self.asked: list[Any] = []

    def read_flow_runs(self, **kw: Any) -> list[Any]:
        self.asked.append(kw)
        wanted = set(kw["flow_run_filter"].state.type.any_)
        return [r for r in self.runs if r.state_type in wanted]


def prefect_run(i: int, state: str, **over: Any) -> Any:
    from types import SimpleNamespace

    from prefect.client.schemas.objects import StateType

    when = datetime(2026, 1, 1, 12, 0, i, tzinfo=UTC)
    return SimpleNamespace(id=f"run-{i}", parameters=params(**over), state_type=StateType[state],
                           state=SimpleNamespace(message=f"{state.lower()} message", timestamp=when))


def test_reconcile_runs_reads_cancelled_crashed_and_failed_runs(home: tuple[Settings, Any]) -> None:
    settings, sessions = home
    client = FakeEnded([prefect_run(1, "CANCELLED", dedupe_key="a"), prefect_run(2, "CRASHED", dedupe_key="b"),
                        prefect_run(3, "FAILED", dedupe_key="c"), prefect_run(4, "COMPLETED", dedupe_key="d")])
    result = reconcile_runs(settings, sessions, NOW, client=client)  # type: ignore[arg-type]
    assert (result.seen, len(result.recorded)) == (3, 3)
    assert [(r.flow_run_id, r.outcome) for r in rows(sessions)] == [
        ("run-1", CANCELLED), ("run-2", CRASHED), ("run-3", FAILED)]
    assert rows(sessions)[1].detail == "flow run crashed at 2026-01-01T12:00:02+00:00: crashed message"
    assert reconcile_runs(settings, sessions, NOW, client=client).already == 3  # type: ignore[arg-type]
    # the cancelled-only pass (and its listing) still reads just the cancelled runs
    from retrain.alerts.reconcile import cancelled_retrain_runs, reconcile_cancelled

    assert [r.flow_run_id for r in cancelled_retrain_runs(client)] == ["run-1"]  # type: ignore[arg-type]
    assert reconcile_cancelled(settings, sessions, NOW, client=client).seen == 1  # type: ignore[arg-type]
    assert [r.outcome for r in ended_retrain_runs(client, outcomes=(CRASHED,))] == [CRASHED]  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outcomes"):
        ended_retrain_runs(client, outcomes=("completed",))  # type: ignore[arg-type]
