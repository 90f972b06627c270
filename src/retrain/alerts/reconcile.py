"""Record retrain runs that ended without the alert ledger hearing it: cancelled, crashed or failed.

The retrain deployment allows one run at a time with `collision_strategy: CANCEL_NEW`: during an
alert storm the server cancels every run that asks for the slot while another retrain holds it.
Those runs never execute, so `ledger.admit` never sees their alert; without this module the alerts
table would silently miss them. A run killed mid-way (Prefect marks it CRASHED) or one that failed
outside the retrain's own error handling (FAILED) is no better: its alert may have no row, or keep
an admitted ("run") row that blocks its dedupe key as if the retrain were still going.

`reconcile_runs` reads CANCELLED, CRASHED and FAILED runs of the deployment from the Prefect API and
records each once (by flow run id) with that outcome ("cancelled", "crashed", "failed") and the alert
it carried (rebuilt from the run's parameters, which the trigger rendered from the event). An
admitted row of such a run is given that outcome too, which frees its dedupe key (only "run" holds
one), and a challenger the retrain had set is cleared so serving stops shadow-scoring it. A crashed
or failed run whose retrain had already reported back (its row no longer says "admitted") keeps its
row: the retrain answered the alert. The check is idempotent, so any caller (the retrain flow,
status, demo) may run it again. Two reconcilers racing on the same run could both insert: the
deployment's concurrency limit keeps flow-side calls serial.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from retrain.alerts import ledger
from retrain.core import events
from retrain.core.config import Settings
from retrain.core.db import Alert, Promotion, transaction
from retrain.models import registry

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

log = logging.getLogger(__name__)

RETRAIN_DEPLOYMENT = "retrain"
RETRAIN_FLOW = "retrain"
CANCELLED = "cancelled"
CRASHED = "crashed"
FAILED = "failed"
ENDED = (CANCELLED, CRASHED, FAILED)  # ledger outcomes of runs that ended without a retrain result
_STATE_TYPES = {CANCELLED: "CANCELLED", CRASHED: "CRASHED", FAILED: "FAILED"}  # Prefect `StateType` names
_HOW = {CANCELLED: "cancelled by Prefect", CRASHED: "crashed", FAILED: "failed"}


@dataclass(frozen=True)
class EndedRun:
    """What the ledger needs from one flow run that ended cancelled, crashed or failed."""

    flow_run_id: str
    parameters: dict[str, Any]
    message: str = ""
    ended_at: datetime | None = None
    outcome: str = CANCELLED  # one of ENDED

    def __post_init__(self) -> None:
        if self.outcome not in ENDED:
            raise ValueError(f"outcome: {self.outcome!r} is not one of {', '.join(ENDED)}")

    def detail(self) -> str:
        when = self.ended_at.isoformat() if self.ended_at else "unknown time"
        return f"flow run {_HOW[self.outcome]} at {when}: {self.message or 'no message'}"


CancelledRun = EndedRun  # the name from when only cancelled runs were reconciled


@dataclass
class ReconcileResult:
    """What one pass found and did; `as_of` is when the runs were read (wall clock, UTC)."""

    as_of: datetime
    seen: int = 0
    recorded: list[int] = field(default_factory=list)  # new alert rows (outcome cancelled/crashed/failed)
    freed: list[int] = field(default_factory=list)  # admitted rows whose run ended without a result
    already: int = 0  # runs the ledger already knew
    cleared: list[str] = field(default_factory=list)  # challenger versions such runs had left set

    def as_json(self) -> dict[str, Any]:
        return {"as_of": self.as_of.isoformat(), "seen": self.seen, "recorded": self.recorded,
                "freed": self.freed, "already": self.already, "cleared": self.cleared}


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


def _free(sessions: sessionmaker[Session], alert_id: int, run: EndedRun) -> bool:
    """Give an admitted row its run's outcome (freeing its key); False if it was not freeable."""
    stmt = update(Alert).where(Alert.id == alert_id, Alert.outcome == "run")
    if run.outcome != CANCELLED:  # a crash or failure after the retrain reported back leaves its answer
        stmt = stmt.where(Alert.detail == ledger.ADMITTED_DETAIL)
    with transaction(sessions) as session:
        result: Any = session.execute(stmt.values(outcome=run.outcome, detail=f"admitted, then {run.detail()}"))
    return bool(result.rowcount == 1)


