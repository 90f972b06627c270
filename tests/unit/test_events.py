"""Alert payloads, Alertmanager mapping, event emitting, and the alert ledger (dedupe, cooldown, storms)."""

from __future__ import annotations

import json
import multiprocessing
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import select
from tests.support.pg import scratch_database

from retrain.alerts.ledger import (
    ADMITTED_DETAIL,
    TERMINAL_OUTCOMES,
    LedgerDecision,
    admit,
    blocked_by,
    finish_alert,
    record_alert,
    record_if_blocked,
)
from retrain.core import db
from retrain.core.config import Settings
from retrain.core.events import (
    EVENT_PROMOTED,
    AlertPayload,
    alert_event_name,
    build_event,
    emit,
    from_alertmanager,
    model_from_resource,
    model_resource,
    post_events_http,
)

NOW = datetime(2013, 6, 1, 12, 0, tzinfo=UTC)


# ---------------------------------------------------------------------------------------- payloads


def test_payload_with_only_a_kind_parses_with_defaults() -> None:
    p = AlertPayload.model_validate({"kind": "data_drift"})
    assert (p.metric, p.value, p.threshold, p.window_from, p.dedupe_key, p.reason, p.source, p.status) == (
        None, None, None, None, None, "", "external", "firing")
    assert p.event_payload() == {"kind": "data_drift", "reason": "", "source": "external", "status": "firing"}


def test_payload_from_a_partial_external_event() -> None:
    # kind from the event name, unknown keys ignored, blanks read as missing, naive times read as UTC
    p = AlertPayload.from_event("retrain.alert.performance_decay",
                                {"value": "0.61", "threshold": "", "dedupe_key": " ", "window_to": "2013-06-01T10:00",
                                 "team": "ops"})
    assert p.kind == "performance_decay" and p.value == 0.61 and p.threshold is None and p.dedupe_key is None
    assert p.window_to == datetime(2013, 6, 1, 10, 0, tzinfo=UTC)
    assert AlertPayload.model_validate({"kind": "retrain.alert.manual"}).kind == "manual"


def test_payload_refuses_an_unknown_kind_naming_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        AlertPayload.model_validate({"kind": "latency"})
    assert err.value.errors()[0]["loc"] == ("kind",)
    with pytest.raises(ValidationError):
        AlertPayload.from_event("something.else", {})


def test_event_names_and_resource() -> None:
    assert alert_event_name("data_drift") == "retrain.alert.data_drift"
    with pytest.raises(ValueError, match="kind: 'drift'"):
        alert_event_name("drift")
    resource = model_resource("flight_delay")
    assert resource["prefect.resource.id"] == "retrain.model.flight_delay"
    assert model_from_resource(resource) == "flight_delay"
    assert model_from_resource({"prefect.resource.id": "prefect.flow-run.x"}) is None


def test_built_events_are_accepted_by_the_prefect_server_schema() -> None:
    from prefect.server.events.schemas.events import Event

    payload = AlertPayload(kind="data_drift", metric="psi:temp", value=0.4, threshold=0.25,
                           window_from=NOW - timedelta(days=7), window_to=NOW, dedupe_key="k")
    body = build_event(alert_event_name("data_drift"), model_resource("flight_delay"), payload)
    event = Event.model_validate(json.loads(json.dumps(body)))
    assert event.resource.id == "retrain.model.flight_delay"
    assert event.payload["dedupe_key"] == "k" and "reason" in event.payload


def test_post_events_http_posts_a_json_list_to_the_events_route() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    client = httpx.Client(transport=httpx.MockTransport(handler))
    status = post_events_http("http://prefect.test/api/", [
        {"event": "retrain.alert.manual", "resource": model_resource("m"), "payload": {"kind": "manual"}}],
        client=client)
    assert status == 204
    assert str(seen[0].url) == "http://prefect.test/api/events"
    body = json.loads(seen[0].content)
    assert isinstance(body, list) and body[0]["event"] == "retrain.alert.manual"
    assert uuid.UUID(body[0]["id"]) and datetime.fromisoformat(body[0]["occurred"]).tzinfo is not None

    refusing = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(422, json={"detail": "bad"})))
    with pytest.raises(httpx.HTTPStatusError):
        post_events_http("http://prefect.test/api", [build_event("x", model_resource("m"))], client=refusing)


