"""Backtest results: policies, what each did per period, totals, and the JSON form.

Plain data, no training: `retrain.backtest.replay` fills these in, `retrain.backtest.report` renders them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from retrain.core.config import Settings
from retrain.core.jsonsafe import json_safe
from retrain.usecase.frames import BacktestInputError

# ----------------------------------------------------------------------------------- policies


@dataclass(frozen=True)
class Policy:
    """When to retrain and whether the gates decide promotion."""

    kind: Literal["static", "periodic", "triggered"]
    every: int = 1
    gated: bool = False

    @property
    def name(self) -> str:
        if self.kind != "periodic":
            return self.kind
        base = "periodic-gated" if self.gated else "periodic-always"
        return base if self.every == 1 else f"{base}/{self.every}"


def parse_policy(text: str, every: int = 1) -> Policy:
    """`static`, `triggered`, `periodic` (= `periodic-always`), `periodic-gated`; `:N` sets every N periods."""
    name, _, n = text.strip().lower().partition(":")
    try:
        k = int(n) if n else every
    except ValueError:
        raise BacktestInputError(f"--policy {text!r}: ':{n}' must be a whole number of periods") from None
    if k < 1:
        raise BacktestInputError(f"--policy {text!r}: retrain every {k} periods: must be at least 1")
    if name == "static":
        return Policy("static")
    if name == "triggered":
        return Policy("triggered", gated=True)
    if name in ("periodic", "periodic-always"):
        return Policy("periodic", every=k)
    if name == "periodic-gated":
        return Policy("periodic", every=k, gated=True)
    raise BacktestInputError(f"--policy {text!r}: unknown; use static, periodic-always, periodic-gated, triggered")


# ------------------------------------------------------------------------------------ records


@dataclass
class RetrainRecord:
    """One retrain: why, on which windows, and what the gates said."""

    trigger: str  # "schedule" or "alert:<kind>"
    windows: dict[str, str]
    outcome: str  # promoted | rejected | refused | failed
    challenger: str | None = None
    fit_seconds: float = 0.0
    reasons: list[str] = field(default_factory=list)
    gates: list[dict[str, Any]] = field(default_factory=list)
    eval_rows: int = 0


@dataclass
class PeriodRecord:
    """What one policy did in one period."""

    index: int
    start: str
    end: str
    served: str
    n_rows: int
    metric: float | None
    alerts: list[dict[str, Any]] = field(default_factory=list)
    ledger: list[str] = field(default_factory=list)
    retrain: RetrainRecord | None = None
    promoted: str | None = None
    # for a promotion: both models on the next period, and whether the new one did worse by > margin
    next_metric_new: float | None = None
    next_metric_replaced: float | None = None
    bad_promotion: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))  # type: ignore[no-any-return]


@dataclass
class PolicyRun:
    policy: Policy
    periods: list[PeriodRecord]
    seconds: float = 0.0

    def totals(self) -> dict[str, Any]:
        values = [p.metric for p in self.periods if p.metric is not None and math.isfinite(p.metric)]
        retrains = [p.retrain for p in self.periods if p.retrain is not None]
        fitted = [r for r in retrains if r.challenger is not None]
        return json_safe({  # type: ignore[no-any-return]
            "mean_metric": float(np.mean(values)) if values else None,
            "periods": len(self.periods),
            "retrains": len(fitted),
            "retrain_attempts": len(retrains),
            "refused": sum(r.outcome in ("refused", "failed") for r in retrains),
            "promotions": sum(p.promoted is not None for p in self.periods),
            "rejections": sum(r.outcome == "rejected" for r in retrains),
            "bad_promotions": sum(bool(p.bad_promotion) for p in self.periods),
            "train_seconds": round(sum(r.fit_seconds for r in fitted), 3),
            "periods_with_alerts": sum(bool(p.alerts) for p in self.periods),
            "wall_seconds": round(self.seconds, 3),
        })

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.name, "kind": self.policy.kind, "every": self.policy.every,
                "gated": self.policy.gated, "totals": self.totals(), "periods": [p.to_dict() for p in self.periods]}


@dataclass
class BacktestResult:
    history: dict[str, Any]
    period: str
    metric: str
    higher_is_better: bool
    bad_margin: float
    initial: dict[str, Any]
    settings: dict[str, Any]
    runs: list[PolicyRun]
    seconds: dict[str, float] = field(default_factory=dict)

    def run(self, name: str) -> PolicyRun:
        for r in self.runs:
            if r.policy.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return json_safe({  # type: ignore[no-any-return]
            "history": self.history, "period": self.period, "metric": self.metric,
            "higher_is_better": self.higher_is_better, "bad_margin": self.bad_margin, "initial": self.initial,
            "settings": self.settings, "seconds": self.seconds, "policies": [r.to_dict() for r in self.runs]})


SETTINGS_PREFIXES = ("monitor_", "gate_", "retrain_", "eval_", "alert_")
SETTINGS_FIELDS = ("model_name", "seed", "num_threads", "num_boost_round", "early_stopping_rounds",
                   "validation_fraction", "learning_rate", "num_leaves", "decision_threshold")


def settings_used(settings: Settings) -> dict[str, Any]:
    """The knobs that shape a backtest (what to deploy unchanged once tuned)."""
    dumped = settings.model_dump(mode="json")
    return {k: v for k, v in dumped.items() if k.startswith(SETTINGS_PREFIXES) or k in SETTINGS_FIELDS}
