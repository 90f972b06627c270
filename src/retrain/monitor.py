"""Monitoring: drift and decay of the champion over a window of the prediction log, and alert rules.

`run_monitoring` reads the window (predictions + matured outcomes) in one query, compares it with
the champion's reference profile (`ModelVersion.reference_profile`, built by
`build_reference_profile` at training time), writes a `monitoring_runs` row and returns the alerts
that fire. The same core (`monitor_arrays`, `monitor_frame`) runs in-process for the backtest.

Rules (`evaluate_rules`, thresholds in `Settings.monitor_*`):
- data_drift: at least `monitor_drift_min_features` features with PSI >= `monitor_psi_threshold`
  or (numeric) KS >= `monitor_ks_threshold`, when the window has >= `monitor_min_predictions` rows;
- prediction_drift: PSI of the champion's scores >= `monitor_prediction_psi_threshold`, same minimum;
- performance_decay: with >= `monitor_min_labels` matured labels, AUC < champion baseline -
  `monitor_auc_drop`, or AUC < `monitor_auc_floor`, or ECE > `monitor_ece_threshold`.
All alerts of one window share one dedupe key (`monitor_dedupe_policy`), so one monitoring pass
can start at most one retrain.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Integer, Text, case, cast, select
from sqlalchemy.orm import Session, sessionmaker

from retrain.config import Settings
from retrain.db import Alias, ModelVersion, MonitoringRun, Outcome, Prediction, transaction
from retrain.events import AlertKind, AlertPayload
from retrain.monitor_stats import (
    EPS,
    OTHER,
    FeatureDrift,
    Performance,
    as_float_array,
    auc_score,
    build_reference_profile,
    categorical_drift,
    feature_drift,
    json_safe,
    ks_from_sketch,
    numeric_drift,
    psi,
    score_metrics,
)

__all__ = [
    "EPS", "OTHER", "AlertSpec", "FeatureDrift", "MonitoringResult", "Performance", "as_float_array",
    "auc_score", "build_reference_profile", "categorical_drift", "evaluate_rules", "feature_drift",
    "ks_from_sketch", "monitor_arrays", "monitor_frame", "numeric_drift", "performance_metrics", "psi",
    "run_monitoring", "score_metrics", "monitoring_history", "plot_history", "dedupe_key",
    "baseline_auc",
]

# Prediction-log columns that can be profiled directly; every other feature is read from `features`.
_ROW_COLUMNS = ("carrier", "origin", "dest", "tailnum")


def _utc(value: datetime) -> datetime:
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
    n_labelled: int  # of those, flights whose label had matured by as_of
    features: dict[str, FeatureDrift]
    prediction: FeatureDrift | None
    performance: Performance | None
    baseline_auc: float | None
    alerts: list[AlertSpec] = field(default_factory=list)
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
        return f"{base}:{_utc(window_from).isoformat()}/{_utc(window_to).isoformat()}"
    period = settings.monitor_dedupe_period_hours * 3600.0
    return f"{base}:p{int(_utc(window_to).timestamp() // period)}"


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
) -> MonitoringResult:
    """Drift, performance and rules from arrays already in memory.

    `columns` maps each profiled feature to its window values (all predictions); `scores` are the
    monitored version's scores, one per flight, and `labels` their matured labels (NaN = not known
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
    perf = score_metrics(label_arr, score_arr)
    n_pred = n_predictions if n_predictions is not None else max((d.n for d in drifts.values()), default=0)
    result = MonitoringResult(
        model_name=model_name, model_version=model_version, window_from=_utc(window_from),
        window_to=_utc(window_to), as_of=_utc(as_of), n_predictions=int(n_pred), n_scored=int(score_arr.size),
        n_labelled=perf.n, features=drifts, prediction=prediction, performance=perf,
        baseline_auc=baseline if baseline is not None else baseline_auc(profile),
    )
    result.alerts = evaluate_rules(result, settings)
    return result


