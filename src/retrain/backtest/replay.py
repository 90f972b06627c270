"""Backtest retraining policies: replay a labelled history period by period through the production
pieces, in-process, and report what each policy would have delivered and cost.

Nothing here re-implements a production rule. Per period the served model scores the period's rows
and is judged on their labels (`retrain.core.metrics`). At the end of a period (simulated `now`):

- `static` never retrains: the model of the initial window serves to the end;
- `periodic` retrains every N periods on `retraining.plan_windows(now)`'s training window and either
  promotes the challenger (always) or lets the evaluator's gates (`gates.decide`, thresholds from
  `GateConfig.from_settings`) judge it against the champion on the plan's fresh evaluation window;
- `triggered` runs the monitoring pass (`monitor.monitor_frame`: drift against the served model's
  reference profile, decay on labels matured by `now`, the `Settings.monitor_*` rules) over the
  period's predictions; its alerts go through the production alert ledger (`ledger.admit`, on an
  in-memory SQLite: dedupe keys and `retrain_cooldown_hours` in simulated time), and an admitted
  alert retrains and evaluates exactly as the gated periodic policy does;
- `estimated`, `drift`, `decay-validation` are the triggered policy with a few `Settings` fields
  overridden (`variants.TRIGGERED_VARIANTS`) for its monitoring pass and ledger: same rules, same
  replay, other settings.

Models are fitted with `train.fit_with_settings` and profiled with `train.reference_profile`. A
challenger for the same window is trained once and shared by every policy that asks for it (each
policy is still charged its fit seconds). A promotion is "bad" when, on the next period, the new
champion scores worse than the champion it replaced by more than `bad_margin`.

A period with fewer rows than `min_period_rows` (default `eval_min_rows`, the fewest labelled rows
the evaluator judges a model on) is marked short: it is still served and monitored, but left out of
every policy's mean, and a promotion is not judged bad or good on it (a history ending just past a
period boundary otherwise scores a handful of rows as if they were a full period).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from pydantic import ValidationError

from retrain.alerts.retraining import plan_windows
from retrain.backtest.results import (
    BacktestResult,
    PeriodRecord,
    Policy,
    PolicyRun,
    RetrainRecord,
    parse_policy,
    settings_used,
)
from retrain.backtest.variants import TRIGGERED_VARIANTS
from retrain.core import metrics
from retrain.core.config import Settings
from retrain.evaluation.gates import GateConfig, day_blocks, decide
from retrain.evaluation.gates_regression import decide_regression
from retrain.models.train import TrainingError, fit_with_settings, reference_profile
from retrain.monitoring.rules import AlertSpec, monitor_frame
from retrain.usecase.frames import (
    LABEL_TIME,
    ROW_ID,
    BacktestInputError,
    History,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from retrain.alerts.ledger import LedgerDecision


PeriodName = Literal["day", "week", "month"]
PERIOD_DAYS: dict[str, float] = {"day": 1.0, "week": 7.0, "month": 30.44}
DEFAULT_POLICIES = ("static", "periodic-always", "periodic-gated", "triggered")
# what each period keeps of its monitoring pass (the estimate against the realized metric, drift weight)
MONITORING_KEYS = ("auc", "estimated_auc", "estimated_auc_threshold", "estimated_auc_lower", "estimated_auc_upper",
                   "reference_estimated_auc", "estimate_covers_realized", "rmse", "baseline_rmse",
                   "out_of_range_share", "drifted_importance", "n_labelled", "notes")
MIN_INITIAL_ROWS = 100
# backtest flag -> Settings field, for messages (the CLI's full map is retrain.cli.backtest.OVERRIDES)
BACKTEST_FLAGS = {"eval_min_rows": "eval_min_rows", "min_predictions": "monitor_min_predictions",
                  "min_labels": "monitor_min_labels", "eval_days": "retrain_eval_days"}
Progress = Callable[[str], Any]


def with_overrides(settings: Settings, updates: Mapping[str, Any]) -> Settings:
    """`settings` with some fields replaced, validated by the same rules as `RETRAIN_*` variables."""
    unknown = sorted(set(updates) - set(Settings.model_fields))
    if unknown:
        raise BacktestInputError(f"unknown setting(s): {', '.join(unknown)}")
    try:
        return Settings.model_validate({**settings.model_dump(), **updates})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise BacktestInputError(f"setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from exc


# ------------------------------------------------------------------------------------ periods


def period_bounds(first: pd.Timestamp, last: pd.Timestamp, period: str) -> list[pd.Timestamp]:
    """Period starts from the one holding `first` through the end of the one holding `last` (UTC)."""
    if period not in PERIOD_DAYS:
        raise BacktestInputError(f"--period {period!r}: use day, week or month")
    start = first.tz_convert("UTC").floor("D")
    if period == "week":
        start -= pd.Timedelta(days=start.weekday())
    elif period == "month":
        start = start.replace(day=1)
    step = {"day": pd.DateOffset(days=1), "week": pd.DateOffset(weeks=1), "month": pd.DateOffset(months=1)}[period]
    bounds = [start]
    while bounds[-1] <= last:
        bounds.append(bounds[-1] + step)
    return bounds


def default_initial_periods(settings: Settings, period: str) -> int:
    """Enough periods to cover production's training window (`retrain_train_days`)."""
    return max(1, math.ceil(settings.retrain_train_days / PERIOD_DAYS[period] - 1e-9))