def test_emit_refuses_without_an_api_url() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert emit(EVENT_PROMOTED, model_resource("m"), {"version": "v2"}) is False


def test_emit_sends_through_prefect_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prefect's events worker is replaced by a recorder (a real worker would start an ephemeral API
    # for run-context lookups, ~15 s); the e2e tests deliver to a real server.
    import prefect.events
    from prefect.events import Event
    from prefect.settings import PREFECT_API_URL, temporary_settings

    sent: list[Event] = []

    def record(event: str, resource: dict[str, str], payload: dict[str, Any] | None = None,
               related: Any = None, **_: Any) -> Event:
        sent.append(Event(event=event, resource=resource, payload=payload or {}, related=related or []))
        return sent[-1]

    monkeypatch.setattr(prefect.events, "emit_event", record)
    payload = AlertPayload(kind="manual", reason="operator asked", dedupe_key="k1")
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert emit(alert_event_name("manual"), model_resource("m"), payload) is True
    assert [(e.event, e.resource.id, e.payload["dedupe_key"]) for e in sent] == [
        ("retrain.alert.manual", "retrain.model.m", "k1")]
    assert "value" not in sent[0].payload  # None fields are left out so trigger defaults apply


# ------------------------------------------------------------------------------------ alertmanager

ALERTMANAGER_BODY: dict[str, Any] = {
    "version": "4",
    "groupKey": "{}:{alertname=\"FlightDelayDrift\"}",
    "status": "firing",
    "receiver": "retrain",
    "groupLabels": {"alertname": "FlightDelayDrift"},
    "commonLabels": {"alertname": "FlightDelayDrift", "model": "flight_delay"},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager:9093",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "FlightDelayDrift", "retrain_kind": "data_drift", "metric": "psi:temp",
                       "model": "flight_delay"},
            "annotations": {"summary": "temperature drifted", "value": "0.41", "threshold": "0.25"},
            "startsAt": "2013-06-01T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus/graph",
            "fingerprint": "abc123",
        },
        {
            "status": "resolved",
            "labels": {"alertname": "FlightDelayAuc", "kind": "performance_decay"},
            "annotations": {"description": "AUC recovered"},
            "startsAt": "2013-05-30T10:00:00Z",
            "endsAt": "2013-05-31T10:00:00Z",
            "fingerprint": "def456",
        },
    ],
}


def test_alertmanager_webhook_maps_to_payloads() -> None:
    firing, resolved = from_alertmanager(ALERTMANAGER_BODY)
    assert firing.kind == "data_drift" and firing.metric == "psi:temp" and firing.model == "flight_delay"
    assert (firing.value, firing.threshold, firing.reason, firing.source) == (
        0.41, 0.25, "temperature drifted", "alertmanager")
    assert firing.window_from == datetime(2013, 6, 1, 10, tzinfo=UTC) and firing.window_to is None
    assert firing.dedupe_key == "alertmanager:abc123:2013-06-01T10:00:00Z"
    assert firing.status == "firing"
    assert resolved.kind == "performance_decay" and resolved.status == "resolved"
    assert resolved.metric == "FlightDelayAuc" and resolved.reason == "AUC recovered"
    assert resolved.model == "flight_delay"  # from commonLabels
    assert resolved.window_to == datetime(2013, 5, 31, 10, tzinfo=UTC)


def test_alertmanager_bad_input_names_the_problem() -> None:
    with pytest.raises(ValueError, match="alerts: an Alertmanager webhook must carry a list"):
        from_alertmanager({"status": "firing"})
    body = json.loads(json.dumps(ALERTMANAGER_BODY))
    body["alerts"][1]["labels"]["kind"] = "latency"
    with pytest.raises(ValueError, match=r"alerts\[1\]\.labels\.retrain_kind: 'latency'"):
        from_alertmanager(body)
    no_kind = {"alerts": [{"labels": {"alertname": "Retrain"}, "startsAt": "2013-06-01T10:00:00Z"}]}
    assert from_alertmanager(no_kind)[0].kind == "manual"