def matured_labels(predictions: pd.DataFrame, outcomes: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
    """One row per flight (its latest prediction) with `label` = late if landed by `as_of`, else NaN."""
    need = {"flight_id", "score"}
    if missing := need - set(predictions.columns):
        raise ValueError(f"predictions: missing columns {sorted(missing)}")
    if missing := {"flight_id", "landed_at", "late"} - set(outcomes.columns):
        raise ValueError(f"outcomes: missing columns {sorted(missing)}")
    preds = predictions[["flight_id", "score"] + (["predicted_at"] if "predicted_at" in predictions else [])]
    if "predicted_at" in preds.columns:
        preds = preds.sort_values("predicted_at", kind="stable")
    preds = preds.drop_duplicates("flight_id", keep="last")
    landed = pd.to_datetime(outcomes["landed_at"], utc=True)
    matured = outcomes.loc[landed <= pd.Timestamp(_utc(as_of)), ["flight_id", "late"]]
    matured = matured.drop_duplicates("flight_id", keep="last")
    joined = preds.merge(matured, on="flight_id", how="left")
    joined["label"] = joined["late"].astype(float)
    return joined.drop(columns=["late"])


def performance_metrics(predictions: pd.DataFrame, outcomes: pd.DataFrame, as_of: datetime,
                        model_version: str | None = None) -> Performance:
    """AUC, log loss, Brier and calibration counting only labels that matured by `as_of`.

    predictions: flight_id, predicted_at, score[, model_version]; outcomes: flight_id, landed_at, late.
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
) -> MonitoringResult:
    """`monitor_arrays` over DataFrames (the backtest's entry point; no database).

    `predictions` holds flight_id, score, feature columns and optionally predicted_at/model_version.
    """
    scored = predictions
    if model_version is not None and "model_version" in predictions.columns:
        scored = predictions[predictions["model_version"] == model_version]
    joined = matured_labels(scored, outcomes, as_of)
    names = [n for n in (profile.get("features") or {}) if n in predictions.columns]
    return monitor_arrays(
        profile, {n: predictions[n].to_numpy() for n in names}, joined["score"].to_numpy(),
        joined["label"].to_numpy(), settings=settings, model_name=model_name, model_version=model_version,
        window_from=window_from, window_to=window_to, as_of=as_of, n_predictions=len(predictions),
        baseline=baseline,
    )


# ------------------------------------------------------------------------------------ database


def champion_version(session: Session, model_name: str) -> ModelVersion:
    """The version the `champion` alias points at; LookupError if there is none."""
    stmt = (select(ModelVersion).join(Alias, Alias.version_id == ModelVersion.id)
            .where(Alias.model_name == model_name, Alias.alias == "champion"))
    version = session.scalars(stmt).first()
    if version is None:
        raise LookupError(f"model_name: no champion for {model_name!r}; train and promote one first")
    return version


def _read_window(session: Session, model_name: str, window_from: datetime, window_to: datetime,
                 as_of: datetime, json_features: Sequence[str]) -> dict[str, Any]:
    """One query: the window's predictions with the matured label of each flight (or NULL)."""
    label = case((Outcome.landed_at <= as_of, cast(Outcome.late, Integer)), else_=None)
    stmt = (
        select(Prediction.flight_id, Prediction.model_version, Prediction.score, Prediction.carrier,
               Prediction.origin, Prediction.dest, Prediction.tailnum, cast(Prediction.features, Text),
               label)
        .outerjoin(Outcome, Outcome.flight_id == Prediction.flight_id)
        .where(Prediction.model_name == model_name, Prediction.predicted_at >= window_from,
               Prediction.predicted_at < window_to)
        .order_by(Prediction.id)
    )
    rows = session.execute(stmt).all()
    cols = list(zip(*rows, strict=True)) if rows else [()] * 9
    texts: tuple[str, ...] = cols[7]
    dicts: list[dict[str, Any]] = json.loads("[" + ",".join(texts) + "]") if texts else []
    features: dict[str, Any] = {name: [d.get(name) for d in dicts] for name in json_features}
    for i, name in enumerate(_ROW_COLUMNS, start=3):
        features[name] = np.asarray(cols[i], dtype=object)
    return {
        "flight_id": np.asarray(cols[0], dtype=object),
        "model_version": np.asarray(cols[1], dtype=object),
        "score": np.asarray(cols[2], dtype=float),
        "label": np.asarray([np.nan if v is None else v for v in cols[8]], dtype=float),
        "features": features,
    }


def run_monitoring(
    sessions: sessionmaker[Session],
    settings: Settings,
    model_name: str,
    window_from: datetime,
    window_to: datetime,
    as_of: datetime,
    *,
    version: str | None = None,
    write: bool = True,
) -> MonitoringResult:
    """Monitor the champion (or `version`) over predictions made in [window_from, window_to).

    Data drift uses every prediction in the window; prediction drift and performance use the
    monitored version's predictions, one per flight (the latest), labels counted only if the flight
    landed by `as_of`. Writes a `monitoring_runs` row unless `write=False`.
    """
    window_from, window_to, as_of = _utc(window_from), _utc(window_to), _utc(as_of)
    if window_to <= window_from:
        raise ValueError(f"window_to: {window_to.isoformat()} must be after window_from")
    t0 = time.perf_counter()
    with sessions() as session:
        if version is None:
            mv = champion_version(session, model_name)
        else:
            found = session.scalars(select(ModelVersion).where(ModelVersion.version == version)).first()
            if found is None:
                raise LookupError(f"version: no model version {version!r}")
            mv = found
        profile = mv.reference_profile or {}
        if not profile.get("features") and "score" not in profile:
            raise ValueError(f"reference_profile: model version {mv.version!r} has none; "
                             "store build_reference_profile(...) with the version at training time")
        json_names = [n for n in profile.get("features", {}) if n not in _ROW_COLUMNS]
        window = _read_window(session, model_name, window_from, window_to, as_of, json_names)
    t_read = time.perf_counter()
    mine = window["model_version"] == mv.version
    scored = pd.DataFrame({"flight_id": window["flight_id"][mine]})
    last = ~scored.duplicated("flight_id", keep="last").to_numpy()  # the latest prediction per flight
    result = monitor_arrays(
        profile, window["features"], window["score"][mine][last], window["label"][mine][last],
        settings=settings, model_name=model_name, model_version=mv.version, window_from=window_from,
        window_to=window_to, as_of=as_of, n_predictions=int(window["score"].size),
        baseline=baseline_auc(profile, mv.metrics),
    )
    t_compute = time.perf_counter()
    result.seconds = {"read": t_read - t0, "compute": t_compute - t_read}
    if write:
        row = MonitoringRun(
            model_name=model_name, model_version=mv.version, window_from=window_from, window_to=window_to,
            n_predictions=result.n_predictions, n_labelled=result.n_labelled, metrics=result.metrics_json(),
            alerts=[a.as_json() for a in result.alerts],
        )
        with transaction(sessions) as session:
            session.add(row)
        result.run_id = row.id
    result.seconds["write"] = time.perf_counter() - t_compute
    return result


# ---------------------------------------------------------------------------------- history/chart

CHART_METRICS = ("auc", "log_loss", "ece", "prediction_psi", "max_feature_psi", "max_feature_ks")


def monitoring_history(sessions: sessionmaker[Session], model_name: str,
                       limit: int | None = None) -> list[dict[str, Any]]:
    """Monitoring runs oldest first, flattened for a table artifact or a chart."""
    stmt = (select(MonitoringRun).where(MonitoringRun.model_name == model_name)
            .order_by(MonitoringRun.window_to.desc(), MonitoringRun.id.desc()))
    if limit:
        stmt = stmt.limit(limit)
    with sessions() as session:
        runs = list(session.scalars(stmt))
    out = []
    for run in reversed(runs):
        summary = (run.metrics or {}).get("summary", {})
        out.append({
            "run_id": run.id, "window_from": run.window_from, "window_to": run.window_to,
            "model_version": run.model_version, "n_predictions": run.n_predictions,
            "n_labelled": run.n_labelled, **summary,
            "alerts": ",".join(sorted({a.get("kind", "?") for a in run.alerts or []})),
        })
    return out


def plot_history(history: Sequence[Mapping[str, Any]], path: Path,
                 metrics: Sequence[str] = CHART_METRICS, title: str = "monitoring") -> Path:
    """PNG with one panel per metric over window end time; windows with alerts are marked in red."""
    from matplotlib.figure import Figure  # the OO API renders with Agg and keeps no global state

    shown = [m for m in metrics if any(h.get(m) is not None for h in history)] or list(metrics[:1])
    fig = Figure(figsize=(9, 1.9 * len(shown) + 0.6), layout="constrained")
    axes = fig.subplots(len(shown), 1, sharex=True, squeeze=False)[:, 0]
    times = [h["window_to"] for h in history]
    for ax, metric in zip(axes, shown, strict=True):
        values = [np.nan if h.get(metric) is None else float(h[metric]) for h in history]
        ax.plot(times, values, marker="o", markersize=3, linewidth=1.2)
        flagged = [(t, v) for t, v, h in zip(times, values, history, strict=True) if h.get("alerts")]
        if flagged:
            ax.scatter([t for t, _ in flagged], [v for _, v in flagged], color="red", zorder=3, s=18,
                       label="alert")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].set_title(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
