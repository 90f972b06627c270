"""Alert intake: Alertmanager webhooks and the CLI path become events; resolved alerts only ledger rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.support.flights import flight_settings

from retrain.alerts import intake
from retrain.core import events
from retrain.core.db import Alert
from retrain.models.registry import open_registry


def body(status: str, **labels: str) -> dict[str, Any]:
    return {"version": "4", "status": status, "alerts": [{
        "status": status, "labels": {"alertname": "FlightDelayAUCDrop", **labels},
        "annotations": {"summary": "AUC dropped", "value": "0.58", "threshold": "0.6"},
        "startsAt": "2013-06-01T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "abc"}]}


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[dict[str, Any]]]]:
    calls: list[tuple[str, list[dict[str, Any]]]] = []
    monkeypatch.setattr(events, "post_events_http", lambda url, evs, **_: calls.append((url, evs)) or 204)
    return calls


def test_firing_alert_becomes_one_event_with_kind_and_model(tmp_path: Path, sent: list[Any]) -> None:
    settings = flight_settings(home=tmp_path)
    out = intake.alertmanager_intake(settings, open_registry(settings),
                                     body("firing", retrain_kind="performance_decay"), api_url="http://x/api")
    assert out["received"] == 1 and len(out["sent"]) == 1 and out["recorded"] == []
    (url, evs), = sent
    assert url == "http://x/api"
    assert evs[0]["event"] == "retrain.alert.performance_decay"
    assert evs[0]["resource"]["prefect.resource.id"] == "retrain.model.flight_delay"
    assert evs[0]["payload"]["value"] == 0.58 and evs[0]["payload"]["threshold"] == 0.6
    assert evs[0]["payload"]["source"] == "alertmanager"


def test_resolved_alert_is_recorded_not_sent(tmp_path: Path, sent: list[Any]) -> None:
    settings = flight_settings(home=tmp_path)
    sessions = open_registry(settings)
    out = intake.alertmanager_intake(settings, sessions, body("resolved"), api_url="http://x/api")
    assert sent == [] and out["sent"] == [] and len(out["recorded"]) == 1
    with sessions() as s:
        row = s.scalars(select(Alert)).one()
    assert row.outcome == "resolved" and row.source == "alertmanager"


def test_malformed_body_names_the_field(tmp_path: Path, sent: list[Any]) -> None:
    settings = flight_settings(home=tmp_path)
    with pytest.raises(ValueError, match="alerts"):
        intake.alertmanager_intake(settings, open_registry(settings), {"status": "firing"}, api_url="http://x/api")
    with pytest.raises(ValueError, match=r"alerts\[0\].labels.retrain_kind"):
        intake.alertmanager_intake(settings, open_registry(settings), body("firing", retrain_kind="bogus"),
                                   api_url="http://x/api")
    assert sent == []


def test_no_prefect_api_is_refused_not_dropped(tmp_path: Path, sent: list[Any],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    settings = flight_settings(home=tmp_path)
    with pytest.raises(intake.IntakeUnavailable, match="PREFECT_API_URL"):
        intake.alertmanager_intake(settings, open_registry(settings), body("firing"))
    assert sent == []
