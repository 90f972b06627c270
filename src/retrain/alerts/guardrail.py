"""Guardrail after promotion: roll a new champion back when live traffic shows the old one was better.

For `guardrail_hours` after a promotion every serving worker keeps the previous champion loaded and
scores it in shadow on the same rows (`serving.follow.ModelFollower.guarded`), so each logged prediction
carries both scores. Once labels mature, `check_guardrail` compares them on the same traffic with the
gates' paired block bootstrap: the old champion's advantage (AUC, or the gate metric; regression:
relative RMSE/MAE) gets a one-sided lower bound at `gate_confidence`. When that lower bound is above
`guardrail_margin` (the old champion is better, beyond noise), the champion alias rolls back, recorded
in the promotion history with the evidence, and `retrain.model.rollback` is emitted. Too few matured
labels or blocks: wait (and say so); past the window: the guardrail is over.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import and_, select
from sqlalchemy.orm import Session, sessionmaker

from retrain.core.config import Settings
from retrain.core.db import Outcome, Prediction
from retrain.core.events import EVENT_ROLLBACK
from retrain.evaluation.gates import GateConfig, bounds, count_blocks, day_blocks, metric_gain, paired_bootstrap
from retrain.models import registry

log = logging.getLogger(__name__)


@dataclass
class GuardrailResult:
    """What one guardrail check found, and whether it rolled back."""

    model_name: str
    status: str  # none | over | waiting | keep | rollback
    detail: str
    champion: str | None = None
    previous: str | None = None
    promoted_at: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def verdict(labels: np.ndarray, new: np.ndarray, old: np.ndarray, times: pd.Series, settings: Settings, *,
            regression: bool) -> tuple[bool, str, dict[str, Any]]:
    """(roll back?, why, numbers): the old champion's paired advantage over the new on the same rows, by day
    blocks; roll back when its one-sided lower bound is above `guardrail_margin`."""
    config = GateConfig.from_settings(settings)
    blocks = day_blocks(times, config.block_hours)
    n = int(labels.size)
    n_blocks = count_blocks(blocks, n) or 0
    if regression:
        from retrain.evaluation.gates_regression import relative_gain, row_loss

        loss = settings.gate_regression_metric
        stat = relative_gain(loss, row_loss(loss, labels, old), row_loss(loss, labels, new))
        name = f"relative {loss}"
    else:
        stat = metric_gain(config.metric, labels.astype(bool), old, new)
        name = config.metric
    observed = float(stat(np.ones((1, n)))[0])
    diffs = paired_bootstrap(stat, n, blocks, resamples=config.bootstrap_resamples, seed=config.seed)
    _valid, lower, upper = bounds(diffs, config.confidence)
    back = bool(np.isfinite(lower) and lower > settings.guardrail_margin)
    stats = {"metric": name, "n": n, "blocks": n_blocks, "old_advantage": observed, "lower": lower, "upper": upper,
             "margin": settings.guardrail_margin, "confidence": config.confidence}
    why = (f"the previous champion's {name} advantage on the same {n} matured rows ({n_blocks} day blocks) is "
           f"{observed:+.4g}, {config.confidence:.0%} lower bound {lower:+.4g} "
           f"{'>' if back else '<='} margin {settings.guardrail_margin:+.4g}")
    return back, why, stats


def _paired_rows(sessions: sessionmaker[Session], model_name: str, new: str, old: str, since: datetime,
                 now: datetime) -> pd.DataFrame:
    """Rows the new champion served with the old one in shadow since `since`, labels matured by `now`
    (one per entity: its latest prediction)."""
    stmt = (select(Prediction.entity_key, Prediction.event_time, Prediction.score, Prediction.shadow_score,
                   Outcome.label)
            .join(Outcome, and_(Outcome.model_name == Prediction.model_name,
                                Outcome.entity_key == Prediction.entity_key))
            .where(Prediction.model_name == model_name, Prediction.model_version == new,
                   Prediction.shadow_version == old, Prediction.predicted_at >= since,
                   Prediction.shadow_score.is_not(None), Outcome.available_at <= now)
            .order_by(Prediction.id))
    with sessions() as session:
        rows = session.execute(stmt).all()
    frame = pd.DataFrame(rows, columns=["entity_key", "event_time", "new", "old", "label"])
    return frame.drop_duplicates("entity_key", keep="last").reset_index(drop=True)


def check_guardrail(settings: Settings, sessions: sessionmaker[Session], model_name: str, now: datetime,
                    *, emit: Any = None) -> GuardrailResult:
    """Compare the new champion with the one it replaced on the traffic both scored; roll back when the old
    one is better beyond noise (see the module docstring). `emit(event, payload)` sends the rollback event."""
    pair = registry.replaced_champion(sessions, model_name, now, settings.guardrail_hours)
    if pair is None:
        return GuardrailResult(model_name, "none", "no promotion within guardrail_hours to guard")
    new, old, promoted_at = pair
    base: dict[str, Any] = {"champion": new.version, "previous": old.version,
                            "promoted_at": promoted_at.isoformat()}
    rows = _paired_rows(sessions, model_name, new.version, old.version, promoted_at, now)
    need = settings.guardrail_min_labels or settings.eval_min_rows
    config = GateConfig.from_settings(settings)
    blocks = count_blocks(day_blocks(rows["event_time"], config.block_hours), len(rows)) if len(rows) else 0
    if len(rows) < need or (blocks or 0) < config.min_blocks:
        return GuardrailResult(model_name, "waiting", f"{len(rows)} matured rows scored by both in {blocks} day "
                               f"blocks; need {need} (guardrail_min_labels, else eval_min_rows) in "
                               f"{config.min_blocks} (gate_min_blocks)", **base)
    regression = str((new.params or {}).get("objective", "binary")) == "regression"
    back, why, stats = verdict(rows["label"].to_numpy(dtype="float64"), rows["new"].to_numpy(dtype="float64"),
                               rows["old"].to_numpy(dtype="float64"), rows["event_time"], settings,
                               regression=regression)
    if not back:
        return GuardrailResult(model_name, "keep", why, stats=stats, **base)
    reason = f"guardrail: {why}"[:2000]
    registry.rollback(sessions, reason, "guardrail", model_name)
    log.warning("%s rolled back from %s to %s: %s", model_name, new.version, old.version, why)
    if emit is not None:
        try:
            numbers = {k: v for k, v in stats.items() if isinstance(v, int | float)}
            emit(EVENT_ROLLBACK, {"version": old.version, "rolled_back": new.version, "reason": reason,
                                  "actor": "guardrail", **numbers})
        except Exception:  # the rollback is recorded; a lost notification must not undo it
            log.exception("could not emit %s", EVENT_ROLLBACK)
    return GuardrailResult(model_name, "rollback", why, stats=stats, **base)
