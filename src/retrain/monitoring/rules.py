"""Alert rules and the pure monitoring passes (no database): results, rules, in-memory windows.

Rules (`evaluate_rules`, thresholds in `Settings.monitor_*`):
- data_drift: at least `monitor_drift_min_features` features with PSI >= `monitor_psi_threshold`
  or (numeric) KS >= `monitor_ks_threshold`, when the window has >= `monitor_min_predictions` rows;
- prediction_drift: PSI of the champion's scores >= `monitor_prediction_psi_threshold`, same minimum;
- performance_decay: with >= `monitor_min_labels` matured labels, AUC < champion baseline -
  `monitor_auc_drop`, or AUC < `monitor_auc_floor`, or ECE > `monitor_ece_threshold`.
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
        })

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


def evaluate_rules(result: MonitoringResult, settings: Settings) -> list[AlertSpec]:
    """The alerts the settings' rules raise for `result` (pure; at most one per kind)."""
    key = dedupe_key(settings, result.model_name, result.model_version, result.window_from, result.window_to)

    def spec(kind: AlertKind, metric: str, value: float, threshold: float, reason: str) -> AlertSpec:
        return AlertSpec(kind, metric, float(value), float(threshold), reason, key, result.window_from,
                         result.window_to, result.model_name)

    alerts: list[AlertSpec] = []
    if result.n_predictions >= settings.monitor_min_predictions:
        hits: list[tuple[float, str, float, float]] = []  # (excess ratio, metric, value, threshold)
        for name, drift in result.features.items():
            if name in settings.monitor_ignore_features:
                continue
            if drift.psi is not None and drift.psi >= settings.monitor_psi_threshold:
                t = settings.monitor_psi_threshold
                hits.append((drift.psi / t, f"psi:{name}", drift.psi, t))
            elif drift.ks is not None and drift.ks >= settings.monitor_ks_threshold:
                t = settings.monitor_ks_threshold
                hits.append((drift.ks / t, f"ks:{name}", drift.ks, t))
        if len(hits) >= settings.monitor_drift_min_features:
            hits.sort(reverse=True)
            listed = ", ".join(f"{m}={v:.3f}" for _, m, v, _ in hits)
            _, metric, value, threshold = hits[0]
            alerts.append(spec("data_drift", metric, value, threshold,
                               f"{len(hits)} drifted feature(s) over {result.n_predictions} predictions: "
                               f"{listed}"))
    pred = result.prediction
    if (pred is not None and pred.psi is not None and result.n_scored >= settings.monitor_min_predictions
            and pred.psi >= settings.monitor_prediction_psi_threshold):
        alerts.append(spec("prediction_drift", "psi:score", pred.psi, settings.monitor_prediction_psi_threshold,
                           f"score PSI {pred.psi:.3f} over {result.n_scored} predictions "
                           f"(mean score {pred.mean or 0:.3f} vs reference {pred.ref_mean or 0:.3f})"))
    perf = result.performance
    if perf is not None and result.n_labelled >= settings.monitor_min_labels:
        decay: list[tuple[str, float, float, str]] = []
        if perf.auc is not None and result.baseline_auc is not None:
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
            alerts.append(spec("performance_decay", metric, value, threshold, reason))
    err = result.error
    if (err is not None and err.rmse is not None and result.baseline_rmse is not None
            and err.n >= settings.monitor_min_labels):
        limit = result.baseline_rmse * (1.0 + settings.monitor_rmse_increase)
        if err.rmse > limit:
            alerts.append(spec("performance_decay", "rmse", err.rmse, limit,
                               f"RMSE {err.rmse:.4g} > baseline {result.baseline_rmse:.4g} x "
                               f"(1 + {settings.monitor_rmse_increase:g}) on {err.n} matured labels (mean "
                               f"predicted {err.mean_predicted or 0:.4g} vs observed {err.observed_mean or 0:.4g})"))
    return alerts


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
    result = MonitoringResult(
        model_name=model_name, model_version=model_version, window_from=require_utc(window_from),
        window_to=require_utc(window_to), as_of=require_utc(as_of), n_predictions=int(n_pred),
        n_scored=int(score_arr.size), n_labelled=perf.n if perf else (error.n if error else 0), features=drifts,
        prediction=prediction, performance=perf,
        baseline_auc=None if regression else (baseline if baseline is not None else baseline_auc(profile)),
        error=error, baseline_rmse=float(ref_rmse) if isinstance(ref_rmse, int | float) else None,
    )
    result.alerts = evaluate_rules(result, settings)
    return result


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
