"""Record retrain runs that Prefect cancelled before they reached the alert ledger.

The retrain deployment allows one run at a time with `collision_strategy: CANCEL_NEW`: during an
alert storm the server cancels every run that asks for the slot while another retrain holds it.
Those runs never execute, so `events.admit` never sees their alert; without this module the alerts
table would silently miss them. `reconcile_cancelled` reads CANCELLED runs of the deployment from the
Prefect API and records each once (by flow run id) with outcome "cancelled" and the alert it
carried (rebuilt from the run's parameters, which the trigger rendered from the event).

A run that was admitted and then cancelled (e.g. from the UI, killed before its own error handling
ran) keeps an alert row with outcome "run" that would block its dedupe key forever; that row is
marked "cancelled" too, which frees the key. The retrain flow calls this at its end; the check is
idempotent, so any other caller (status, demo) may run it again. Two reconcilers racing on the same
run could both insert: the deployment's concurrency limit keeps flow-side calls serial.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from retrain import events
from retrain.config import Settings
from retrain.db import Alert, transaction

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

log = logging.getLogger(__name__)

RETRAIN_DEPLOYMENT = "retrain"
RETRAIN_FLOW = "retrain"
CANCELLED = "cancelled"


@dataclass(frozen=True)
class CancelledRun:
    """What the ledger needs from one cancelled flow run."""

    flow_run_id: str
    parameters: dict[str, Any]
    message: str = ""
    cancelled_at: datetime | None = None


@dataclass
class ReconcileResult:
    """What one pass found and did; `as_of` is when the runs were read (wall clock, UTC)."""

    as_of: datetime
    seen: int = 0
    recorded: list[int] = field(default_factory=list)  # new alert rows (outcome "cancelled")
    freed: list[int] = field(default_factory=list)  # admitted rows whose run was cancelled later
    already: int = 0  # runs the ledger already knew

    def as_json(self) -> dict[str, Any]:
        return {"as_of": self.as_of.isoformat(), "seen": self.seen, "recorded": self.recorded,
                "freed": self.freed, "already": self.already}


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def payload_from_parameters(parameters: dict[str, Any], default_model: str) -> tuple[events.AlertPayload, str]:
    """The alert a retrain run was started for, from its rendered parameters; returns (payload, model).

    Mirrors `flows/retraining.retrain_flow`'s reading. Parameters that do not validate (an unknown
    kind, say) still give a payload carrying the raw kind and the error as reason, so the row exists.
    """
    model = _text(parameters.get("model_name")) or default_model
    kind, source = _text(parameters.get("kind")) or "manual", _text(parameters.get("source")) or "event"
    data: dict[str, Any] = {
        "kind": kind,
        "metric": parameters.get("metric"),
        "value": parameters.get("value"),
        "threshold": parameters.get("threshold"),
        "window_from": parameters.get("window_from") or None,
        "window_to": parameters.get("window_to") or None,
        "dedupe_key": _text(parameters.get("dedupe_key")),
        "reason": _text(parameters.get("reason")),
        "source": source,
        "model": model,
    }
    try:
        return events.AlertPayload.model_validate(data), model
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"]))
        payload = events.AlertPayload.model_construct(  # keeps the raw kind on purpose
            kind=kind, metric=None, value=None, threshold=None, window_from=None, window_to=None,  # type: ignore[arg-type]
            dedupe_key=data["dedupe_key"] or None, reason=f"unparseable parameters ({where}: {err['msg']})",
            source=source[:64], status="firing", model=model)
        return payload, model


def record_cancelled(
    settings: Settings, sessions: sessionmaker[Session], runs: Iterable[CancelledRun], now: datetime,
    *, as_of: datetime | None = None,
) -> ReconcileResult:
    """Record each cancelled run once in the alerts table (outcome "cancelled", its flow run id).

    Runs the ledger already holds are left alone, except an admitted ("run") row, which is marked
    cancelled so its dedupe key is free again. `now` stamps the new rows (the retrain clock).
    """
    result = ReconcileResult(as_of=as_of or datetime.now(UTC))
    runs = list(runs)
    result.seen = len(runs)
    if not runs:
        return result
    ids = [r.flow_run_id for r in runs]
    with sessions() as session:
        known: dict[str, list[tuple[int, str]]] = {}
        for alert_id, run_id, outcome in session.execute(
            select(Alert.id, Alert.flow_run_id, Alert.outcome).where(Alert.flow_run_id.in_(ids))
        ):
            known.setdefault(str(run_id), []).append((alert_id, outcome))
    for run in runs:
        rows = known.get(run.flow_run_id)
        when = run.cancelled_at.isoformat() if run.cancelled_at else "unknown time"
        detail = f"flow run cancelled by Prefect at {when}: {run.message or 'no message'}"
        if rows:
            result.already += 1
            admitted = [alert_id for alert_id, outcome in rows if outcome == "run"]
            for alert_id in admitted:
                with transaction(sessions) as session:
                    session.execute(update(Alert).where(Alert.id == alert_id, Alert.outcome == "run")
                                    .values(outcome=CANCELLED, detail=f"admitted, then {detail}"))
                result.freed.append(alert_id)
            continue
        payload, model = payload_from_parameters(run.parameters, settings.model_name)
        key = payload.effective_dedupe_key(model, now, settings)
        row = events.record_alert(sessions, payload, model_name=model, dedupe_key=key, outcome=CANCELLED,
                                  detail=detail, flow_run_id=run.flow_run_id, received_at=now)
        result.recorded.append(row.id)
    if result.recorded or result.freed:
        log.info("reconciled cancelled retrain runs: %d recorded, %d admitted rows freed",
                 len(result.recorded), len(result.freed))
    return result


def cancelled_retrain_runs(
    client: SyncPrefectClient, *, deployment_name: str = RETRAIN_DEPLOYMENT, limit: int = 200,
) -> list[CancelledRun]:
    """The most recent CANCELLED runs of the retrain deployment (newest first, at most `limit`)."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    runs = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[RETRAIN_FLOW])),
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment_name])),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.CANCELLED]))),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=limit,
    )
    return [CancelledRun(flow_run_id=str(r.id), parameters=dict(r.parameters or {}),
                         message=(r.state.message or "") if r.state else "",
                         cancelled_at=r.state.timestamp if r.state else None)
            for r in runs]


