"""Alert intake from outside retrain: the CLI and Alertmanager webhooks become Prefect events.

Firing alerts are posted to the Prefect server's `POST /api/events` (the answer tells us it was
accepted; `emit_event` would queue it in the background); the deployment trigger then starts the
retrain flow, whose ledger records what each alert caused. Resolved alerts never start a retrain:
they are recorded in the alerts table directly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from retrain.alerts import ledger
from retrain.core import events
from retrain.core.config import Settings


@dataclass(frozen=True)
class IntakeResult:
    """What happened to each received alert."""

    sent: list[str]  # event ids posted to Prefect
    recorded: list[int]  # alert rows recorded without an event (resolved)

    def as_json(self) -> dict[str, list[str] | list[int]]:
        return {"sent": self.sent, "recorded": self.recorded}


def submit(settings: Settings, sessions: sessionmaker[Session], payloads: list[events.AlertPayload],
           api_url: str) -> IntakeResult:
    """Post firing alerts as `retrain.alert.<kind>` events; record resolved ones in the ledger."""
    batch: list[dict[str, object]] = []
    recorded: list[int] = []
    for p in payloads:
        model = p.model or settings.model_name
        if p.status == "resolved":
            row = ledger.record_alert(sessions, p, model_name=model, outcome="resolved",
                                      detail="resolved alert: recorded, never starts a retrain")
            recorded.append(row.id)
            continue
        batch.append(events.build_event(events.alert_event_name(p.kind), events.model_resource(model), p))
    if batch:
        events.post_events_http(api_url, batch)  # type: ignore[arg-type]
    return IntakeResult([str(e["id"]) for e in batch], recorded)


class IntakeUnavailable(RuntimeError):
    """No Prefect API to send events to."""


def alertmanager_intake(settings: Settings, sessions: sessionmaker[Session] | None,
                        body: dict[str, Any], api_url: str | None = None) -> dict[str, Any]:
    """Turn an Alertmanager webhook body into events (firing) and ledger rows (resolved).

    Raises ValueError naming the offending field for a malformed body, IntakeUnavailable when no
    Prefect API is configured (the alert would otherwise be lost).
    """
    payloads = events.from_alertmanager(body)
    url = api_url or os.environ.get("PREFECT_API_URL")
    if not url:
        raise IntakeUnavailable("PREFECT_API_URL is not set: cannot forward alerts to Prefect")
    if sessions is None:
        raise IntakeUnavailable("no database session: cannot record alerts")
    return {"received": len(payloads), **submit(settings, sessions, payloads, url).as_json()}
