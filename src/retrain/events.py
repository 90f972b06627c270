"""Alert and decision events, their typed payload, emit helpers, and the alert ledger.

Alerts are Prefect events `retrain.alert.<kind>` on resource `retrain.model.<model name>`. The
payload is typed (`AlertPayload`) but every field except `kind` has a default, so an event sent by
another tool with only part of the fields still parses (the deployment trigger templates use
`| default(...)` for the same reason). The ledger (`admit`) decides whether an alert may start a
retrain: one retrain per dedupe key, none during the cooldown after a champion change (promotion or
rollback), and every decision is a row in the `alerts` table. The "one retrain per key" guarantee is
a partial unique index (`ux_alerts_admitted`, migration 0002), so it holds across concurrent
processes; `admit` checks and inserts in one transaction that holds the model's lock
(`registry.lock_model`), so a champion change cannot slip between the cooldown check and the insert.

Prefect is imported lazily (only `emit` needs it): the CLI must start fast.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from retrain import registry
from retrain.config import Settings
from retrain.db import Alert, Promotion, transaction

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

AlertKind = Literal["data_drift", "prediction_drift", "performance_decay", "manual"]
ALERT_KINDS: tuple[str, ...] = get_args(AlertKind)
ALERT_EVENT_PREFIX = "retrain.alert."
EVENT_PROMOTED = "retrain.model.promoted"
EVENT_REJECTED = "retrain.model.rejected"
EVENT_SWAP_FAILED = "retrain.serving.swap_failed"
RESOURCE_ID_KEY = "prefect.resource.id"
RESOURCE_PREFIX = "retrain.model."

LedgerOutcome = Literal["run", "deduplicated", "cooldown", "resolved"]
# Every outcome an alert row can end with: the ledger's decisions, plus what happened to an admitted
# retrain's flow run afterwards (`finish_alert`, `reconcile`). Only "run" holds a dedupe key.
TERMINAL_OUTCOMES: tuple[str, ...] = (*get_args(LedgerOutcome), "failed", "crashed", "cancelled")
ADMITTED_DETAIL = "admitted: retrain starts"  # an admitted row's detail until its retrain reports back
COOLDOWN_ACTIONS = ("promote", "rollback")  # champion moves that start the retrain cooldown


def shadow_reason(alert_id: int) -> str:
    """The reason the retrain of `alert_id` records when it sets its challenger (how it is found again)."""
    return f"shadowing while evaluated (alert {alert_id})"


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


def _aware_utc(value: datetime | None) -> datetime | None:
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
        return _aware_utc(value)

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


# --------------------------------------------------------------------------------------- emitting


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
    when = _aware_utc(occurred) or datetime.now(UTC)
    return {
        "id": event_id or str(uuid.uuid4()),
        "occurred": when.isoformat(),
        "event": event,
        "resource": resource,
        "related": [],
        "payload": body or {},
    }


def post_events_http(
    api_url: str, events: list[dict[str, Any]], *, timeout: float = 10.0, client: httpx.Client | None = None
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
    headers = {}
    if key := os.environ.get("PREFECT_API_KEY"):
        headers["Authorization"] = f"Bearer {key}"
    url = api_url.rstrip("/") + "/events"
    if client is not None:
        response = client.post(url, json=prepared, headers=headers, timeout=timeout)
    else:
        response = httpx.post(url, json=prepared, headers=headers, timeout=timeout)
    response.raise_for_status()
    return response.status_code


# ----------------------------------------------------------------------------------- alertmanager

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


# ----------------------------------------------------------------------------------------- ledger


@dataclass(frozen=True)
class LedgerDecision:
    """Whether an alert may start a retrain, and the ledger row that records the decision."""

    run: bool
    outcome: LedgerOutcome
    detail: str
    alert_id: int
    dedupe_key: str


def record_alert(
    sessions: sessionmaker[Session],
    payload: AlertPayload,
    *,
    model_name: str,
    dedupe_key: str | None = None,
    outcome: str = "received",
    detail: str | None = None,
    flow_run_id: str | None = None,
    received_at: datetime | None = None,
) -> Alert:
    """Insert one row in the alerts table (in its own transaction) and return it.

    No ledger check: deciding and recording atomically is `admit`'s (or `record_if_blocked`'s) job.
    """
    row = _alert_row(payload, model_name, dedupe_key or payload.dedupe_key or "", outcome, detail,
                     flow_run_id, received_at or datetime.now(UTC))
    with transaction(sessions) as session:
        session.add(row)
    return row


def _fit_key(key: str, limit: int = 256) -> str:
    """Keys longer than the column keep a prefix plus a hash of the whole (distinct keys stay distinct)."""
    if len(key) <= limit:
        return key
    return key[: limit - 41] + ":" + hashlib.sha256(key.encode()).hexdigest()[:40]


def _alert_row(payload: AlertPayload, model_name: str, dedupe_key: str, outcome: str, detail: str | None,
               flow_run_id: str | None, received_at: datetime) -> Alert:
    return Alert(
        model_name=model_name,
        kind=payload.kind,
        metric=payload.metric[:128] if payload.metric else None,
        value=payload.value,
        threshold=payload.threshold,
        window_from=payload.window_from,
        window_to=payload.window_to,
        dedupe_key=_fit_key(dedupe_key),
        source=payload.source[:64],
        outcome=outcome,
        detail=detail,
        flow_run_id=flow_run_id,
        payload=payload.event_payload(),
        received_at=_aware_utc(received_at),
    )


def _latest_champion_change(session: Session, model_name: str) -> tuple[datetime, str] | None:
    """When the champion of `model_name` last moved by a promotion or a rollback, and which it was."""
    stmt = (
        select(Promotion.created_at, Promotion.action)
        .where(Promotion.model_name == model_name, Promotion.alias == registry.CHAMPION,
               Promotion.action.in_(COOLDOWN_ACTIONS))
        .order_by(Promotion.created_at.desc(), Promotion.id.desc())
        .limit(1)
    )
    row = session.execute(stmt).first()
    return None if row is None else (row.created_at, row.action)


def _admitted(session: Session, model_name: str, key: str) -> Alert | None:
    stmt = select(Alert).where(Alert.model_name == model_name, Alert.dedupe_key == key, Alert.outcome == "run")
    return session.scalars(stmt.limit(1)).first()


def _blocked_in(session: Session, settings: Settings, payload: AlertPayload, now: datetime, model: str,
                key: str) -> tuple[LedgerOutcome, str] | None:
    """`blocked_by` within an open session (`admit` runs it under the model's lock)."""
    if payload.status == "resolved":
        return "resolved", "resolved alert: recorded, never starts a retrain"
    prior = _admitted(session, model, key)
    if prior is not None:
        return "deduplicated", (f"dedupe key {key!r} already admitted (alert {prior.id}, "
                                f"flow run {prior.flow_run_id or '-'})")
    changed = _latest_champion_change(session, model)
    cooldown = timedelta(hours=settings.retrain_cooldown_hours)
    if changed is not None and now - changed[0] < cooldown:
        changed_at, action = changed
        what = "promotion" if action == "promote" else action
        until = changed_at + cooldown
        clocks = (f" (later than now={now.isoformat()}: are promotions and alerts stamped by different "
                  "clocks, e.g. wall time vs a replay clock?)") if changed_at > now else ""
        return "cooldown", (f"cooldown: last {what} at {changed_at.isoformat()}{clocks}, "
                            f"retraining allowed from {until.isoformat()}")
    return None


def blocked_by(
    sessions: sessionmaker[Session], settings: Settings, payload: AlertPayload, now: datetime, *,
    model_name: str | None = None,
) -> tuple[LedgerOutcome, str] | None:
    """Why the ledger would not run this alert now (resolved, deduplicated, cooldown), or None.

    Read-only and advisory (the monitor asks it before emitting, so an alert the ledger would skip is
    not sent); `admit` and `record_if_blocked` decide again under the model's lock.
    """
    now = _aware_utc(now) or datetime.now(UTC)
    model = model_name or payload.model or settings.model_name
    key = _fit_key(payload.effective_dedupe_key(model, now, settings))
    with sessions() as session:
        return _blocked_in(session, settings, payload, now, model, key)


def record_if_blocked(
    sessions: sessionmaker[Session], settings: Settings, payload: AlertPayload, now: datetime, *,
    model_name: str | None = None, note: str = "",
) -> Alert | None:
    """Record the alert as skipped if the ledger would not run it now; None (nothing recorded) otherwise.

    The check and the insert are one transaction under the model's lock, like `admit`'s. `note` is
    appended to the recorded reason (e.g. who saw the alert).
    """
    now = _aware_utc(now) or datetime.now(UTC)
    model = model_name or payload.model or settings.model_name
    key = _fit_key(payload.effective_dedupe_key(model, now, settings))

    def work(session: Session) -> Alert | None:
        registry.lock_model(session, model)
        blocked = _blocked_in(session, settings, payload, now, model, key)
        if blocked is None:
            return None
        row = _alert_row(payload, model, key, blocked[0], blocked[1] + note, None, now)
        session.add(row)
        session.flush()
        return row

    return registry.atomic(sessions, work)


def admit(
    sessions: sessionmaker[Session],
    settings: Settings,
    payload: AlertPayload,
    now: datetime,
    *,
    model_name: str | None = None,
    flow_run_id: str | None = None,
    covered_by: str | None = None,
) -> LedgerDecision:
    """Decide (and record) whether this alert starts a retrain.

    `covered_by` says that a retrain which started after this alert was raised already answered it
    (`reconcile.covering_retrain`); such an alert is "deduplicated" with that reason.

    Order: resolved alerts never run; a key already admitted is "deduplicated"; within
    `retrain_cooldown_hours` after the model's latest champion change (a promotion or a rollback,
    compared with `now`, so pass the same clock promotions are stamped with) it is "cooldown";
    otherwise we insert the admitted row. Check and insert are one transaction holding the model's
    lock (`registry.lock_model`), retried by `registry.atomic` on a conflict; the partial unique index
    stays the arbiter for the key: a concurrent insert of the same key fails, and the retry records
    this alert as "deduplicated".
    """
    now = _aware_utc(now) or datetime.now(UTC)
    model = model_name or payload.model or settings.model_name
    key = _fit_key(payload.effective_dedupe_key(model, now, settings))

    def work(session: Session) -> tuple[int, LedgerOutcome, str]:
        registry.lock_model(session, model)
        blocked = _blocked_in(session, settings, payload, now, model, key)
        if blocked is None and covered_by:
            blocked = ("deduplicated", covered_by)
        outcome, detail = blocked if blocked is not None else ("run", ADMITTED_DETAIL)
        row = _alert_row(payload, model, key, outcome, detail, flow_run_id, now)
        session.add(row)
        session.flush()
        return row.id, outcome, detail

    alert_id, outcome, detail = registry.atomic(sessions, work)
    return LedgerDecision(outcome == "run", outcome, detail, alert_id, key)


def finish_alert(
    sessions: sessionmaker[Session],
    alert_id: int,
    *,
    outcome: str | None = None,
    detail: str | None = None,
    flow_run_id: str | None = None,
) -> None:
    """Update what an admitted alert caused (e.g. outcome "failed" frees its key for a later retry)."""
    values: dict[str, Any] = {}
    if outcome is not None:
        values["outcome"] = outcome
    if detail is not None:
        values["detail"] = detail
    if flow_run_id is not None:
        values["flow_run_id"] = flow_run_id
    if not values:
        return
    with transaction(sessions) as session:
        result = session.execute(update(Alert).where(Alert.id == alert_id).values(**values))
        if result.rowcount == 0:  # type: ignore[attr-defined]
            raise LookupError(f"alert_id: no alert {alert_id}")
