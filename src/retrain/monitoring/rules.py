"""Alert rules and the pure monitoring passes (no database): results, rules, in-memory windows.

Rules (`evaluate_rules`, thresholds in `Settings.monitor_*`), in the order the design prefers them:
- performance_decay: with >= `monitor_min_labels` matured labels, AUC < the expected AUC -
  `monitor_auc_drop`, or AUC < `monitor_auc_floor`, or ECE > `monitor_ece_threshold`
  (regression: RMSE > baseline x (1 + `monitor_rmse_increase`)). The expected AUC
  (`monitor_decay_baseline`) is by default the one the window's own calibrated scores lead to
  expect: falling short of it means the labels no longer follow the scores as they did (what a
  retrain fixes), while a harder case mix lowers both; without a calibrator, or with
  "validation", it is the champion's validation AUC (a week of rows: a lucky week set it high);
- estimated_decay: (binary) while matured labels are fewer than `monitor_min_labels` (or always,
  with `monitor_estimate_with_labels`: the estimate estimates what the labels realize) and the
  window holds >= `monitor_min_predictions` scores, the AUC estimated from the calibrated scores
  (`core.estimate`) below the lower of the band its reference chunks span and the reference
  estimate - `monitor_auc_drop` (a drop inside the band is noise, a drop smaller than the margin
  does not pay for a retrain); (both objectives, labels or not) the gain-weighted share of the
  window's inputs outside the training range >= `monitor_out_of_range_share`: extrapolation;
- data_drift: features whose PSI or KS pass their threshold (learned from the reference's chunks:
  the `monitor_reference_quantile` of the chunks' statistic, floored at `monitor_psi_threshold` /
  `monitor_ks_threshold`; the fixed values for profiles without learned ones), at least
  `monitor_drift_min_features` of them carrying >= `monitor_drift_importance_share` of the
  champion's gain importance, when the window has >= `monitor_min_predictions` rows;
- prediction_drift: PSI of the champion's scores >= its learned threshold (floored at
  `monitor_prediction_psi_threshold`), same minimum.
With `monitor_drift_requires_performance` (default) the two drift rules fire only when one of the
performance rules fired too: drift names what moved, it does not start a retrain by itself.
Learned thresholds and the estimate's band apply to windows within a factor 2 of the length they
were learned for; other windows (and profiles from before them) use the fixed settings.
All alerts of one window share one dedupe key (`monitor_dedupe_policy`), so one monitoring pass
can start at most one retrain. `monitor_frame` is the backtest's entry point; `retrain.monitoring.monitor`
re-exports everything here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from retrain.core.config import Settings
from retrain.core.estimate import EstimatedPerformance, estimate_performance, out_of_range_share
from retrain.core.events import AlertKind, AlertPayload
from retrain.core.stats import (
    ErrorPerformance,
    FeatureDrift,
    Performance,
    as_float_array,
    error_metrics,
    feature_drift,
    json_safe,
    numeric_drift,
    score_metrics,
)


def require_utc(value: datetime) -> datetime:
    """The same instant in UTC; refuses naive datetimes (the database would misread them)."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: pass a timezone-aware UTC time")
    return value.astimezone(UTC)


@dataclass(frozen=True)
class AlertSpec:
    """A rule that fired: what, how far past its threshold, and the key the ledger dedupes on."""

    kind: AlertKind
    metric: str
    value: float
    threshold: float
    reason: str
    dedupe_key: str
    window_from: datetime
    window_to: datetime
    model_name: str

    def to_payload(self, source: str = "monitor") -> AlertPayload:
        """The event payload of this alert."""
        return AlertPayload(kind=self.kind, metric=self.metric, value=self.value, threshold=self.threshold,
                            window_from=self.window_from, window_to=self.window_to,
                            dedupe_key=self.dedupe_key, reason=self.reason, source=source,
                            model=self.model_name)

    def as_json(self) -> dict[str, Any]:
        return json_safe({**asdict(self), "window_from": self.window_from.isoformat(),
                          "window_to": self.window_to.isoformat()})  # type: ignore[no-any-return]


