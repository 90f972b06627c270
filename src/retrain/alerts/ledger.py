"""The alert ledger: whether an alert may start a retrain, and every decision as a row in `alerts`.

One retrain per dedupe key, none during the cooldown after a champion change (promotion or rollback).
The "one retrain per key" guarantee is a partial unique index (`ux_alerts_admitted`, migration 0002),
so it holds across concurrent processes; `admit` checks and inserts in one transaction that holds the
model's lock (`registry.lock_model`), so a champion change cannot slip between the cooldown check and
the insert.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from retrain.core.config import Settings
from retrain.core.db import Alert, Promotion, transaction
from retrain.core.events import NOTICE_KINDS, AlertPayload, aware_utc
from retrain.models import registry

LedgerOutcome = Literal["run", "deduplicated", "cooldown", "resolved", "recorded"]


TERMINAL_OUTCOMES: tuple[str, ...] = (*get_args(LedgerOutcome), "failed", "crashed", "cancelled")


ADMITTED_DETAIL = "admitted: retrain starts"  # an admitted row's detail until its retrain reports back


COOLDOWN_ACTIONS = ("promote", "rollback")  # champion moves that start the retrain cooldown


def shadow_reason(alert_id: int) -> str:
    """The reason the retrain of `alert_id` records when it sets its challenger (how it is found again)."""
    return f"shadowing while evaluated (alert {alert_id})"


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
        received_at=aware_utc(received_at),
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
    if payload.kind in NOTICE_KINDS:
        return "recorded", (f"{payload.kind}: an operational alert (ingestion or materialization is behind); "
                            "recorded, never starts a retrain: retraining on stale features cannot help")
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
    now = aware_utc(now) or datetime.now(UTC)
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
    now = aware_utc(now) or datetime.now(UTC)
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
    now = aware_utc(now) or datetime.now(UTC)
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

