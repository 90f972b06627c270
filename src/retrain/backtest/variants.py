"""The triggered policy's variants: the same replay and rules, a few `Settings` fields replaced.

No heavy imports: the CLI reads these for its help text.
"""

from __future__ import annotations

from typing import Any

# triggered policies that differ from `triggered` only by settings overrides over the same replay
# (name -> Settings fields); what each does is in TRIGGERED_VARIANT_HELP
TRIGGERED_VARIANTS: dict[str, dict[str, Any]] = {
    "estimated": {"monitor_min_labels": 10**9},
    "drift": {"monitor_drift_requires_performance": False},
    "decay-validation": {"monitor_decay_baseline": "validation"},
}
TRIGGERED_VARIANT_HELP: dict[str, str] = {
    "estimated": "label-free rules only: monitoring never sees a matured label (monitor_min_labels 1e9), so the "
                 "estimated AUC (binary) and the out-of-range share start retrains, as if labels came too late; "
                 "drift still needs the estimate to have moved; the gates still judge on labels",
    "drift": "drift alone starts a retrain (monitor_drift_requires_performance off)",
    "decay-validation": "realized decay judged against the champion's validation AUC instead of the AUC its "
                        "calibrated scores expect (monitor_decay_baseline validation; binary only, regression "
                        "already judges RMSE against validation)",
}