@dataclass
class MonitoringResult:
    """Everything one monitoring pass measured, and the alerts that fired."""

    model_name: str
    model_version: str | None
    window_from: datetime
    window_to: datetime
    as_of: datetime
    n_predictions: int  # all logged predictions in the window (data drift)
    n_scored: int  # predictions by the monitored version (prediction drift, performance)
    n_labelled: int  # of those, rows whose label had matured by as_of
    features: dict[str, FeatureDrift]
    prediction: FeatureDrift | None
    performance: Performance | None
    baseline_auc: float | None
    alerts: list[AlertSpec] = field(default_factory=list)
    error: ErrorPerformance | None = None  # regression: error on matured labels
    baseline_rmse: float | None = None
    # label-free: the estimate from calibrated scores (binary), its reference band, extrapolation
    estimated: EstimatedPerformance | None = None
    reference_estimate: float | None = None  # the estimated AUC of the reference (validation) rows
    estimate_lower: float | None = None  # band of the estimate over reference chunks of the window's size
    estimate_upper: float | None = None
    out_of_range: float | None = None  # gain-weighted share of inputs outside the training range
    # set by the pass from the rules: thresholds judged against, drifted importance, held-back drift
    estimate_threshold: float | None = None
    drifted_importance: float | None = None
    notes: list[str] = field(default_factory=list)
    run_id: int | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, float | None]:
        """The headline numbers (one per chart line)."""
        psis = [d.psi for d in self.features.values() if d.psi is not None]
        kss = [d.ks for d in self.features.values() if d.ks is not None]
        perf = self.performance
        return json_safe({  # type: ignore[no-any-return]
            "max_feature_psi": max(psis) if psis else None,
            "max_feature_ks": max(kss) if kss else None,
            "prediction_psi": self.prediction.psi if self.prediction else None,
            "prediction_ks": self.prediction.ks if self.prediction else None,
            "auc": perf.auc if perf else None,
            "baseline_auc": self.baseline_auc,
            "log_loss": perf.log_loss if perf else None,
            "brier": perf.brier if perf else None,
            "ece": perf.ece if perf else None,
            "mean_predicted": perf.mean_predicted if perf else None,
            "observed_rate": perf.observed_rate if perf else None,
            "rmse": self.error.rmse if self.error else None,
            "mae": self.error.mae if self.error else None,
            "baseline_rmse": self.baseline_rmse,
            "estimated_auc": self.estimated.auc if self.estimated else None,
            "estimated_auc_threshold": self.estimate_threshold,
            "estimated_auc_lower": self.estimate_lower,
            "estimated_auc_upper": self.estimate_upper,
            "reference_estimated_auc": self.reference_estimate,
            "estimated_accuracy": self.estimated.accuracy if self.estimated else None,
            "estimated_positive_rate": self.estimated.positive_rate if self.estimated else None,
            "out_of_range_share": self.out_of_range,
            "drifted_importance": self.drifted_importance,
        })

    def estimate_covers_realized(self) -> bool | None:
        """Whether the realized AUC lies within the reference chunks' spread around the estimate
        (band shifted to the estimate); None until both and the band are known."""
        est = self.estimated.auc if self.estimated else None
        real = self.performance.auc if self.performance else None
        if None in (est, real, self.reference_estimate, self.estimate_lower, self.estimate_upper):
            return None
        assert est is not None and real is not None and self.reference_estimate is not None
        assert self.estimate_lower is not None and self.estimate_upper is not None
        return (est - (self.reference_estimate - self.estimate_lower) <= real
                <= est + (self.estimate_upper - self.reference_estimate))

    def metrics_json(self) -> dict[str, Any]:
        """The JSON stored in `monitoring_runs.metrics`."""
        return json_safe({  # type: ignore[no-any-return]
            "summary": self.summary(),
            "as_of": self.as_of.isoformat(),
            "n_scored": self.n_scored,
            "features": {k: asdict(v) for k, v in self.features.items()},
            "prediction": asdict(self.prediction) if self.prediction else None,
            "performance": asdict(self.performance) if self.performance else None,
            "error": asdict(self.error) if self.error else None,
            "estimated": asdict(self.estimated) if self.estimated else None,
            "notes": self.notes,
            "seconds": self.seconds,
        })


# -------------------------------------------------------------------------------------- rules


def dedupe_key(settings: Settings, model_name: str, model_version: str | None,
               window_from: datetime, window_to: datetime) -> str:
    """The ledger key of a monitoring window's alerts, per `monitor_dedupe_policy`."""
    base = f"{model_name}:{model_version or '-'}"
    if settings.monitor_dedupe_policy == "champion":
        return base
    if settings.monitor_dedupe_policy == "window":
        return f"{base}:{require_utc(window_from).isoformat()}/{require_utc(window_to).isoformat()}"
    period = settings.monitor_dedupe_period_hours * 3600.0
    return f"{base}:p{int(require_utc(window_to).timestamp() // period)}"