# ------------------------------------------------------------------------------------------ ledger


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[tuple[Settings, db.sessionmaker[db.Session]]]:
    settings = Settings(home=tmp_path, retrain_cooldown_hours=24, alert_default_dedupe_minutes=10)
    db.upgrade(settings.db_url)
    engine = db.make_engine(settings.db_url)
    yield settings, db.session_factory(engine)
    engine.dispose()


def outcomes(sessions: db.sessionmaker[db.Session]) -> list[tuple[str, str]]:
    with sessions() as s:
        return [(a.dedupe_key, a.outcome) for a in s.scalars(select(db.Alert).order_by(db.Alert.id))]


def drift(key: str | None = "k1", **kw: Any) -> AlertPayload:
    return AlertPayload(kind="data_drift", metric="psi:x", value=0.5, threshold=0.25, dedupe_key=key, **kw)


def test_one_retrain_per_dedupe_key(ledger: tuple[Settings, db.sessionmaker[db.Session]]) -> None:
    settings, sessions = ledger
    first = admit(sessions, settings, drift(), NOW, flow_run_id="fr-1")
    again = admit(sessions, settings, drift(), NOW + timedelta(hours=1), flow_run_id="fr-2")
    other = admit(sessions, settings, drift("k2"), NOW)
    assert (first.run, first.outcome) == (True, "run")
    assert (again.run, again.outcome) == (False, "deduplicated")
    assert f"alert {first.alert_id}" in again.detail and "fr-1" in again.detail
    assert other.run
    assert outcomes(sessions) == [("k1", "run"), ("k1", "deduplicated"), ("k2", "run")]
    with sessions() as s:
        row = s.get(db.Alert, again.alert_id)
        assert row is not None and row.flow_run_id == "fr-2" and row.model_name == settings.model_name
        assert row.payload["dedupe_key"] == "k1" and row.value == 0.5


def test_cooldown_after_a_promotion(ledger: tuple[Settings, db.sessionmaker[db.Session]]) -> None:
    settings, sessions = ledger
    with db.transaction(sessions) as s:
        s.add(db.Promotion(model_name=settings.model_name, alias="champion", action="promote", reason="better",
                           actor="evaluator", created_at=NOW - timedelta(hours=2)))
        s.add(db.Promotion(model_name=settings.model_name, alias="challenger", action="set", reason="trained",
                           actor="train", created_at=NOW - timedelta(hours=1)))
    skipped = admit(sessions, settings, drift("k1"), NOW)
    assert (skipped.run, skipped.outcome) == (False, "cooldown")
    assert "retraining allowed from 2013-06-02T10:00:00+00:00" in skipped.detail
    later = admit(sessions, settings, drift("k1"), NOW + timedelta(hours=23))  # 25 h after the promotion
    assert later.outcome == "run"
    other_model = admit(sessions, settings, drift("k9", model="other_model"), NOW)
    assert other_model.outcome == "run"  # cooldown is per model


def test_cooldown_names_mixed_clocks(ledger: tuple[Settings, db.sessionmaker[db.Session]]) -> None:
    settings, sessions = ledger
    with db.transaction(sessions) as s:  # stamped by wall time, while alerts run on a 2013 replay clock
        s.add(db.Promotion(model_name=settings.model_name, alias="champion", action="promote", reason="x",
                           actor="evaluator", created_at=NOW + timedelta(days=400)))
    decision = admit(sessions, settings, drift("k1"), NOW)
    assert decision.outcome == "cooldown" and "different clocks" in decision.detail


