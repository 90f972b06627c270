"""Backtest results: policies, what each did per period, totals, and the JSON form.

Plain data, no training: `retrain.backtest.replay` fills these in, `retrain.backtest.report` renders them.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from retrain.backtest.variants import TRIGGERED_VARIANTS
from retrain.core.config import Settings
from retrain.core.jsonsafe import json_safe
from retrain.usecase.frames import BacktestInputError

# ----------------------------------------------------------------------------------- policies


POLICY_NAMES = ("static", "periodic-always", "periodic-gated", "triggered", *TRIGGERED_VARIANTS)


@dataclass(frozen=True)
class Policy:
    """When to retrain and whether the gates decide promotion; a triggered `variant` overrides settings."""

    kind: Literal["static", "periodic", "triggered"]
    every: int = 1
    gated: bool = False
    variant: str = ""

    @property
    def name(self) -> str:
        if self.variant:
            return self.variant
        if self.kind != "periodic":
            return self.kind
        base = "periodic-gated" if self.gated else "periodic-always"
        return base if self.every == 1 else f"{base}/{self.every}"

    @property
    def overrides(self) -> dict[str, Any]:
        """Settings fields this policy replaces for its monitoring pass and ledger."""
        return dict(TRIGGERED_VARIANTS.get(self.variant, {}))


def parse_policy(text: str, every: int = 1) -> Policy:
    """`static`, `triggered` (or a variant of it), `periodic` (= `periodic-always`), `periodic-gated`;
    `:N` sets every N periods."""
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
    if name in TRIGGERED_VARIANTS:
        return Policy("triggered", gated=True, variant=name)
    if name in ("periodic", "periodic-always"):
        return Policy("periodic", every=k)
    if name == "periodic-gated":
        return Policy("periodic", every=k, gated=True)
    raise BacktestInputError(f"--policy {text!r}: unknown; use {', '.join(POLICY_NAMES)}")


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
    # the monitoring pass over this period: realized and estimated metric, thresholds, drift weight
    monitoring: dict[str, Any] = field(default_factory=dict)
    # fewer rows than the backtest's min_period_rows: left out of the policy's mean (and a promotion
    # judged on it is not called bad or good)
    short: bool = False
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
        scored = [(p.metric, p.short) for p in self.periods if p.metric is not None and math.isfinite(p.metric)]
        values = [m for m, short in scored if not short]
        every = [m for m, _ in scored]
        retrains = [p.retrain for p in self.periods if p.retrain is not None]
        fitted = [r for r in retrains if r.challenger is not None]
        kinds = Counter(str(a.get("kind")) for p in self.periods for a in p.alerts)
        covers = [p.monitoring.get("estimate_covers_realized") for p in self.periods]
        return json_safe({  # type: ignore[no-any-return]
            "mean_metric": float(np.mean(values)) if values else None,
            "mean_metric_all_periods": float(np.mean(every)) if every else None,
            "periods": len(self.periods),
            "periods_in_mean": len(values),
            "short_periods": [{"start": p.start, "rows": p.n_rows} for p in self.periods if p.short],
            "retrains": len(fitted),
            "retrain_attempts": len(retrains),
            "refused": sum(r.outcome in ("refused", "failed") for r in retrains),
            "promotions": sum(p.promoted is not None for p in self.periods),
            "rejections": sum(r.outcome == "rejected" for r in retrains),
            "bad_promotions": sum(bool(p.bad_promotion) for p in self.periods),
            "train_seconds": round(sum(r.fit_seconds for r in fitted), 3),
            "periods_with_alerts": sum(bool(p.alerts) for p in self.periods),
            "alerts_by_kind": dict(sorted(kinds.items())),
            "estimate_windows": sum(c is not None for c in covers),
            "estimate_covered": sum(c is True for c in covers),
            "wall_seconds": round(self.seconds, 3),
        })

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.name, "kind": self.policy.kind, "every": self.policy.every,
                "gated": self.policy.gated, "overrides": self.policy.overrides, "totals": self.totals(),
                "periods": [p.to_dict() for p in self.periods]}


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
    # periods with fewer rows are left out of every policy's mean (see means_note)
    min_period_rows: int = 0

    def run(self, name: str) -> PolicyRun:
        for r in self.runs:
            if r.policy.name == name:
                return r
        raise KeyError(name)

    def means_note(self) -> str:
        """How the means were taken: which periods were too short to count, and why."""
        rule = (f"means are over periods with at least {self.min_period_rows:,} rows (min_period_rows, by default "
                "eval_min_rows: the fewest labelled rows the evaluator judges a model on), each period weighted "
                "equally")
        short = {p.start: p.n_rows for r in self.runs for p in r.periods if p.short}
        if not short:
            return f"{rule}; every period has enough rows"
        left = ", ".join(f"{start[:10]} ({rows:,} rows)" for start, rows in sorted(short.items()))
        return f"{rule}; left out of every policy's mean: {left}"

    def to_dict(self) -> dict[str, Any]:
        return json_safe({  # type: ignore[no-any-return]
            "history": self.history, "period": self.period, "metric": self.metric,
            "higher_is_better": self.higher_is_better, "bad_margin": self.bad_margin, "initial": self.initial,
            "settings": self.settings, "min_period_rows": self.min_period_rows, "means_note": self.means_note(),
            "seconds": self.seconds, "policies": [r.to_dict() for r in self.runs]})


SETTINGS_PREFIXES = ("monitor_", "gate_", "retrain_", "eval_", "alert_")
SETTINGS_FIELDS = ("model_name", "seed", "num_threads", "num_boost_round", "early_stopping_rounds",
                   "validation_fraction", "learning_rate", "num_leaves", "decision_threshold")


def settings_used(settings: Settings) -> dict[str, Any]:
    """The knobs that shape a backtest (what to deploy unchanged once tuned)."""
    dumped = settings.model_dump(mode="json")
    return {k: v for k, v in dumped.items() if k.startswith(SETTINGS_PREFIXES) or k in SETTINGS_FIELDS}