def drift_limits(drift: FeatureDrift, settings: Settings, *, scores: bool = False) -> tuple[float, float | None]:
    """PSI and KS thresholds of a feature (`scores`: of the scores, PSI only): the reference chunks'
    learned quantile when the profile has one, never below the fixed setting."""
    if scores:
        return max(drift.psi_learned or 0.0, settings.monitor_prediction_psi_threshold), None
    return (max(drift.psi_learned or 0.0, settings.monitor_psi_threshold),
            max(drift.ks_learned or 0.0, settings.monitor_ks_threshold))


def estimate_threshold(result: MonitoringResult, settings: Settings) -> float | None:
    """The estimated AUC below which estimated_decay fires: the lower of the reference chunks' band
    and the reference estimate - `monitor_auc_drop` (the realized baseline when the profile has no
    reference estimate)."""
    reference = result.reference_estimate if result.reference_estimate is not None else result.baseline_auc
    if reference is None:
        return None
    limit = reference - settings.monitor_auc_drop
    return min(limit, result.estimate_lower) if result.estimate_lower is not None else limit


@dataclass
class Verdict:
    """What the rules decided for one window, and why (the alerts plus what was held back)."""

    alerts: list[AlertSpec]
    drifted: dict[str, tuple[float, str, float, float]]  # feature -> (excess ratio, metric, value, threshold)
    drifted_importance: float | None
    estimate_threshold: float | None
    notes: list[str]


