"""Prometheus metrics of the serving path, exposed on BentoML's `/metrics`.

BentoML 1.4 workers set `PROMETHEUS_MULTIPROC_DIR` after the service module is imported, and
`prometheus_client` decides single- vs multi-process mode when it is first imported. So nothing here
imports it at module level: `serving_metrics()` builds the metrics on first use, inside the worker,
and BentoML's multiprocess collector then merges every worker's values on `/metrics`.

The missing-feature rate is `retrain_feature_values_missing_total / retrain_feature_values_total`
(PromQL: `rate(...missing_total[5m]) / rate(...values_total[5m])`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

LATENCY_BUCKETS = (0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15,
                   0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class ServingMetrics:
    """The metric objects (prometheus_client types, kept as Any to keep the import lazy)."""

    request_latency: Any  # Histogram: seconds per /predict request (features + model + response)
    batch_size: Any  # Histogram: rows per request
    predictions: Any  # Counter{model_version}
    shadow_predictions: Any  # Counter{model_version}
    feature_values: Any  # Counter: feature values looked up
    feature_values_missing: Any  # Counter: of those, missing (null in the online store)
    rows_with_missing: Any  # Counter: rows with at least one missing feature
    log_written: Any  # Counter: prediction-log rows inserted directly
    log_spilled: Any  # Counter: rows written to a spill file (database failed, or the buffer was full)
    log_replayed: Any  # Counter: spilled rows later inserted
    log_write_failures: Any  # Counter: failed database writes
    log_quarantined: Any  # Counter: spill files moved to spill/quarantine/ (rows the database rejects, bad JSON)
    log_overflowed: Any  # Counter: rows past the in-memory buffer bound (spilled off the request path, or dropped)
    log_dropped: Any  # Counter: rows that could be neither buffered nor spilled (lost)
    swaps: Any  # Counter{alias}
    swap_failures: Any  # Counter{alias}
    rows_stale: Any  # Counter: rows scored while some feature view was stale
    view_stale: Any  # Gauge{view}: 1 while the view is stale (max over workers)
    view_age: Any  # Gauge{view}: hours since the view's newest online row (max over workers)


@lru_cache(maxsize=1)
def serving_metrics() -> ServingMetrics:
    """The process's metrics, created on first use (after BentoML set up multiprocess mode)."""
    from prometheus_client import Counter, Gauge, Histogram

    return ServingMetrics(
        request_latency=Histogram("retrain_predict_latency_seconds", "Latency of /predict requests.",
                                  buckets=LATENCY_BUCKETS),
        batch_size=Histogram("retrain_predict_batch_rows", "Rows per /predict request.",
                             buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)),
        predictions=Counter("retrain_predictions", "Rows scored, by model version.", ["model_version"]),
        shadow_predictions=Counter("retrain_shadow_predictions", "Rows scored in shadow by the challenger.",
                                   ["model_version"]),
        feature_values=Counter("retrain_feature_values", "Model input values looked up in the online store."),
        feature_values_missing=Counter("retrain_feature_values_missing",
                                       "Model input values the online store had no value for."),
        rows_with_missing=Counter("retrain_rows_with_missing_features",
                                  "Rows scored with at least one missing feature."),
        log_written=Counter("retrain_predlog_written_rows", "Prediction-log rows inserted on first try."),
        log_spilled=Counter("retrain_predlog_spilled_rows",
                            "Prediction-log rows spilled to a local file (database unavailable, buffer full)."),
        log_replayed=Counter("retrain_predlog_replayed_rows", "Spilled prediction-log rows replayed."),
        log_write_failures=Counter("retrain_predlog_write_failures", "Failed prediction-log database writes."),
        log_quarantined=Counter("retrain_predlog_spill_quarantined",
                                "Spill files set aside under spill/quarantine/ (data the database rejects)."),
        log_overflowed=Counter("retrain_predlog_buffer_overflow_rows",
                               "Prediction-log rows past the in-memory buffer bound (serve_log_buffer_rows)."),
        log_dropped=Counter("retrain_predlog_rows_dropped",
                            "Prediction-log rows lost: buffer full and the overflow could not be spilled."),
        swaps=Counter("retrain_model_swaps", "Models swapped in, by alias.", ["alias"]),
        swap_failures=Counter("retrain_model_swap_failures", "Models that failed to load or warm up.", ["alias"]),
        rows_stale=Counter("retrain_rows_with_stale_features",
                           "Rows scored while at least one feature view was stale (retrain.features.freshness)."),
        view_stale=Gauge("retrain_feature_view_stale", "1 while a feature view's newest online row is older than "
                         "its cadence allows.", ["view"], multiprocess_mode="max"),
        view_age=Gauge("retrain_feature_view_age_hours", "Hours since a feature view's newest online row.",
                       ["view"], multiprocess_mode="max"),
    )
