"""Alert intake from outside retrain: the CLI and Alertmanager webhooks become Prefect events.

Firing alerts are posted to the Prefect server's `POST /api/events` (the answer tells us it was
accepted; `emit_event` would queue it in the background); the deployment trigger then starts the
retrain flow, whose ledger records what each alert caused. Resolved alerts never start a retrain:
they are recorded in the alerts table directly.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import httpx
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError
from sqlalchemy.orm import Session, sessionmaker

from retrain.alerts import ledger
from retrain.core import events
from retrain.core.config import Settings

Status = Literal["firing", "resolved"]
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
_DATETIME = TypeAdapter(datetime)


def _rfc3339(value: str | None) -> str | None:
    """An RFC 3339 date-time representable in UTC, kept as sent (a repeated notification then gives
    the same dedupe key)."""
    if value is None:
        return None
    try:
        if _RFC3339.fullmatch(value):
            _DATETIME.validate_python(value).astimezone(UTC)
            return value
    except (ValidationError, OverflowError):
        pass
    raise PydanticCustomError("datetime_format", "not an RFC 3339 date-time in UTC's range (e.g. 2024-01-01T00:00:00Z)")


Timestamp = Annotated[str | None, AfterValidator(_rfc3339),
                      Field(default=None, json_schema_extra={"format": "date-time"})]


class AlertmanagerAlert(BaseModel):
    """One alert of an Alertmanager webhook; fields retrain does not read are accepted as sent."""

    model_config = ConfigDict(extra="allow")

    status: Status | None = None
    labels: dict[str, str] = Field(default_factory=dict, description="`retrain_kind` (or `kind`) picks the alert "
                                   "kind, `model` the model, `metric` (else `alertname`) the metric.")
    annotations: dict[str, str] = Field(default_factory=dict, description="`summary`/`description` become the "
                                        "reason; `value`/`threshold` the numbers.")
    startsAt: Timestamp
    endsAt: Timestamp
    fingerprint: str | None = None


class AlertmanagerWebhook(BaseModel):
    """`POST /alerts/alertmanager` body: an Alertmanager webhook (version 4)."""

    model_config = ConfigDict(extra="allow")

    version: str | None = None
    status: Status | None = None
    alerts: list[AlertmanagerAlert]
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    groupKey: str | None = None

    def as_body(self) -> dict[str, Any]:
        """The webhook as `alertmanager_intake` reads it (JSON values, unset fields left out)."""
        return self.model_dump(mode="json", exclude_none=True)


class IntakeAnswer(BaseModel):
    """`POST /alerts/alertmanager` answer."""

    received: int = Field(description="Alerts in the webhook.")
    sent: list[str] = Field(description="Ids of the events posted to Prefect (firing alerts).")
    recorded: list[int] = Field(description="Alert rows recorded without an event (resolved alerts).")


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
        events.post_events_http(api_url, batch, auth_string=settings.prefect_auth_value)  # type: ignore[arg-type]
    return IntakeResult([str(e["id"]) for e in batch], recorded)


class IntakeUnavailable(RuntimeError):
    """No Prefect API (or database) to send the alerts to, or Prefect refused them: answer 503."""


def alertmanager_intake(settings: Settings, sessions: sessionmaker[Session] | None,
                        body: dict[str, Any], api_url: str | None = None) -> dict[str, Any]:
    """Turn an Alertmanager webhook body into events (firing) and ledger rows (resolved).

    Raises ValueError naming the offending field for a malformed body, IntakeUnavailable when no
    Prefect API is configured or it does not take the events (the alert would otherwise be lost).
    """
    payloads = events.from_alertmanager(body)
    url = api_url or os.environ.get("PREFECT_API_URL")
    if not url:
        raise IntakeUnavailable("PREFECT_API_URL is not set: cannot forward alerts to Prefect")
    if sessions is None:
        raise IntakeUnavailable("no database session: cannot record alerts")
    try:
        result = submit(settings, sessions, payloads, url)
    except httpx.HTTPError as exc:
        raise IntakeUnavailable(f"the Prefect API at {url} did not take the alerts: {exc}") from exc
    return {"received": len(payloads), **result.as_json()}