def _release_challengers(sessions: sessionmaker[Session], ended: dict[int, tuple[str, EndedRun]],
                         result: ReconcileResult) -> None:
    """Clear each challenger that the retrain of an alert in `ended` (id -> (model, run)) set and left."""
    by_model: dict[str, dict[str, tuple[int, EndedRun]]] = {}
    for alert_id, (model, run) in ended.items():
        by_model.setdefault(model, {})[ledger.shadow_reason(alert_id)] = (alert_id, run)
    for model, marks in by_model.items():
        with sessions() as session:
            current = registry.alias_in(session, model, registry.CHALLENGER)
            if current is None:
                continue
            reasons = set(session.scalars(select(Promotion.reason).where(
                Promotion.model_name == model, Promotion.alias == registry.CHALLENGER, Promotion.action == "set",
                Promotion.to_version_id == current.id)))
        for mark in sorted(reasons & marks.keys()):
            alert_id, run = marks[mark]
            cleared = registry.clear_challenger_set_by(
                sessions, model, mark, reason=f"the retrain of alert {alert_id} ended: {run.detail()}"[:2000],
                actor="reconcile")
            if cleared is not None:
                result.cleared.append(cleared.version)


def record_ended(
    settings: Settings, sessions: sessionmaker[Session], runs: Iterable[EndedRun], now: datetime,
    *, as_of: datetime | None = None,
) -> ReconcileResult:
    """Record each ended run once in the alerts table (its outcome, its flow run id).

    Runs the ledger already holds keep their rows, except an admitted ("run") row still waiting for
    its retrain, which gets the run's outcome so its dedupe key is free again (a cancelled run's
    admitted row always does). A challenger that the retrain of such a row set is cleared. `now`
    stamps the new rows (the retrain clock).
    """
    result = ReconcileResult(as_of=as_of or datetime.now(UTC))
    runs = list(runs)
    result.seen = len(runs)
    if not runs:
        return result
    ids = [r.flow_run_id for r in runs]
    with sessions() as session:
        known: dict[str, list[tuple[int, str, str]]] = {}
        for alert_id, run_id, outcome, model in session.execute(
            select(Alert.id, Alert.flow_run_id, Alert.outcome, Alert.model_name).where(Alert.flow_run_id.in_(ids))
        ):
            known.setdefault(str(run_id), []).append((alert_id, outcome, model))
    ended: dict[int, tuple[str, EndedRun]] = {}  # alert rows whose retrain (if any) ended with the run
    for run in runs:
        rows = known.get(run.flow_run_id)
        if rows:
            result.already += 1
            for alert_id, outcome, model in rows:
                if outcome == "run" and _free(sessions, alert_id, run):
                    result.freed.append(alert_id)
                    outcome = run.outcome
                if outcome in ENDED:
                    ended[alert_id] = (model, run)
            continue
        payload, model = payload_from_parameters(run.parameters, settings.model_name)
        key = payload.effective_dedupe_key(model, now, settings)
        row = ledger.record_alert(sessions, payload, model_name=model, dedupe_key=key, outcome=run.outcome,
                                  detail=run.detail(), flow_run_id=run.flow_run_id, received_at=now)
        result.recorded.append(row.id)
    if ended:
        _release_challengers(sessions, ended, result)
    if result.recorded or result.freed or result.cleared:
        log.info("reconciled ended retrain runs: %d recorded, %d admitted rows freed, %d challengers cleared",
                 len(result.recorded), len(result.freed), len(result.cleared))
    return result


def record_cancelled(
    settings: Settings, sessions: sessionmaker[Session], runs: Iterable[EndedRun], now: datetime,
    *, as_of: datetime | None = None,
) -> ReconcileResult:
    """`record_ended` under its former name (the runs carry their own outcome, "cancelled" by default)."""
    return record_ended(settings, sessions, runs, now, as_of=as_of)


def ended_retrain_runs(
    client: SyncPrefectClient, *, outcomes: Sequence[str] = ENDED, deployment_name: str = RETRAIN_DEPLOYMENT,
    limit: int = 200,
) -> list[EndedRun]:
    """The most recent runs of the retrain deployment in the given end states (newest first, at most `limit`)."""
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

    unknown = [o for o in outcomes if o not in ENDED]
    if unknown or not outcomes:
        raise ValueError(f"outcomes: {unknown or 'none'}; choose from {', '.join(ENDED)}")
    outcome_of = {StateType[_STATE_TYPES[o]]: o for o in outcomes}
    runs = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[RETRAIN_FLOW])),
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment_name])),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=list(outcome_of)))),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=limit,
    )
    return [EndedRun(flow_run_id=str(r.id), parameters=dict(r.parameters or {}),
                     message=(r.state.message or "") if r.state else "",
                     ended_at=r.state.timestamp if r.state else None,
                     outcome=outcome_of.get(r.state_type, FAILED) if r.state_type else FAILED)
            for r in runs]


