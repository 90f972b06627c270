"""Monitoring: drift and decay of the champion over a window of the prediction log.

`run_monitoring` reads the window (three lean queries: the features JSON concatenated by the
database, category counts, and the monitored version's scores with their matured labels), compares
it with the champion's reference profile (`ModelVersion.reference_profile`, built by
`build_reference_profile` at training time; monitoring never rescans training data), writes a
`monitoring_runs` row and returns the alerts that fire. `monitoring_history` / `plot_history`
feed the flow's artifacts (a table and a PNG of each metric over time).

This module is the public face: it re-exports the math (`monitor_stats`) and the rules and pure
passes (`monitor_rules`, used in-process by the backtest).
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.json as pa_json
from sqlalchemy import Text, and_, case, cast, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from retrain.core.config import Settings
from retrain.core.db import Alias, ModelVersion, MonitoringRun, Outcome, Prediction, transaction
from retrain.core.stats import as_float_array, score_metrics
from retrain.monitoring.rules import (
    MonitoringResult,
    baseline_auc,
    monitor_arrays,
    require_utc,
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


def _feature_schema(profile_features: Mapping[str, Any]) -> tuple[list[str], set[str], pa.Schema]:
    names = list(profile_features)
    numeric = {n for n in names if (profile_features[n] or {}).get("type") != "categorical"}
    schema = pa.schema([(n, pa.float64() if n in numeric else pa.string()) for n in names])
    return names, numeric, schema


def decode_feature_lines(blob: bytes, n_rows: int, profile_features: Mapping[str, Any]) -> dict[str, Any] | None:
    """Columns from newline-separated JSON objects, parsed by pyarrow in C++; None if it refuses.

    pyarrow fills the columns directly (the `json` module plus per-key extraction took ~3x longer
    at 100k rows). It refuses e.g. a string in a numeric field or multi-line JSON: the caller then
    decodes row by row with the standard library (`decode_feature_json`).
    """
    names, _, schema = _feature_schema(profile_features)
    if n_rows == 0 or not names:
        return {name: np.full(n_rows, np.nan) for name in names}
    try:
        table = pa_json.read_json(
            io.BytesIO(blob),
            parse_options=pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != n_rows:
        return None
    return {n: table.column(n).to_numpy(zero_copy_only=False) for n in names}


def decode_feature_json(texts: Sequence[str], profile_features: Mapping[str, Any]) -> dict[str, Any]:
    """Columns of the `features` JSON texts, one array per profiled feature (missing keys -> null)."""
    fast = decode_feature_lines("\n".join(texts).encode(), len(texts), profile_features)
    if fast is not None:
        return fast
    names, numeric, _ = _feature_schema(profile_features)
    rows: list[dict[str, Any]] = [json.loads(t) if t else {} for t in texts]
    return {n: (as_float_array([r.get(n) for r in rows]) if n in numeric
                else np.asarray([r.get(n) for r in rows], dtype=object)) for n in names}


def _read_window(session: Session, model_name: str, version: str, window_from: datetime, window_to: datetime,
                 as_of: datetime, profile: Mapping[str, Any]) -> dict[str, Any]:
    """The window's data in three lean queries, shaped for `monitor_arrays`.

    The features JSON concatenated by the database (decoded column-wise), the profiled request
    attributes (the keys of `attributes`) as category counts from
    one `GROUP BY` over the attributes JSON, and the monitored version's (entity_key, score, matured
    label) in insertion order, the label NULL unless its outcome was available by `as_of`.
    """
    conn = session.connection()
    in_window = (Prediction.model_name == model_name, Prediction.predicted_at >= window_from,
                 Prediction.predicted_at < window_to)
    ref_features: Mapping[str, Any] = profile.get("features") or {}
    columns: dict[str, Any] = {}
    # which profiled names are request attributes: the keys of the use case's attributes (one row tells)
    sample = conn.execute(select(Prediction.attributes).where(*in_window).limit(1)).scalar()
    attribute_names = [n for n in ref_features if isinstance(sample, dict) and n in sample]
    if attribute_names:
        # one GROUP BY over the attributes' JSON text, decoded and marginalized here: as fast as the
        # former GROUP BY over plain columns, where extracting each key in SQL cost 50% more
        as_json = cast(Prediction.attributes, Text)
        counts: dict[str, Counter[str | None]] = {n: Counter() for n in attribute_names}
        for blob, count in conn.execute(select(as_json, func.count()).where(*in_window).group_by(as_json)):
            attrs = json.loads(blob) if blob else {}
            for name in attribute_names:
                value = attrs.get(name) if isinstance(attrs, dict) else None
                counts[name][None if value is None else str(value)] += count
        columns.update(counts)
    json_features = {n: ref for n, ref in ref_features.items() if n not in attribute_names}
    as_text = cast(Prediction.features, Text)
    decoded: dict[str, Any] | None = None
    if json_features:
        # the database concatenates the JSON texts (one line each): no Python object per row
        try:
            blob, n_predictions = conn.execute(
                select(func.aggregate_strings(as_text, "\n"), func.count()).where(*in_window)).one()
            decoded = decode_feature_lines((blob or "").encode(), int(n_predictions), json_features)
        except DBAPIError:  # e.g. SQLite's 1 GB string limit: fall back to rows below
            session.rollback()
            conn = session.connection()
        if decoded is None:
            texts = conn.execute(select(as_text).where(*in_window)).scalars().all()
            decoded, n_predictions = decode_feature_json(texts, json_features), len(texts)
        columns.update(decoded)
    else:
        n_predictions = conn.execute(select(func.count()).select_from(Prediction).where(*in_window)).scalar_one()
    return {"columns": columns, "n_predictions": int(n_predictions),
            **_scores_and_labels(session, model_name, version, window_from, window_to, as_of)}


def _scores_and_labels(session: Session, model_name: str, version: str, window_from: datetime,
                       window_to: datetime, as_of: datetime) -> dict[str, np.ndarray]:
    """The version's (entity_key, score, label matured by `as_of` else NaN) in the window, in insertion order."""
    in_window = (Prediction.model_name == model_name, Prediction.predicted_at >= window_from,
                 Prediction.predicted_at < window_to)
    label = case((Outcome.available_at <= as_of, Outcome.label), else_=None)
    stmt = (
        select(Prediction.entity_key, Prediction.score, label)
        .outerjoin(Outcome, and_(Outcome.model_name == Prediction.model_name,
                                 Outcome.entity_key == Prediction.entity_key))
        .where(*in_window, Prediction.model_version == version)
        .order_by(Prediction.id)
    )
    rows = session.connection().execute(stmt).all()
    entity_keys, scores, labels = (list(c) for c in zip(*rows, strict=True)) if rows else ([], [], [])
    return {
        "entity_key": np.asarray(entity_keys, dtype=object),
        "score": np.asarray(scores, dtype=float),
        "label": np.asarray([np.nan if v is None else v for v in labels], dtype=float),
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
    monitored version's predictions, one per entity (the latest), labels counted only if the outcome
    was available by `as_of`. Writes a `monitoring_runs` row unless `write=False`.
    """
    window_from, window_to, as_of = require_utc(window_from), require_utc(window_to), require_utc(as_of)
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
        window = _read_window(session, model_name, mv.version, window_from, window_to, as_of, profile)
        metrics = dict(mv.metrics or {})
        monitored = mv.version
        regression = str((mv.params or {}).get("objective", "binary")) == "regression"
    t_read = time.perf_counter()
    # one score per entity, its latest prediction (rows come in insertion order)
    last = ~pd.Series(window["entity_key"]).duplicated(keep="last").to_numpy()
    result = monitor_arrays(
        profile, window["columns"], window["score"][last], window["label"][last],
        settings=settings, model_name=model_name, model_version=monitored, window_from=window_from,
        window_to=window_to, as_of=as_of, n_predictions=window["n_predictions"],
        baseline=None if regression else baseline_auc(profile, metrics), regression=regression,
    )
    t_compute = time.perf_counter()
    result.seconds = {"read": t_read - t0, "compute": t_compute - t_read}
    if write:
        row = MonitoringRun(
            model_name=model_name, model_version=monitored, window_from=window_from, window_to=window_to,
            n_predictions=result.n_predictions, n_labelled=result.n_labelled, metrics=result.metrics_json(),
            alerts=[a.as_json() for a in result.alerts],
        )
        with transaction(sessions) as session:
            session.add(row)
        result.run_id = row.id
    result.seconds["write"] = time.perf_counter() - t_compute
    return result


# ---------------------------------------------------------------------------------- history/chart

# one panel per entry; a tuple shares a panel (the estimate against the realized AUC, with the
# estimate's alert threshold; the regression error against its baseline)
CHART_METRICS: tuple[str | tuple[str, ...], ...] = (
    ("auc", "estimated_auc", "estimated_auc_threshold"), ("rmse", "baseline_rmse"), "log_loss", "ece",
    "prediction_psi", "max_feature_psi", "drifted_importance", "out_of_range_share")


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


def estimate_history(sessions: sessionmaker[Session], model_name: str, as_of: datetime,
                     limit: int | None = None) -> list[dict[str, Any]]:
    """Each stored monitoring run's estimated AUC (made when the run ran, before most labels) against
    the realized AUC of the same window and version on the labels matured by `as_of`, oldest first.

    `covered`: the realized AUC lies within the reference chunks' spread shifted to the estimate.
    Plot it with `plot_history(rows, path, ESTIMATE_METRICS)`.
    """
    as_of = require_utc(as_of)
    rows = []
    for run in monitoring_history(sessions, model_name, limit):
        if run.get("estimated_auc") is None or not run.get("model_version"):
            continue
        with sessions() as session:
            window = _scores_and_labels(session, model_name, run["model_version"], require_utc(run["window_from"]),
                                        require_utc(run["window_to"]), as_of)
        last = ~pd.Series(window["entity_key"]).duplicated(keep="last").to_numpy()
        perf = score_metrics(window["label"][last], window["score"][last])
        est = float(run["estimated_auc"])
        band = [float(v) for k in ("reference_estimated_auc", "estimated_auc_lower", "estimated_auc_upper")
                if isinstance(v := run.get(k), int | float)]
        covered = None
        if perf.auc is not None and len(band) == 3:
            ref, lo, hi = band
            covered = est - (ref - lo) <= perf.auc <= est + (hi - ref)
        rows.append({"window_from": run["window_from"], "window_to": run["window_to"],
                     "model_version": run["model_version"], "estimated_auc": est,
                     "estimated_auc_threshold": run.get("estimated_auc_threshold"),
                     "n_labelled_then": run.get("n_labelled"), "auc_then": run.get("auc"),
                     "realized_auc": perf.auc, "n_labelled": perf.n, "covered": covered,
                     "alerts": run.get("alerts", "")})
    return rows


ESTIMATE_METRICS: tuple[tuple[str, ...], ...] = (("realized_auc", "estimated_auc", "estimated_auc_threshold"),
                                                 ("n_labelled",))


def plot_history(history: Sequence[Mapping[str, Any]], path: Path,
                 metrics: Sequence[str | tuple[str, ...]] = CHART_METRICS, title: str = "monitoring") -> Path:
    """PNG with one panel per metric (or group of metrics drawn together) over window end time;
    windows with alerts are marked in red on the panel's first metric."""
    from matplotlib.figure import Figure  # the OO API renders with Agg and keeps no global state

    groups = [(m,) if isinstance(m, str) else tuple(m) for m in metrics]
    shown = [g for g in groups if any(h.get(m) is not None for h in history for m in g)] or groups[:1]
    fig = Figure(figsize=(9, 1.9 * len(shown) + 0.6), layout="constrained")
    axes = fig.subplots(len(shown), 1, sharex=True, squeeze=False)[:, 0]
    times = [h["window_to"] for h in history]
    for ax, group in zip(axes, shown, strict=True):
        for n, metric in enumerate(group):
            values = [np.nan if h.get(metric) is None else float(h[metric]) for h in history]
            if n and all(np.isnan(values)):
                continue
            dashed = metric.endswith(("_threshold", "baseline_rmse"))
            ax.plot(times, values, marker="" if dashed else "o", markersize=3, linewidth=1.2,
                    linestyle="--" if dashed else "-", label=metric)
            if n == 0:
                flagged = [(t, v) for t, v, h in zip(times, values, history, strict=True) if h.get("alerts")]
                if flagged:
                    ax.scatter([t for t, _ in flagged], [v for _, v in flagged], color="red", zorder=3, s=18,
                               label="alert")
        ax.set_ylabel(group[0] if len(group) == 1 else " / ".join(m.replace("estimated_", "est. ") for m in group[:2]),
                      fontsize=8)
        if len(group) > 1:
            ax.legend(loc="best", fontsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_title(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