def test_long_keys_and_metrics_fit_their_columns(ledger: tuple[Settings, db.sessionmaker[db.Session]]) -> None:
    settings, sessions = ledger
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    first = admit(sessions, settings, AlertPayload(kind="manual", dedupe_key=a, metric="m" * 500), NOW)
    second = admit(sessions, settings, AlertPayload(kind="manual", dedupe_key=b), NOW)
    again = admit(sessions, settings, AlertPayload(kind="manual", dedupe_key=a), NOW)
    assert [first.outcome, second.outcome, again.outcome] == ["run", "run", "deduplicated"]
    assert len(first.dedupe_key) == 256 and first.dedupe_key != second.dedupe_key


def test_resolved_alerts_are_recorded_but_never_run(ledger: tuple[Settings, db.sessionmaker[db.Session]]) -> None:
    settings, sessions = ledger
    decision = admit(sessions, settings, drift("k1", status="resolved"), NOW)
    assert (decision.run, decision.outcome) == (False, "resolved")
    assert admit(sessions, settings, drift("k1"), NOW).outcome == "run"


def test_alerts_without_key_dedupe_within_a_time_bucket(ledger: tuple[Settings, db.sessionmaker[db.Session]]) -> None:
    settings, sessions = ledger
    manual = AlertPayload(kind="manual", reason="please")
    a = admit(sessions, settings, manual, NOW)
    b = admit(sessions, settings, manual, NOW + timedelta(minutes=3))
    c = admit(sessions, settings, manual, NOW + timedelta(minutes=11))
    assert [a.outcome, b.outcome, c.outcome] == ["run", "deduplicated", "run"]
    assert a.dedupe_key == b.dedupe_key != c.dedupe_key


def test_a_failed_run_frees_its_key(ledger: tuple[Settings, db.sessionmaker[db.Session]]) -> None:
    settings, sessions = ledger
    first = admit(sessions, settings, drift(), NOW)
    finish_alert(sessions, first.alert_id, outcome="failed", detail="training crashed", flow_run_id="fr-1")
    retry = admit(sessions, settings, drift(), NOW + timedelta(minutes=5))
    assert retry.outcome == "run"
    assert outcomes(sessions) == [("k1", "failed"), ("k1", "run")]
    with pytest.raises(LookupError, match="alert_id: no alert 999"):
        finish_alert(sessions, 999, outcome="failed")


def test_record_alert_stores_what_was_received(ledger: tuple[Settings, db.sessionmaker[db.Session]]) -> None:
    settings, sessions = ledger
    row = record_alert(sessions, from_alertmanager(ALERTMANAGER_BODY)[0], model_name="flight_delay",
                       received_at=NOW)
    with sessions() as s:
        stored = s.get(db.Alert, row.id)
    assert stored is not None and stored.outcome == "received" and stored.source == "alertmanager"
    assert stored.received_at == NOW and stored.payload["value"] == 0.41


def storm(settings: Settings, url: str, n: int = 20) -> list[LedgerDecision]:
    """n threads, each with its own engine (own connections), admit the same key at the same moment."""
    barrier = threading.Barrier(n)
    decisions: list[LedgerDecision] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        engine = db.make_engine(url)
        try:
            sessions = db.session_factory(engine)
            barrier.wait()
            d = admit(sessions, settings, drift("storm"), NOW + timedelta(milliseconds=50 * i),
                      flow_run_id=f"fr-{i}")
            with lock:
                decisions.append(d)
        except BaseException as exc:  # surfaced below
            with lock:
                errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return decisions


def assert_exactly_one_run(decisions: list[LedgerDecision], sessions: db.sessionmaker[db.Session]) -> None:
    assert len(decisions) == 20
    assert Counter(d.outcome for d in decisions) == {"run": 1, "deduplicated": 19}
    assert Counter(o for _, o in outcomes(sessions)) == {"run": 1, "deduplicated": 19}


def test_storm_of_20_alerts_on_sqlite_threads(ledger: tuple[Settings, db.sessionmaker[db.Session]]) -> None:
    settings, sessions = ledger
    assert_exactly_one_run(storm(settings, settings.db_url), sessions)