def judge(result: MonitoringResult, settings: Settings) -> Verdict:
    """Apply the rules to `result` (pure): alerts, drifted features, thresholds used, notes."""
    key = dedupe_key(settings, result.model_name, result.model_version, result.window_from, result.window_to)

    def spec(kind: AlertKind, metric: str, value: float, threshold: float, reason: str) -> AlertSpec:
        return AlertSpec(kind, metric, float(value), float(threshold), reason, key, result.window_from,
                         result.window_to, result.model_name)

    notes: list[str] = []
    performance: list[AlertSpec] = []
    perf = result.performance
    err = result.error
    labels_judge = ((perf is not None and result.n_labelled >= settings.monitor_min_labels)
                    or (err is not None and err.n >= settings.monitor_min_labels))
    # --- realized decay on matured labels
    if perf is not None and result.n_labelled >= settings.monitor_min_labels:
        decay: list[tuple[str, float, float, str]] = []
        expected = result.estimated.auc if result.estimated is not None else None
        if settings.monitor_decay_baseline == "estimate" and perf.auc is not None and expected is not None:
            limit = expected - settings.monitor_auc_drop
            if perf.auc < limit:
                decay.append(("auc", perf.auc, limit,
                              f"AUC {perf.auc:.3f} < {expected:.3f} expected from the window's calibrated scores "
                              f"- {settings.monitor_auc_drop:.3f} (baseline {result.baseline_auc or 0:.3f})"))
        elif perf.auc is not None and result.baseline_auc is not None:
            limit = result.baseline_auc - settings.monitor_auc_drop
            if perf.auc < limit:
                decay.append(("auc", perf.auc, limit,
                              f"AUC {perf.auc:.3f} < baseline {result.baseline_auc:.3f} - "
                              f"{settings.monitor_auc_drop:.3f}"))
        if perf.auc is not None and perf.auc < settings.monitor_auc_floor:
            decay.append(("auc", perf.auc, settings.monitor_auc_floor,
                          f"AUC {perf.auc:.3f} < floor {settings.monitor_auc_floor:.3f}"))
        ece_t = settings.monitor_ece_threshold
        if ece_t is not None and perf.ece is not None and perf.ece > ece_t:
            decay.append(("ece", perf.ece, ece_t,
                          f"ECE {perf.ece:.3f} > {ece_t:.3f} (predicted {perf.mean_predicted or 0:.3f} vs "
                          f"observed {perf.observed_rate or 0:.3f})"))
        if decay:
            metric, value, threshold, _ = decay[0]
            reason = "; ".join(d[3] for d in decay) + f" on {result.n_labelled} matured labels"
            performance.append(spec("performance_decay", metric, value, threshold, reason))
    if (err is not None and err.rmse is not None and result.baseline_rmse is not None
            and err.n >= settings.monitor_min_labels):
        limit = result.baseline_rmse * (1.0 + settings.monitor_rmse_increase)
        if err.rmse > limit:
            performance.append(spec(
                "performance_decay", "rmse", err.rmse, limit,
                f"RMSE {err.rmse:.4g} > baseline {result.baseline_rmse:.4g} x (1 + {settings.monitor_rmse_increase:g}) "
                f"on {err.n} matured labels (mean predicted {err.mean_predicted or 0:.4g} vs observed "
                f"{err.observed_mean or 0:.4g})"))
    # --- label-free estimate, while labels are too few to judge (or always, if the settings say so)
    est_limit = estimate_threshold(result, settings)
    if result.n_scored >= settings.monitor_min_predictions and (
            not labels_judge or settings.monitor_estimate_with_labels):
        est = result.estimated
        if est is not None and est.auc is not None and est_limit is not None and est.auc < est_limit:
            performance.append(spec(
                "estimated_decay", "estimated_auc", est.auc, est_limit,
                f"estimated AUC {est.auc:.3f} (calibrated scores of {est.n} rows) < {est_limit:.3f}: "
                f"reference estimate {result.reference_estimate or 0:.3f}, its chunks' band "
                f"[{result.estimate_lower or 0:.3f}, {result.estimate_upper or 0:.3f}], margin "
                f"{settings.monitor_auc_drop:.3f}; {result.n_labelled} matured labels"))
    # --- extrapolation: with or without labels (those of this window cannot rule out the next one's)
    oor = result.out_of_range
    if (oor is not None and result.n_predictions >= settings.monitor_min_predictions
            and oor >= settings.monitor_out_of_range_share):
        performance.append(spec(
            "estimated_decay", "out_of_range", oor, settings.monitor_out_of_range_share,
            f"{oor:.1%} of the window's inputs (weighted by gain importance) lie outside the training range "
            f">= {settings.monitor_out_of_range_share:.1%}: the trees answer them with their edge leaves; "
            f"{result.n_labelled} matured labels"))
    performance = [a for i, a in enumerate(performance) if a.kind not in {b.kind for b in performance[:i]}]
    moved = "; ".join(f"{a.kind} {a.metric}={a.value:.4g}" for a in performance)
    # --- drift, judged against learned thresholds and weighted by importance
    drift_alerts: list[AlertSpec] = []
    drifted: dict[str, tuple[float, str, float, float]] = {}
    share: float | None = None
    if result.n_predictions >= settings.monitor_min_predictions:
        for name, drift in result.features.items():
            if name in settings.monitor_ignore_features:
                continue
            psi_t, ks_t = drift_limits(drift, settings)
            if drift.psi is not None and drift.psi >= psi_t:
                drifted[name] = (drift.psi / psi_t, f"psi:{name}", drift.psi, psi_t)
            elif drift.ks is not None and ks_t is not None and drift.ks >= ks_t:
                drifted[name] = (drift.ks / ks_t, f"ks:{name}", drift.ks, ks_t)
        weights = [d.importance for d in result.features.values() if d.importance is not None]
        if weights:
            share = sum(result.features[n].importance or 0.0 for n in drifted)
        enough = len(drifted) >= settings.monitor_drift_min_features and (
            share is None or share >= settings.monitor_drift_importance_share)
        if drifted and not enough:
            notes.append(f"data drift in {len(drifted)} feature(s) carrying {share or 0:.1%} of the importance: "
                         f"below {settings.monitor_drift_importance_share:.0%} (or fewer than "
                         f"{settings.monitor_drift_min_features} features), no alert")
        if enough:
            hits = sorted(drifted.values(), reverse=True)
            listed = ", ".join(f"{m}={v:.3f} (>= {t:.3f})" for _, m, v, t in hits)
            _, metric, value, threshold = hits[0]
            weight = "" if share is None else f" carrying {share:.0%} of the model's gain importance"
            drift_alerts.append(spec("data_drift", metric, value, threshold,
                                     f"{len(hits)} drifted feature(s){weight} over {result.n_predictions} "
                                     f"predictions: {listed}" + (f"; performance moved: {moved}" if moved else "")))
    pred = result.prediction
    if pred is not None and pred.psi is not None and result.n_scored >= settings.monitor_min_predictions:
        psi_t, _ = drift_limits(pred, settings, scores=True)
        if pred.psi >= psi_t:
            drift_alerts.append(spec(
                "prediction_drift", "psi:score", pred.psi, psi_t,
                f"score PSI {pred.psi:.3f} >= {psi_t:.3f} over {result.n_scored} predictions (mean score "
                f"{pred.mean or 0:.3f} vs reference {pred.ref_mean or 0:.3f})"
                + (f"; performance moved: {moved}" if moved else "")))
    if drift_alerts and settings.monitor_drift_requires_performance and not performance:
        notes.append("drift held back: " + ", ".join(f"{a.kind} {a.metric}={a.value:.3f}" for a in drift_alerts)
                     + " while performance did not move (monitor_drift_requires_performance)")
        drift_alerts = []
    return Verdict(performance + drift_alerts, drifted, share, est_limit, notes)


