"""One retrain, as the alert-triggered flow runs it: ledger guard, catch-up, train, evaluate, decide.

The Prefect flow only orders these steps; each dependency (catch-up, trainer, evaluator) is passed
in, so tests and the backtest drive the same logic without servers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy.orm import Session, sessionmaker

from retrain.alerts import ledger
from retrain.alerts.approval import ApprovalDecision
from retrain.core import events
from retrain.core.config import Settings
from retrain.models import registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainWindows:
    """Where the challenger learns and where it is judged: [train) then [eval), back to back."""

    train_from: datetime
    train_to: datetime
    eval_from: datetime
    eval_to: datetime

    def as_json(self) -> dict[str, str]:
        return {k: v.isoformat() for k, v in asdict(self).items()}


def plan_windows(now: datetime, settings: Settings) -> RetrainWindows:
    """Sliding policy: evaluate on the latest matured days, train on the days just before them."""
    eval_to = pd.Timestamp(now - timedelta(hours=settings.retrain_label_lag_hours)).floor("D").to_pydatetime()
    eval_from = eval_to - timedelta(days=settings.retrain_eval_days)
    train_from = eval_from - timedelta(days=settings.retrain_train_days)
    return RetrainWindows(train_from, eval_from, eval_from, eval_to)


@dataclass
class RetrainReport:
    """What one alert caused, for the flow's log, the ledger and the demo's table."""

    alert_id: int
    admitted: bool
    outcome: str
    detail: str
    dedupe_key: str
    windows: dict[str, str] = field(default_factory=dict)
    version: str | None = None
    evaluation_id: int | None = None
    decision: str | None = None
    champion_before: str | None = None
    champion_after: str | None = None
    approval: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


Trainer = Callable[[datetime, datetime], str]  # (train_from, train_to) -> registered version
Evaluator = Callable[[str, datetime, datetime], Any]  # (version, eval_from, eval_to) -> EvaluationOutcome
Approver = Callable[[Any], ApprovalDecision]  # (EvaluationOutcome that passed every gate) -> a person's answer


def run_retrain(
    settings: Settings,
    sessions: sessionmaker[Session],
    payload: events.AlertPayload,
    now: datetime,
    *,
    train: Trainer,
    evaluate: Evaluator,
    catch_up: Callable[[datetime], Any] | None = None,
    flow_run_id: str | None = None,
    actor: str = "flow:retrain",
    covered_by: str | None = None,
    reconcile: Callable[[], Any] | None = None,
    approve: Approver | None = None,
) -> RetrainReport:
    """Admit the alert through the ledger, then train a challenger, shadow it, evaluate and decide.

    `reconcile` (e.g. `reconcile.reconcile_runs` bound to its arguments) runs first, so an earlier
    retrain whose flow run crashed or failed no longer holds its dedupe key when this alert is judged;
    its own failure is logged and never blocks the retrain. A skipped alert (dedupe, cooldown) is
    recorded with its reason and nothing else happens. A failure after admission clears the
    challenger this retrain set (serving stops shadow-scoring it), marks the alert "failed" (freeing
    its dedupe key) and re-raises; the champion is untouched because promotion only happens inside a
    passing evaluation.

    With `approve` (a use case with `retrain_require_approval`; `evaluate` must then not act), a
    challenger that passed every gate is promoted only if `approve` says so; a rejection or the
    approval timeout clears it. Either way the answer (who, when, why) is the promotion history's
    reason and actor.
    """
    model = payload.model or settings.model_name
    if reconcile is not None:
        try:
            reconcile()
        except Exception:
            log.warning("reconciling ended retrain runs before the ledger decision failed", exc_info=True)
    decision = ledger.admit(sessions, settings, payload, now, model_name=model, flow_run_id=flow_run_id,
                            covered_by=covered_by)
    report = RetrainReport(decision.alert_id, decision.run, decision.outcome, decision.detail, decision.dedupe_key)
    if not decision.run:
        log.info("alert %d not run: %s", decision.alert_id, decision.detail)
        return report
    try:
        windows = plan_windows(now, settings)
        report.windows = windows.as_json()
        before = registry.get_alias(sessions, registry.CHAMPION, model)
        report.champion_before = before.version if before else None
        if catch_up is not None:
            catch_up(now)
        version = train(windows.train_from, windows.train_to)
        report.version = version
        registry.set_challenger(sessions, version, reason=ledger.shadow_reason(decision.alert_id), actor=actor)
        outcome = evaluate(version, windows.eval_from, windows.eval_to)
        report.evaluation_id = outcome.evaluation_id
        report.decision = outcome.decision.decision
        if outcome.decision.promote and approve is not None and outcome.promotion is None:
            verdict = approve(outcome)
            report.approval = verdict.as_json()
            report.decision = _act_on_approval(settings, sessions, model, decision.alert_id, outcome, verdict,
                                               before.id if before else None)
        elif not outcome.decision.promote:
            registry.clear_challenger_set_by(sessions, model, ledger.shadow_reason(decision.alert_id),
                                             reason=f"rejected in evaluation {outcome.evaluation_id}", actor=actor,
                                             evaluation_id=outcome.evaluation_id, status="rejected")
    except BaseException as exc:
        _abandon(sessions, model, decision.alert_id, exc, actor)
        raise
    after = registry.get_alias(sessions, registry.CHAMPION, model)
    report.champion_after = after.version if after else None
    report.detail = (f"trained {version} on [{windows.train_from.date()}, {windows.train_to.date()}), "
                     f"evaluation {report.evaluation_id}: {report.decision}")
    ledger.finish_alert(sessions, decision.alert_id, detail=report.detail, flow_run_id=flow_run_id)
    return report


def _act_on_approval(settings: Settings, sessions: sessionmaker[Session], model: str, alert_id: int, outcome: Any,
                     verdict: ApprovalDecision, champion_id: int | None) -> str:
    """Promote an approved challenger (only over the champion it was evaluated against), or clear a
    rejected one; the verdict is the history's reason and actor. Returns the report's decision."""
    from retrain.models import promotion

    reason = verdict.reason(outcome.evaluation_id)
    if verdict.approved:
        promotion.promote_version(settings, sessions, outcome.version, reason, verdict.actor, outcome.evaluation_id,
                                  expect_champion_id=champion_id)
        return "promote (approved)"
    registry.clear_challenger_set_by(sessions, model, ledger.shadow_reason(alert_id), reason=reason,
                                     actor=verdict.actor, evaluation_id=outcome.evaluation_id, status="rejected")
    promotion.emit_decision(settings, promotion.EVENT_REJECTED, {
        "version": outcome.version, "champion": outcome.champion, "evaluation_id": outcome.evaluation_id,
        "reasons": [reason]})
    return "reject (approval timed out)" if verdict.timed_out else "reject (not approved)"


def _abandon(sessions: sessionmaker[Session], model: str, alert_id: int, exc: BaseException, actor: str) -> None:
    """After a failed retrain: clear the challenger it set, then mark its alert "failed" (each tried on its own).

    Neither step may hide the retrain's own error, so theirs are logged; a challenger left behind is
    cleared by the next `reconcile.reconcile_runs` once Prefect reports the run failed.
    """
    why = f"retrain failed: {exc!r}"[:2000]
    try:
        registry.clear_challenger_set_by(sessions, model, ledger.shadow_reason(alert_id),
                                         reason=f"the retrain of alert {alert_id} failed: {exc!r}"[:2000], actor=actor)
    except Exception:
        log.exception("could not clear the challenger of the failed retrain of alert %d", alert_id)
    try:
        ledger.finish_alert(sessions, alert_id, outcome="failed", detail=why)
    except Exception:
        log.exception("could not mark alert %d failed", alert_id)