def cancelled_retrain_runs(
    client: SyncPrefectClient, *, deployment_name: str = RETRAIN_DEPLOYMENT, limit: int = 200,
) -> list[EndedRun]:
    """The most recent CANCELLED runs of the retrain deployment (newest first, at most `limit`)."""
    return ended_retrain_runs(client, outcomes=(CANCELLED,), deployment_name=deployment_name, limit=limit)


def reconcile_runs(
    settings: Settings, sessions: sessionmaker[Session], now: datetime, *,
    client: SyncPrefectClient | None = None, deployment_name: str = RETRAIN_DEPLOYMENT, limit: int = 200,
    outcomes: Sequence[str] = ENDED,
) -> ReconcileResult:
    """Read ended (cancelled, crashed, failed) retrain runs from the Prefect API (the configured one unless
    `client` is given) and bring the ledger up to date with them (`record_ended`)."""
    as_of = datetime.now(UTC)
    if client is None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as own:
            runs = ended_retrain_runs(own, outcomes=outcomes, deployment_name=deployment_name, limit=limit)
    else:
        runs = ended_retrain_runs(client, outcomes=outcomes, deployment_name=deployment_name, limit=limit)
    return record_ended(settings, sessions, runs, now, as_of=as_of)


def reconcile_cancelled(
    settings: Settings, sessions: sessionmaker[Session], now: datetime, *,
    client: SyncPrefectClient | None = None, deployment_name: str = RETRAIN_DEPLOYMENT, limit: int = 200,
) -> ReconcileResult:
    """`reconcile_runs` for CANCELLED runs only (the pass before crashed and failed runs were reconciled)."""
    return reconcile_runs(settings, sessions, now, client=client, deployment_name=deployment_name, limit=limit,
                          outcomes=(CANCELLED,))


def _ended_without_result(run: Any) -> bool:
    """Whether a Prefect flow run ended cancelled, crashed or failed (it answers no alert)."""
    state_type = getattr(run, "state_type", None)
    name = getattr(state_type, "name", state_type)
    return name in _STATE_TYPES.values()


def covering_retrain(
    sessions: sessionmaker[Session], flow_run_id: str, raised_at: datetime | None, *,
    client: SyncPrefectClient | None = None, deployment_name: str = RETRAIN_DEPLOYMENT,
    model_name: str | None = None,
) -> str | None:
    """Why this run's alert is already answered, or None: an admitted retrain of the same model started
    after it was raised.

    A retrain trains on everything landed when it starts, so it answers every alert of its model
    raised before that. In an alert storm with distinct dedupe keys, a run that only got the
    deployment's slot after the first retrain finished would otherwise start a second retrain for the
    same evidence. `raised_at` is when the Prefect server received the event (wall clock); None falls
    back to when this flow run was created. `model_name` is the alert's model; None reads it from this
    run's parameters (no model, no cover: another use case's retrain answers nothing here). Only
    retrain runs the ledger admitted ("run") count, and not one whose flow run was cancelled, crashed or
    failed: it answers nothing, even before `reconcile_runs` has freed its key.
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

    def read(c: SyncPrefectClient) -> tuple[datetime | None, str | None, list[Any]]:
        since, model = raised_at, model_name
        if since is None or not model:
            own = c.read_flow_run(UUID(flow_run_id))
            since = since or own.created
            model = model or _text((getattr(own, "parameters", None) or {}).get("model_name")) or None
        if since is None or not model:
            return since, model, []
        return since, model, c.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment_name])),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)), limit=50)

    if client is None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as own:
            since, model, runs = read(own)
    else:
        since, model, runs = read(client)
    if since is None or not model:
        return None
    started = {str(r.id): r for r in runs
               if str(r.id) != flow_run_id and r.start_time is not None and r.start_time >= since
               and not _ended_without_result(r)}
    if not started:
        return None
    with sessions() as session:
        row = session.scalars(select(Alert).where(Alert.flow_run_id.in_(list(started)), Alert.outcome == "run",
                                                  Alert.model_name == model)
                              .order_by(Alert.id).limit(1)).first()
    if row is None:
        return None
    run = started[str(row.flow_run_id)]
    return (f"covered by the retrain of alert {row.id} (flow run {run.name}), which started at "
            f"{run.start_time.isoformat()}, after this alert was raised at {since.isoformat()}")