def _ns(value: pd.Timestamp | datetime) -> int:
    return int(pd.Timestamp(value).as_unit("ns").value)


def _epoch_ns(times: pd.Series) -> np.ndarray:
    """Nanoseconds since the epoch (UTC) of a timezone-aware column, for binary search."""
    return np.asarray(pd.DatetimeIndex(times).tz_convert("UTC").tz_localize(None).as_unit("ns").view("int64"))


# ------------------------------------------------------------------------------------ models


@dataclass
class Model:
    """A model the backtest trained: its window, booster, categories and reference profile."""

    name: str
    booster: Any
    train_from: pd.Timestamp
    train_to: pd.Timestamp
    n_rows: int
    categories: dict[str, list[str]]
    profile: dict[str, Any]
    fit_seconds: float
    validation: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "train_from": self.train_from.isoformat(), "train_to": self.train_to.isoformat(),
                "n_rows": self.n_rows, "fit_seconds": round(self.fit_seconds, 3), "validation": self.validation}


class _Ledger:
    """Production's alert ledger (`ledger.admit` / `finish_alert`) on a private in-memory database;
    promotions are stamped with the simulated time so the cooldown runs on the replay's clock."""

    def __init__(self, settings: Settings) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import StaticPool

        from retrain.core.db import Base, session_factory

        self.settings = settings
        self.engine = create_engine("sqlite://", poolclass=StaticPool)
        Base.metadata.create_all(self.engine)
        self.sessions: sessionmaker[Session] = session_factory(self.engine)

    def admit(self, alert: AlertSpec, now: datetime) -> LedgerDecision:
        from retrain.alerts import ledger

        return ledger.admit(self.sessions, self.settings, alert.to_payload(source="backtest"), now,
                            model_name=self.settings.model_name)

    def finish(self, decision: LedgerDecision, detail: str, failed: bool) -> None:
        from retrain.alerts import ledger

        ledger.finish_alert(self.sessions, decision.alert_id, outcome="failed" if failed else None, detail=detail)

    def promoted(self, now: datetime, old: str, new: str) -> None:
        from retrain.core.db import Promotion, transaction

        with transaction(self.sessions) as session:
            session.add(Promotion(model_name=self.settings.model_name, alias="champion", action="promote",
                                  reason=f"backtest: {old} -> {new}", actor="backtest", created_at=now))

    def close(self) -> None:
        self.engine.dispose()