def reconcile_cancelled(
    settings: Settings, sessions: sessionmaker[Session], now: datetime, *,
    client: SyncPrefectClient | None = None, deployment_name: str = RETRAIN_DEPLOYMENT, limit: int = 200,
) -> ReconcileResult:
    """Read cancelled retrain runs from the Prefect API (the configured one unless `client` is given)
    and record the ones the ledger lacks."""
    as_of = datetime.now(UTC)
    if client is None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as own:
            runs = cancelled_retrain_runs(own, deployment_name=deployment_name, limit=limit)
    else:
        runs = cancelled_retrain_runs(client, deployment_name=deployment_name, limit=limit)
    return record_cancelled(settings, sessions, runs, now, as_of=as_of)


def covering_retrain(
    sessions: sessionmaker[Session], flow_run_id: str, raised_at: datetime | None, *,
    client: SyncPrefectClient | None = None, deployment_name: str = RETRAIN_DEPLOYMENT,
) -> str | None:
    """Why this run's alert is already answered, or None: an admitted retrain started after it was raised.

    A retrain trains on everything landed when it starts, so it answers every alert raised before
    that. In an alert storm with distinct dedupe keys, a run that only got the deployment's slot
    after the first retrain finished would otherwise start a second retrain for the same evidence.
    `raised_at` is when the Prefect server received the event (wall clock); None falls back to when
    this flow run was created. Only retrain runs the ledger admitted ("run") count: a failed one
    freed its key and answers nothing.
    """
    if not flow_run_id:
        return None
    from uuid import UUID

    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
    )

    def read(c: SyncPrefectClient) -> tuple[datetime | None, list[Any]]:
        since = raised_at or c.read_flow_run(UUID(flow_run_id)).created
        if since is None:
            return None, []
        return since, c.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment_name])),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)), limit=50)

    if client is None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as own:
            since, runs = read(own)
    else:
        since, runs = read(client)
    if since is None:
        return None
    started = {str(r.id): r for r in runs
               if str(r.id) != flow_run_id and r.start_time is not None and r.start_time >= since}
    if not started:
        return None
    with sessions() as session:
        row = session.scalars(select(Alert).where(Alert.flow_run_id.in_(list(started)), Alert.outcome == "run")
                              .order_by(Alert.id).limit(1)).first()
    if row is None:
        return None
    run = started[str(row.flow_run_id)]
    return (f"covered by the retrain of alert {row.id} (flow run {run.name}), which started at "
            f"{run.start_time.isoformat()}, after this alert was raised at {since.isoformat()}")

