"""Prefect events of retrain: alert and decision event names, the model resource, the typed alert
payload, and how they are sent (`emit` through Prefect, `post_events_http` to a server's API).

Alerts are Prefect events `retrain.alert.<kind>` on resource `retrain.model.<model name>`. The
payload is typed (`AlertPayload`) but every field except `kind` has a default, so an event sent by
another tool with only part of the fields still parses (the deployment trigger templates use
`| default(...)` for the same reason). Whether an alert may start a retrain is the ledger's
(`retrain.alerts.ledger`).

Prefect is imported lazily (only `emit` needs it): the CLI must start fast.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from retrain.core.config import Settings

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)


AlertKind = Literal["data_drift", "prediction_drift", "performance_decay", "estimated_decay", "manual",
                    "stale_features"]
# kinds that report an operational problem: recorded by the ledger, never a reason to retrain
NOTICE_KINDS: frozenset[str] = frozenset({"stale_features"})


ALERT_KINDS: tuple[str, ...] = get_args(AlertKind)


ALERT_EVENT_PREFIX = "retrain.alert."


EVENT_PROMOTED = "retrain.model.promoted"


EVENT_REJECTED = "retrain.model.rejected"


EVENT_ROLLBACK = "retrain.model.rollback"  # the guardrail returned the champion alias to the previous champion


EVENT_SWAP_FAILED = "retrain.serving.swap_failed"


RESOURCE_ID_KEY = "prefect.resource.id"


RESOURCE_PREFIX = "retrain.model."


def alert_event_name(kind: str) -> str:
    """`retrain.alert.<kind>`; refuses unknown kinds so a typo cannot create an event nobody triggers on."""
    if kind not in ALERT_KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {', '.join(ALERT_KINDS)}")
    return ALERT_EVENT_PREFIX + kind


def model_resource(model_name: str) -> dict[str, str]:
    """The Prefect resource of a model: `{"prefect.resource.id": "retrain.model.<name>", ...}`."""
    if not model_name:
        raise ValueError("model_name: must be non-empty (it forms the resource id)")
    return {RESOURCE_ID_KEY: RESOURCE_PREFIX + model_name, "prefect.resource.name": model_name}


def model_from_resource(resource: dict[str, Any] | None) -> str | None:
    """The model name in a `retrain.model.<name>` resource, or None for any other resource."""
    rid = (resource or {}).get(RESOURCE_ID_KEY)
    if isinstance(rid, str) and rid.startswith(RESOURCE_PREFIX) and len(rid) > len(RESOURCE_PREFIX):
        return rid[len(RESOURCE_PREFIX) :]
    return None


def aware_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class AlertPayload(BaseModel):
    """What an alert says. Only `kind` is required; naive datetimes are read as UTC."""

    model_config = ConfigDict(extra="ignore")

    kind: AlertKind
    metric: str | None = None
    value: float | None = None
    threshold: float | None = None
    window_from: datetime | None = None
    window_to: datetime | None = None
    dedupe_key: str | None = None
    reason: str = ""
    source: str = "external"
    status: Literal["firing", "resolved"] = "firing"
    model: str | None = Field(default=None, description="Model name when the event's resource lacks it.")

    @field_validator("kind", mode="before")
    @classmethod
    def _strip_prefix(cls, value: Any) -> Any:
        if isinstance(value, str) and value.startswith(ALERT_EVENT_PREFIX):
            return value[len(ALERT_EVENT_PREFIX) :]
        return value

    @field_validator("value", "threshold", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return value

    @field_validator("value", "threshold")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        # JSON (and PostgreSQL) cannot hold NaN/inf: store "no value" instead of failing later.
        return value if value is None or math.isfinite(value) else None

    @field_validator("window_from", "window_to")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return aware_utc(value)

    @field_validator("dedupe_key", "metric", "model", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @classmethod
    def from_event(cls, event_name: str, payload: dict[str, Any] | None) -> AlertPayload:
        """Parse a received event; the kind comes from the payload or else from the event name."""
        data = dict(payload or {})
        if not data.get("kind") and event_name.startswith(ALERT_EVENT_PREFIX):
            data["kind"] = event_name[len(ALERT_EVENT_PREFIX) :]
        return cls.model_validate(data)

    def event_payload(self) -> dict[str, Any]:
        """JSON-safe dict without None fields (so trigger templates fall back to their defaults)."""
        return self.model_dump(mode="json", exclude_none=True)

    def effective_dedupe_key(self, model_name: str, now: datetime, settings: Settings) -> str:
        """The key the ledger dedupes on: the sender's, else model/kind/source per time bucket."""
        if self.dedupe_key:
            return self.dedupe_key
        bucket_s = settings.alert_default_dedupe_minutes * 60.0
        bucket = int(now.timestamp() // bucket_s)
        return f"{model_name}:{self.kind}:{self.source}:b{bucket}"


def emit(
    event: str,
    resource: dict[str, str],
    payload: dict[str, Any] | BaseModel | None,
    settings: Settings | None = None,
    *,
    related: list[dict[str, str]] | None = None,
) -> bool:
    """Emit a Prefect event; False (and a warning) when no Prefect API is configured.

    Without `PREFECT_API_URL`, `emit_event` sends to a throwaway temporary server and the event is
    lost, so we refuse instead of pretending. Delivery is asynchronous (Prefect's events worker,
    drained at process exit); use `post_events_http` when the caller needs the server's answer.
    `settings` is accepted for symmetry with the other helpers; the API URL is Prefect's own setting.
    """
    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    if not api_url:
        log.warning("event %s not emitted: PREFECT_API_URL is not set (it would go to a throwaway server)",
                    event)
        return False
    body = payload.model_dump(mode="json", exclude_none=True) if isinstance(payload, BaseModel) else payload
    sent = emit_event(event=event, resource=resource, payload=body or {}, related=related)  # type: ignore[arg-type]
    if sent is None:
        log.warning("event %s not emitted: Prefect's events client is not operational", event)
        return False
    return True


def build_event(
    event: str,
    resource: dict[str, str],
    payload: dict[str, Any] | BaseModel | None = None,
    *,
    occurred: datetime | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """One event in the JSON shape `POST /api/events` accepts (id and occurred filled in)."""
    body = payload.model_dump(mode="json", exclude_none=True) if isinstance(payload, BaseModel) else payload
    when = aware_utc(occurred) or datetime.now(UTC)
    return {
        "id": event_id or str(uuid.uuid4()),
        "occurred": when.isoformat(),
        "event": event,
        "resource": resource,
        "related": [],
        "payload": body or {},
    }


def prefect_auth_headers(auth_string: str | None = None) -> dict[str, str]:
    """The Authorization header Prefect's own clients send: basic auth from `auth_string` (default
    `PREFECT_API_AUTH_STRING`), else a bearer `PREFECT_API_KEY` (Prefect Cloud), else none."""
    import base64

    auth = auth_string or os.environ.get("PREFECT_API_AUTH_STRING")
    if auth:
        return {"Authorization": "Basic " + base64.b64encode(auth.encode("utf-8")).decode("ascii")}
    if key := os.environ.get("PREFECT_API_KEY"):
        return {"Authorization": f"Bearer {key}"}
    return {}


def post_events_http(
    api_url: str, events: list[dict[str, Any]], *, timeout: float = 10.0, client: httpx.Client | None = None,
    auth_string: str | None = None,
) -> int:
    """POST a JSON list of events to `{api_url}/events` (Prefect's documented intake); returns the status.

    `api_url` is the Prefect API root, e.g. `http://127.0.0.1:4200/api` (the server route is
    `POST /api/events`, body a list of events, answer 204 No Content). Events lacking `id` or
    `occurred` get them (the server requires both). Raises `httpx.HTTPStatusError` on a refusal, so a
    malformed event is reported rather than lost.
    """
    import httpx

    prepared = [
        e if ("id" in e and "occurred" in e)
        else build_event(e["event"], e["resource"], e.get("payload"), event_id=e.get("id"))
        for e in events
    ]
    headers = prefect_auth_headers(auth_string)
    url = api_url.rstrip("/") + "/events"
    if client is not None:
        response = client.post(url, json=prepared, headers=headers, timeout=timeout)
    else:
        response = httpx.post(url, json=prepared, headers=headers, timeout=timeout)
    response.raise_for_status()
    return response.status_code


_AM_ZERO_TIME = "0001-01-01T00:00:00Z"


def _float_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def from_alertmanager(body: dict[str, Any]) -> list[AlertPayload]:
    """Map a Prometheus Alertmanager webhook body (version 4) to alert payloads, one per alert.

    Labels: `retrain_kind` (or `kind`) picks the kind (default `manual`), `model`/`retrain_model` the
    model, `metric` (else `alertname`) the metric, `dedupe_key` the key (else the alert's fingerprint
    plus its start time, so Alertmanager's repeat notifications dedupe). `value`/`threshold` come from
    annotations or labels; `summary`/`description` become the reason. Resolved alerts keep
    `status="resolved"`: the ledger records them but they never start a retrain.
    """
    if not isinstance(body, dict):
        raise ValueError("body: an Alertmanager webhook must be a JSON object")
    alerts = body.get("alerts")
    if not isinstance(alerts, list):
        raise ValueError("alerts: an Alertmanager webhook must carry a list named 'alerts'")
    common_labels = body.get("commonLabels") or {}
    common_ann = body.get("commonAnnotations") or {}
    out: list[AlertPayload] = []
    for i, alert in enumerate(alerts):
        if not isinstance(alert, dict):
            raise ValueError(f"alerts[{i}]: must be an object")
        labels = {**common_labels, **(alert.get("labels") or {})}
        ann = {**common_ann, **(alert.get("annotations") or {})}
        kind = labels.get("retrain_kind") or labels.get("kind") or "manual"
        if kind not in ALERT_KINDS:
            raise ValueError(f"alerts[{i}].labels.retrain_kind: {kind!r} is not one of {', '.join(ALERT_KINDS)}")
        status = alert.get("status") or body.get("status") or "firing"
        if status not in ("firing", "resolved"):
            raise ValueError(f"alerts[{i}].status: {status!r} is not firing or resolved")
        starts = alert.get("startsAt") or None
        ends = alert.get("endsAt") or None
        if ends and str(ends).startswith("0001-01-01"):
            ends = None
        fingerprint = alert.get("fingerprint") or body.get("groupKey") or labels.get("alertname", "alert")
        name = labels.get("alertname", "")
        reason = ann.get("summary") or ann.get("description") or name or "alertmanager alert"
        out.append(
            AlertPayload(
                kind=kind,
                metric=labels.get("metric") or name or None,
                value=_float_or_none(ann.get("value", labels.get("value"))),
                threshold=_float_or_none(ann.get("threshold", labels.get("threshold"))),
                window_from=starts if starts and starts != _AM_ZERO_TIME else None,
                window_to=ends,
                dedupe_key=labels.get("dedupe_key") or f"alertmanager:{fingerprint}:{starts or ''}",
                reason=str(reason),
                source="alertmanager",
                status=status,
                model=labels.get("model") or labels.get("retrain_model") or None,
            )
        )
    return out