class Replay:
    """One history, one settings object, and the models trained so far (shared by policies)."""

    def __init__(self, history: History, settings: Settings, *, period: str = "month",
                 initial_periods: int | None = None, bad_margin: float = 0.005,
                 progress: Progress | None = None, min_period_rows: int | None = None) -> None:
        self.h = history
        # each period is a monitoring window: the reference chunks that thresholds are learned from
        # (`train.reference_profile`) are cut at the period's length too
        self.settings = settings.model_copy(
            update={"monitor_window_days": PERIOD_DAYS.get(period, settings.monitor_window_days)})
        self.period = period
        self.bad_margin = bad_margin
        self.min_period_rows = settings.eval_min_rows if min_period_rows is None else min_period_rows
        if self.min_period_rows < 0:
            raise BacktestInputError(f"--min-period-rows: {self.min_period_rows} must be >= 0")
        # each triggered variant's settings, validated before any training
        self.variant_settings = {name: with_overrides(self.settings, o) for name, o in TRIGGERED_VARIANTS.items()}
        self.say: Progress = progress or (lambda _m: None)
        self.binary = history.objective == "binary"
        self.gate_config = GateConfig.from_settings(settings)  # refuses bad gate settings before training
        frame = history.frame
        self.times = _epoch_ns(frame[history.time_col])
        self.label_times = _epoch_ns(frame[LABEL_TIME])
        self.y = frame[history.label].to_numpy(dtype="float64")
        self.bounds = period_bounds(history.start, history.end, period)
        n_periods = len(self.bounds) - 1
        self.initial_periods = initial_periods or default_initial_periods(settings, period)
        if self.initial_periods < 1:
            raise BacktestInputError(f"--initial-periods: {self.initial_periods} must be at least 1")
        if n_periods < self.initial_periods + 2:
            raise BacktestInputError(
                f"too little history: {len(frame):,} rows from {history.start.date()} to {history.end.date()} "
                f"span {n_periods} {period}(s); the initial window takes {self.initial_periods} and the backtest "
                f"needs at least 2 more to score (use a shorter --period or fewer --initial-periods)")
        init = self.rows(self.bounds[0], self.bounds[self.initial_periods], self.bounds[self.initial_periods])
        if init.size < MIN_INITIAL_ROWS:
            raise BacktestInputError(
                f"too little history for the initial window [{self.bounds[0].date()}, "
                f"{self.bounds[self.initial_periods].date()}): {init.size} labelled rows, need at least "
                f"{MIN_INITIAL_ROWS}")
        self._require_volume(n_periods)
        if self.binary and len(set(self.y[init])) < 2:
            raise BacktestInputError(f"the initial window [{self.bounds[0].date()}, "
                                     f"{self.bounds[self.initial_periods].date()}): label {history.label!r} has "
                                     "only one class; a model needs both")
        self.models: dict[tuple[int, int, int], Model] = {}
        self.scores: dict[tuple[str, int], np.ndarray] = {}
        self.monitoring: dict[tuple[str, int, str], tuple[list[AlertSpec], dict[str, Any]]] = {}
        self.initial: Model | None = None

    def _require_volume(self, n_periods: int) -> None:
        """Refuse up front when the settings' minimum rows can never be met by this data's volume."""
        from retrain.usecase.sizing import Volume, volume_problems

        span_days = (self.bounds[-1] - self.bounds[0]).total_seconds() / 86_400
        periods = range(self.initial_periods, n_periods)
        scored = [self.rows(self.bounds[k], self.bounds[k + 1]).size for k in periods]
        labelled = [self.rows(self.bounds[k], self.bounds[k + 1], self.bounds[k + 1]).size for k in periods]
        delay_hours = float(np.median(self.label_times - self.times)) / 3.6e12 if self.times.size else 0.0
        flags = {setting: f"--{flag.replace('_', '-')}" for flag, setting in BACKTEST_FLAGS.items()}
        times_per_day = len(np.unique(self.times)) / max(span_days, 1.0)
        problems = volume_problems(self.settings, Volume(rows=len(self.y), days=span_days,
                                                         label_delay_hours=max(0.0, delay_hours),
                                                         times_per_day=times_per_day),
                                   monitor_rows=float(np.median(scored)) if scored else 0.0,
                                   monitor_labelled=float(np.median(labelled)) if labelled else 0.0,
                                   monitor_what=f"a {self.period} (each period is a monitoring window)",
                                   flags=flags, labels_judged=self.binary)
        if problems:
            raise BacktestInputError("the settings do not fit this data's volume (nothing would retrain):\n  - "
                                     + "\n  - ".join(problems))

    # ---- data
    def rows(self, lo: pd.Timestamp | datetime, hi: pd.Timestamp | datetime,
             matured_by: pd.Timestamp | datetime | None = None) -> np.ndarray:
        """Row positions with time in [lo, hi) (and label known by `matured_by`)."""
        a, b = np.searchsorted(self.times, [_ns(lo), _ns(hi)], side="left")
        idx = np.arange(a, b)
        if matured_by is not None:
            idx = idx[self.label_times[a:b] <= _ns(matured_by)]
        return idx

    def features(self, model: Model, idx: np.ndarray) -> pd.DataFrame:
        """The model's inputs; categorical columns cast to the categories of its training window."""
        x = self.h.frame.iloc[idx][self.h.feature_names].copy()
        for col, cats in model.categories.items():
            x[col] = pd.Categorical(x[col], categories=cats)
        return x

    def predict(self, model: Model, idx: np.ndarray) -> np.ndarray:
        if idx.size == 0:
            return np.empty(0)
        x = self.features(model, idx)
        return np.asarray(model.booster.predict(x, num_threads=self.settings.num_threads), dtype="float64")

    def metric(self, y: np.ndarray, scores: np.ndarray) -> float | None:
        if y.size == 0:
            return None
        value = (metrics.roc_auc(y.astype(bool), scores) if self.binary
                 else float(np.sqrt(np.mean((scores - y) ** 2))))
        return value if math.isfinite(value) else None

    def worse(self, new: float | None, old: float | None) -> bool | None:
        if new is None or old is None:
            return None
        return (old - new > self.bad_margin) if self.binary else (new - old > self.bad_margin)

    # ---- training
    def fit(self, lo: pd.Timestamp | datetime, hi: pd.Timestamp | datetime, now: pd.Timestamp | datetime) -> Model:
        """The model of window [lo, hi) as known at `now` (trained once, then reused)."""
        idx = self.rows(lo, hi, now)
        key = (_ns(lo), _ns(hi), int(idx.size))
        if key in self.models:
            return self.models[key]
        h = self.h
        if idx.size == 0:
            raise TrainingError(f"no labelled rows in [{pd.Timestamp(lo).date()}, {pd.Timestamp(hi).date()})")
        frame = h.frame.iloc[idx][[h.time_col, h.label, *h.feature_names]].copy()
        categories: dict[str, list[str]] = {}
        for col in h.categorical:
            cats = sorted({str(v) for v in frame[col].dropna().unique()})
            categories[col] = cats
            frame[col] = pd.Categorical(frame[col], categories=cats)
        t0 = time.perf_counter()
        result = fit_with_settings(frame, h.feature_names, self.settings, label=h.label, time_col=h.time_col,
                                   objective=h.objective)
        profile = reference_profile(self.settings, result, h.label, frame, regression=not self.binary)
        seconds = time.perf_counter() - t0
        lo_ts, hi_ts = pd.Timestamp(lo).tz_convert("UTC"), pd.Timestamp(hi).tz_convert("UTC")
        fmt = "%Y%m%d%H" if (lo_ts.hour or hi_ts.hour) else "%Y%m%d"
        model = Model(f"m{lo_ts:{fmt}}-{hi_ts:{fmt}}", result.booster, lo_ts, hi_ts, int(idx.size), categories,
                      profile, seconds, dict(result.metadata.get("validation") or {}))
        self.models[key] = model
        self.say(f"trained {model.name} on {idx.size:,} rows in {seconds:.1f} s")
        return model

    def initial_model(self) -> Model:
        if self.initial is None:
            end = self.bounds[self.initial_periods]
            self.initial = self.fit(self.bounds[0], end, end)
        return self.initial

    # ---- per period
    def period_rows(self, k: int) -> np.ndarray:
        return self.rows(self.bounds[k], self.bounds[k + 1])

    def period_scores(self, model: Model, k: int) -> np.ndarray:
        key = (model.name, k)
        if key not in self.scores:
            self.scores[key] = self.predict(model, self.period_rows(k))
        return self.scores[key]

    def policy_settings(self, policy: Policy) -> Settings:
        """The settings a policy monitors with: the replay's, or its variant's overrides over them."""
        return self.variant_settings[policy.variant] if policy.variant else self.settings

    def monitor(self, model: Model, k: int, variant: str = "") -> tuple[list[AlertSpec], dict[str, Any]]:
        """The production monitoring pass over period k's predictions, as of the period's end (with a
        triggered variant's settings when `variant` names one)."""
        key = (model.name, k, variant)
        if key in self.monitoring:
            return self.monitoring[key]
        idx = self.period_rows(k)
        h = self.h
        part = h.frame.iloc[idx]
        preds = pd.DataFrame({"entity_key": part[ROW_ID].to_numpy(), "score": self.period_scores(model, k)})
        for name in h.feature_names:
            preds[name] = part[name].to_numpy()
        outcomes = pd.DataFrame({"entity_key": part[ROW_ID].to_numpy(),
                                 "available_at": part[LABEL_TIME].reset_index(drop=True),
                                 "label": part[h.label].to_numpy()})
        lo, hi = self.bounds[k].to_pydatetime(), self.bounds[k + 1].to_pydatetime()
        settings = self.variant_settings[variant] if variant else self.settings
        result = monitor_frame(model.profile, preds, outcomes, settings=settings,
                               model_name=self.settings.model_name, model_version=model.name, window_from=lo,
                               window_to=hi, as_of=hi, regression=not self.binary)
        summary: dict[str, Any] = {**result.summary(), "n_labelled": result.n_labelled,
                                   "estimate_covers_realized": result.estimate_covers_realized(),
                                   "notes": list(result.notes)}
        out = (list(result.alerts), summary)
        self.monitoring[key] = out
        return out

    def retrain(self, champion: Model, now: pd.Timestamp, *, gated: bool, trigger: str) -> tuple[RetrainRecord,
                                                                                                  Model | None]:
        """Train on the plan's window; promote always, or when the gates pass on the plan's fresh window.

        Refusals mirror the evaluator's (`evaluate.evaluate_version`): an evaluation window that starts
        before the champion's training window ends, or fewer than `eval_min_rows` labelled rows. They
        are checked before fitting, so no compute is spent on a challenger that cannot be judged.
        """
        w = plan_windows(now.to_pydatetime(), self.settings)
        rec = RetrainRecord(trigger=trigger, windows=w.as_json(), outcome="refused")
        eval_idx = self.rows(w.eval_from, w.eval_to, now)
        if gated:
            if pd.Timestamp(w.eval_from) < champion.train_to:
                rec.reasons = [f"window: evaluation starts {w.eval_from.isoformat()}, before the end of the champion "
                               f"{champion.name}'s training window ({champion.train_to.isoformat()})"]
                return rec, None
            if eval_idx.size < self.settings.eval_min_rows:
                rec.reasons = [f"window [{w.eval_from.date()}, {w.eval_to.date()}): {eval_idx.size} labelled rows, "
                               f"need at least {self.settings.eval_min_rows} (eval_min_rows)"]
                return rec, None
        try:
            challenger = self.fit(w.train_from, w.train_to, now)
        except TrainingError as exc:
            rec.outcome, rec.reasons = "failed", [f"training failed: {exc}"]
            return rec, None
        rec.challenger, rec.fit_seconds = challenger.name, challenger.fit_seconds
        if challenger.name == champion.name:
            rec.outcome, rec.reasons = "rejected", ["the challenger is the champion (same training window)"]
            return rec, None
        if not gated:
            rec.outcome, rec.reasons = "promoted", ["always-promote policy: no gates"]
            return rec, challenger
        y = self.y[eval_idx]
        chal, champ = self.predict(challenger, eval_idx), self.predict(champion, eval_idx)
        rec.eval_rows = int(eval_idx.size)
        part = self.h.frame.iloc[eval_idx]
        slices = {c: part[c].to_numpy() for c in self.h.slice_columns}
        fs = self.h.feature_service
        services = (fs, fs) if fs else None
        blocks = day_blocks(part[self.h.time_col], self.gate_config.block_hours)  # as the evaluator resamples
        if self.binary:
            decision = decide(y.astype(bool), chal, champ, config=self.gate_config, slices=slices or None,
                              feature_services=services, blocks=blocks)
        else:
            decision = decide_regression(y, chal, champ, config=self.gate_config,
                                         metric=self.settings.gate_regression_metric, slices=slices or None,
                                         feature_services=services, blocks=blocks)
        rec.outcome = "promoted" if decision.promote else "rejected"
        rec.reasons = list(decision.reasons)
        rec.gates = [g.to_dict() for g in decision.gates]
        return rec, challenger if decision.promote else None

    # ---- one policy
    def run(self, policy: Policy) -> PolicyRun:
        t0 = time.perf_counter()
        champion = self.initial_model()
        ledger = _Ledger(self.policy_settings(policy)) if policy.kind == "triggered" else None
        records: list[PeriodRecord] = []
        replaced: tuple[PeriodRecord, Model] | None = None
        last = len(self.bounds) - 2
        try:
            for k in range(self.initial_periods, last + 1):
                idx = self.period_rows(k)
                scores = self.period_scores(champion, k)
                rec = PeriodRecord(k, self.bounds[k].isoformat(), self.bounds[k + 1].isoformat(), champion.name,
                                   int(idx.size), self.metric(self.y[idx], scores),
                                   short=int(idx.size) < self.min_period_rows)
                if replaced is not None:  # judge last period's promotion on this period's labels
                    before, old = replaced
                    before.next_metric_new = rec.metric
                    before.next_metric_replaced = self.metric(self.y[idx], self.period_scores(old, k))
                    before.bad_promotion = (None if rec.short
                                            else self.worse(rec.metric, before.next_metric_replaced))
                    replaced = None
                alerts, summary = self.monitor(champion, k, policy.variant)
                rec.alerts = [{"kind": a.kind, "metric": a.metric, "value": a.value, "threshold": a.threshold,
                               "reason": a.reason} for a in alerts]
                rec.monitoring = {k: summary.get(k) for k in MONITORING_KEYS}
                now = self.bounds[k + 1]
                if k < last:
                    new = self._decide(policy, champion, k, now, alerts, rec, ledger)
                    if new is not None:
                        rec.promoted = new.name
                        replaced = (rec, champion)
                        if ledger is not None:
                            ledger.promoted(now.to_pydatetime(), champion.name, new.name)
                        champion = new
                elif alerts and ledger is not None:
                    rec.ledger.append("end of history: no retrain")
                records.append(rec)
                self.say(f"{policy.name}: {self.bounds[k].date()} {_fmt(rec.metric)} served by {rec.served}"
                         + (f", promoted {rec.promoted}" if rec.promoted else ""))
        finally:
            if ledger is not None:
                ledger.close()
        return PolicyRun(policy, records, time.perf_counter() - t0)

    def _decide(self, policy: Policy, champion: Model, k: int, now: pd.Timestamp, alerts: list[AlertSpec],
                rec: PeriodRecord, ledger: _Ledger | None) -> Model | None:
        if policy.kind == "periodic":
            if (k - self.initial_periods + 1) % policy.every:
                return None
            rec.retrain, new = self.retrain(champion, now, gated=policy.gated, trigger="schedule")
            return new
        if policy.kind != "triggered" or ledger is None:
            return None
        admitted: tuple[AlertSpec, LedgerDecision] | None = None
        for alert in alerts:
            decision = ledger.admit(alert, now.to_pydatetime())
            rec.ledger.append(f"{alert.kind}: {decision.outcome}" + ("" if decision.run else f" ({decision.detail})"))
            if decision.run and admitted is None:
                admitted = (alert, decision)
        if admitted is None:
            return None
        alert, decision = admitted
        rec.retrain, new = self.retrain(champion, now, gated=True, trigger=f"alert:{alert.kind}")
        r = rec.retrain
        ledger.finish(decision, f"{r.outcome}: " + "; ".join(r.reasons)[:1500],
                      failed=r.outcome in ("refused", "failed"))
        return new


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def run_backtest(history: History, settings: Settings, policies: Sequence[Policy | str] = DEFAULT_POLICIES, *,
                 period: str = "month", initial_periods: int | None = None, bad_margin: float = 0.005,
                 progress: Progress | None = None, min_period_rows: int | None = None) -> BacktestResult:
    """Replay `history` under each policy; every input rule is checked before the first fit."""
    chosen = [p if isinstance(p, Policy) else parse_policy(p) for p in policies]
    if not chosen:
        raise BacktestInputError("--policy: choose at least one policy")
    names = [p.name for p in chosen]
    if len(set(names)) != len(names):
        raise BacktestInputError(f"--policy: listed twice: {sorted({n for n in names if names.count(n) > 1})}")
    if bad_margin < 0:
        raise BacktestInputError(f"--bad-margin: {bad_margin} must be >= 0")
    replay = Replay(history, settings, period=period, initial_periods=initial_periods, bad_margin=bad_margin,
                    progress=progress, min_period_rows=min_period_rows)
    t0 = time.perf_counter()
    initial = replay.initial_model()
    seconds = {"initial_fit": round(time.perf_counter() - t0, 3)}
    runs = []
    for policy in chosen:
        (progress or (lambda _m: None))(f"policy {policy.name}")
        runs.append(replay.run(policy))
        seconds[policy.name] = round(runs[-1].seconds, 3)
    return BacktestResult(
        history=history.describe(), period=period, metric="auc" if replay.binary else "rmse",
        higher_is_better=replay.binary, bad_margin=bad_margin,
        initial={**initial.describe(), "periods": replay.initial_periods}, settings=settings_used(replay.settings),
        runs=runs, seconds=seconds, min_period_rows=replay.min_period_rows)