def _process_admit(url: str, home: str, i: int, start: float, queue: Any) -> None:
    import time

    settings = Settings(home=Path(home))
    engine = db.make_engine(url)
    time.sleep(max(0.0, start - time.time()))  # all processes fire at the same wall-clock instant
    d = admit(db.session_factory(engine), settings, drift("storm"), NOW, flow_run_id=f"proc-{i}")
    queue.put(d.outcome)
    engine.dispose()


def test_storm_of_20_alerts_from_concurrent_processes_on_sqlite(
        ledger: tuple[Settings, db.sessionmaker[db.Session]]) -> None:
    import time

    settings, sessions = ledger
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    start = time.time() + 1.0
    procs = [ctx.Process(target=_process_admit, args=(settings.db_url, str(settings.home), i, start, queue))
             for i in range(20)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * 20
    got = Counter(queue.get(timeout=5) for _ in procs)
    assert got == {"run": 1, "deduplicated": 19}
    assert Counter(o for _, o in outcomes(sessions)) == {"run": 1, "deduplicated": 19}


@pytest.mark.postgres
def test_storm_of_20_alerts_on_postgres(tmp_path: Path) -> None:
    with scratch_database("retrain_ledger") as url:
        engine = None
        try:
            db.upgrade(url)
            settings = Settings(home=tmp_path, database_url=url)
            engine = db.make_engine(url)
            sessions = db.session_factory(engine)
            assert_exactly_one_run(storm(settings, url), sessions)
            # the partial unique index is what guarantees it: a second "run" row is refused outright
            with pytest.raises(Exception, match="ux_alerts_admitted"):
                record_alert(sessions, drift("storm"), model_name=settings.model_name, outcome="run")
        finally:
            if engine is not None:
                engine.dispose()


# ------------------------------------------------------------------- cooldown after rollbacks, atomicity


def champion_move(sessions: db.sessionmaker[db.Session], model: str, action: str, at: datetime) -> None:
    with db.transaction(sessions) as s:
        s.add(db.Promotion(model_name=model, alias="champion", action=action, reason=action, actor="ops",
                           created_at=at))


def test_a_rollback_starts_the_cooldown_of_its_model(ledger: tuple[Settings, db.sessionmaker[db.Session]]) -> None:
    settings, sessions = ledger
    champion_move(sessions, "flight_delay", "promote", NOW - timedelta(days=5))
    champion_move(sessions, "flight_delay", "rollback", NOW - timedelta(hours=2))
    champion_move(sessions, "flight_delay", "clear", NOW - timedelta(hours=1))  # challenger moves do not count
    skipped = admit(sessions, settings, drift("k1"), NOW, model_name="flight_delay")
    assert (skipped.run, skipped.outcome) == (False, "cooldown")
    assert skipped.detail.startswith(f"cooldown: last rollback at {(NOW - timedelta(hours=2)).isoformat()}")
    assert "retraining allowed from 2013-06-02T10:00:00+00:00" in skipped.detail
    assert blocked_by(sessions, settings, drift("k2"), NOW, model_name="flight_delay") is not None
    assert admit(sessions, settings, drift("k1"), NOW, model_name="bike_demand").run  # another use case
    assert admit(sessions, settings, drift("k1"), NOW + timedelta(hours=22), model_name="flight_delay").run


def test_a_registry_rollback_starts_the_cooldown(ledger: tuple[Settings, db.sessionmaker[db.Session]],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.models import fake_version_fields

    from retrain.models import registry

    settings, sessions = ledger
    clock = {"now": NOW - timedelta(days=10)}
    monkeypatch.setattr("retrain.core.clock.now", lambda _s: clock["now"])
    v1, v2 = (registry.register_version(sessions, **fake_version_fields(i)).version for i in (1, 2))
    registry.promote(sessions, v1, "first", "ops", model_name="flight_delay")
    registry.promote(sessions, v2, "second", "ops", model_name="flight_delay")
    assert admit(sessions, settings, drift("before"), NOW, model_name="flight_delay").run
    clock["now"] = NOW + timedelta(hours=1)
    registry.rollback(sessions, "v2 misbehaves", "ops", "flight_delay")
    after = admit(sessions, settings, drift("after"), NOW + timedelta(hours=3), model_name="flight_delay")
    assert after.outcome == "cooldown" and "last rollback" in after.detail


@pytest.mark.parametrize("outcome", ["failed", "crashed", "cancelled"])
def test_an_alert_whose_run_ended_without_a_result_does_not_dedupe(
        ledger: tuple[Settings, db.sessionmaker[db.Session]], outcome: str) -> None:
    settings, sessions = ledger
    first = admit(sessions, settings, drift(), NOW, flow_run_id="fr-1")
    assert blocked_by(sessions, settings, drift(), NOW)[0] == "deduplicated"  # type: ignore[index]
    finish_alert(sessions, first.alert_id, outcome=outcome, detail=f"flow run {outcome}")
    assert blocked_by(sessions, settings, drift(), NOW) is None
    assert admit(sessions, settings, drift(), NOW + timedelta(minutes=1), flow_run_id="fr-2").run
    assert outcome in TERMINAL_OUTCOMES and first.detail == ADMITTED_DETAIL


def test_record_if_blocked_records_only_a_skip(ledger: tuple[Settings, db.sessionmaker[db.Session]]) -> None:
    settings, sessions = ledger
    assert record_if_blocked(sessions, settings, drift(), NOW) is None
    assert outcomes(sessions) == []
    admit(sessions, settings, drift(), NOW)
    row = record_if_blocked(sessions, settings, drift(), NOW, note=" (seen by the monitor)")
    assert row is not None and row.outcome == "deduplicated" and (row.detail or "").endswith("(seen by the monitor)")
    assert outcomes(sessions) == [("k1", "run"), ("k1", "deduplicated")]


def promotion_during_admit(url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> LedgerDecision:
    """A promotion's transaction is open (champion moved, not committed) when an alert is admitted.

    The ledger must not decide on what it read before the promotion commits: it waits for the model's
    lock, then sees the promotion, so the alert is "cooldown" rather than a retrain right after it.
    """
    from tests.support.models import fake_version_fields

    from retrain.models import registry

    clock = {"now": NOW - timedelta(days=10)}
    monkeypatch.setattr("retrain.core.clock.now", lambda _s: clock["now"])
    engine = db.make_engine(url)
    sessions = db.session_factory(engine)
    try:
        v1, v2 = (registry.register_version(sessions, **fake_version_fields(i)).version for i in (1, 2))
        registry.promote(sessions, v1, "first", "ops", model_name="flight_delay")  # the champion row exists
        clock["now"] = NOW
        moved, decided = threading.Event(), threading.Event()
        result: list[LedgerDecision] = []

        def alert() -> None:
            other = db.make_engine(url)
            try:
                moved.wait(10)
                result.append(admit(db.session_factory(other), settings, drift("race"), NOW + timedelta(minutes=1),
                                    model_name="flight_delay"))
            finally:
                decided.set()
                other.dispose()

        thread = threading.Thread(target=alert)
        thread.start()
        with db.transaction(sessions) as s:
            registry.promote_in(s, v2, "gates passed", "flow:evaluate", model_name="flight_delay")
            moved.set()
            assert not decided.wait(0.5), "the ledger decided while a champion move was uncommitted"
        thread.join(30)
        [decision] = result
        return decision
    finally:
        engine.dispose()


def test_admission_waits_for_an_uncommitted_promotion_on_sqlite(
        ledger: tuple[Settings, db.sessionmaker[db.Session]], monkeypatch: pytest.MonkeyPatch) -> None:
    settings, _ = ledger
    decision = promotion_during_admit(settings.db_url, settings, monkeypatch)
    assert decision.outcome == "cooldown", decision.detail


@pytest.mark.postgres
def test_admission_waits_for_an_uncommitted_promotion_on_postgres(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with scratch_database("retrain_ledger_lock") as url:
        db.upgrade(url)
        settings = Settings(home=tmp_path, database_url=url, retrain_cooldown_hours=24)
        decision = promotion_during_admit(url, settings, monkeypatch)
        assert decision.outcome == "cooldown", decision.detail