def evaluate_rules(result: MonitoringResult, settings: Settings) -> list[AlertSpec]:
    """The alerts the settings' rules raise for `result` (pure; at most one per kind)."""
    return judge(result, settings).alerts


# ------------------------------------------------------------------------------- pure passes


def baseline_auc(profile: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> float | None:
    """The champion's reference AUC: the profile's, else the version's validation metric."""
    perf = profile.get("performance") or {}
    for source, key in ((perf, "auc"), (metrics or {}, "valid_auc"), (metrics or {}, "auc"),
                        (metrics or {}, "validation_auc")):
        value = source.get(key)
        if isinstance(value, int | float):
            return float(value)
    return None


def monitor_arrays(
    profile: Mapping[str, Any],
    columns: Mapping[str, Any],
    scores: Any,
    labels: Any,
    *,
    settings: Settings,
    model_name: str,
    model_version: str | None,
    window_from: datetime,
    window_to: datetime,
    as_of: datetime,
    n_predictions: int | None = None,
    baseline: float | None = None,
    regression: bool = False,
) -> MonitoringResult:
    """Drift, performance and rules from arrays already in memory (`regression`: error decay on
    matured values instead of AUC/ECE on matured 0/1 labels).

    `columns` maps each profiled feature to its window values (all predictions); `scores` are the
    monitored version's scores, one per row, and `labels` their matured labels (NaN = not known
    by `as_of`: such rows never count in performance).
    """
    ref_features: Mapping[str, Any] = profile.get("features") or {}
    if not ref_features and "score" not in profile:
        raise ValueError("reference_profile: empty; build it with build_reference_profile at training time")
    drifts = {name: feature_drift(name, ref, columns[name]) for name, ref in ref_features.items()
              if name in columns}
    score_arr = as_float_array(scores)
    label_arr = as_float_array(labels)
    prediction = numeric_drift("score", profile["score"], score_arr) if "score" in profile else None
    perf = None if regression else score_metrics(label_arr, score_arr)
    error = error_metrics(label_arr, score_arr) if regression else None
    ref_rmse = (profile.get("error") or {}).get("rmse")
    n_pred = n_predictions if n_predictions is not None else max((d.n for d in drifts.values()), default=0)
    window_days = (require_utc(window_to) - require_utc(window_from)).total_seconds() / 86_400
    learned = _learned(profile, window_days)
    importance: Mapping[str, float] = profile.get("importance") or {}
    learned_features: Mapping[str, Any] = (learned.get("drift_thresholds") or {}).get("features") or {}
    for name, drift in drifts.items():
        limits = learned_features.get(name) or {}
        drift.psi_learned, drift.ks_learned = limits.get("psi"), limits.get("ks")
        drift.importance = float(importance[name]) if name in importance else None
    band = learned.get("estimate_band") or {}
    if prediction is not None:
        prediction.psi_learned = ((learned.get("drift_thresholds") or {}).get("score") or {}).get("psi")
    result = MonitoringResult(
        model_name=model_name, model_version=model_version, window_from=require_utc(window_from),
        window_to=require_utc(window_to), as_of=require_utc(as_of), n_predictions=int(n_pred),
        n_scored=int(score_arr.size), n_labelled=perf.n if perf else (error.n if error else 0), features=drifts,
        prediction=prediction, performance=perf,
        baseline_auc=None if regression else (baseline if baseline is not None else baseline_auc(profile)),
        error=error, baseline_rmse=float(ref_rmse) if isinstance(ref_rmse, int | float) else None,
        estimated=None if regression else estimate_performance(profile, score_arr, settings.decision_threshold),
        reference_estimate=band.get("reference"), estimate_lower=band.get("lower"),
        estimate_upper=band.get("upper"),
        out_of_range=out_of_range_share(profile, columns, settings.monitor_ignore_features),
    )
    verdict = judge(result, settings)
    result.alerts, result.notes = verdict.alerts, verdict.notes
    result.estimate_threshold, result.drifted_importance = verdict.estimate_threshold, verdict.drifted_importance
    for name, drift in drifts.items():
        drift.psi_threshold, drift.ks_threshold = drift_limits(drift, settings)
        drift.drifted = name in verdict.drifted
    if prediction is not None:
        prediction.psi_threshold = drift_limits(prediction, settings, scores=True)[0]
        prediction.drifted = prediction.psi is not None and prediction.psi >= prediction.psi_threshold
    return result


def _learned(profile: Mapping[str, Any], window_days: float) -> dict[str, Any]:
    """The profile's learned thresholds and estimate band, when they were learned on chunks of about
    this window's length (within a factor 2); else none (the fixed settings apply)."""
    out: dict[str, Any] = {}
    for key in ("drift_thresholds", "estimate_band"):
        entry = profile.get(key) or {}
        days = entry.get("window_days")
        if isinstance(days, int | float) and days > 0 and 0.5 <= window_days / days <= 2.0:
            out[key] = entry
    return out


def matured_labels(predictions: pd.DataFrame, outcomes: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
    """One row per entity key (its latest prediction) with its `label` if known by `as_of`, else NaN.

    predictions: entity_key, score[, predicted_at]; outcomes: entity_key, available_at, label.
    """
    need = {"entity_key", "score"}
    if missing := need - set(predictions.columns):
        raise ValueError(f"predictions: missing columns {sorted(missing)}")
    if missing := {"entity_key", "available_at", "label"} - set(outcomes.columns):
        raise ValueError(f"outcomes: missing columns {sorted(missing)}")
    preds = predictions[["entity_key", "score"] + (["predicted_at"] if "predicted_at" in predictions else [])]
    if "predicted_at" in preds.columns:
        preds = preds.sort_values("predicted_at", kind="stable")
    preds = preds.drop_duplicates("entity_key", keep="last")
    known = pd.to_datetime(outcomes["available_at"], utc=True)
    matured = outcomes.loc[known <= pd.Timestamp(require_utc(as_of)), ["entity_key", "label"]]
    matured = matured.drop_duplicates("entity_key", keep="last")
    joined = preds.merge(matured, on="entity_key", how="left")
    joined["label"] = joined["label"].astype(float)
    return joined


def performance_metrics(predictions: pd.DataFrame, outcomes: pd.DataFrame, as_of: datetime,
                        model_version: str | None = None) -> Performance:
    """AUC, log loss, Brier and calibration counting only labels that matured by `as_of`.

    predictions: entity_key, predicted_at, score[, model_version]; outcomes: entity_key, available_at, label.
    """
    if model_version is not None and "model_version" in predictions.columns:
        predictions = predictions[predictions["model_version"] == model_version]
    joined = matured_labels(predictions, outcomes, as_of)
    return score_metrics(joined["label"].to_numpy(), joined["score"].to_numpy())


def monitor_frame(
    profile: Mapping[str, Any],
    predictions: pd.DataFrame,
    outcomes: pd.DataFrame,
    *,
    settings: Settings,
    model_name: str,
    model_version: str | None,
    window_from: datetime,
    window_to: datetime,
    as_of: datetime,
    baseline: float | None = None,
    regression: bool = False,
) -> MonitoringResult:
    """`monitor_arrays` over DataFrames (the backtest's entry point; no database).

    `predictions` holds entity_key, score, feature columns and optionally predicted_at/model_version.
    A profiled feature absent from `predictions` counts as missing in every row (so it drifts).
    """
    scored = predictions
    if model_version is not None and "model_version" in predictions.columns:
        scored = predictions[predictions["model_version"] == model_version]
    joined = matured_labels(scored, outcomes, as_of)
    columns = {n: predictions[n].to_numpy() if n in predictions.columns else np.full(len(predictions), np.nan)
               for n in (profile.get("features") or {})}
    return monitor_arrays(
        profile, columns, joined["score"].to_numpy(),
        joined["label"].to_numpy(), settings=settings, model_name=model_name, model_version=model_version,
        window_from=window_from, window_to=window_to, as_of=as_of, n_predictions=len(predictions),
        baseline=baseline, regression=regression,
    )
