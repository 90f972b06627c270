"""`retrain demo --usecase NAME`: the demo loop for a use case with its own Feast repository.

Same shape and the same pieces as `retrain.demo.common` (servers and deployments, the simulated clock, HTTP
predictions, monitoring runs whose alerts start the retrain deployment through its event trigger, the
month table and report); what differs is the data path: the use case's landing (`usecase.landing`),
its Feast repository and the generic service `bentos.usecase.service:UseCaseService`.

Features as of prediction time. A step is one simulated day of target rows. Its rows are grouped by
prediction time (row time - `prediction_offset_hours`: 1 h before each hour for bike sharing); for each
prediction time, in order, the clock is set to it, the online store is materialized up to it (Feast's
incremental materialization: rows stamped <= that time) and that time's rows are posted to `/predict`.
So every request reads exactly the feature rows a point-in-time join at its prediction time reads
(Feast's online store keeps the latest materialized row per entity; bike sharing has one entity).

Landing runs one step ahead: a step first lands the rows whose label matures by the end of the NEXT day.
The use case's tables only hold a derived row (bike sharing's lagged demand for a target hour, stamped
at its prediction time) once the row it belongs to has landed; landed any later, it would be stamped
before the online store's last materialized time and never be loaded. The early rows never reach a
request (materialization stops at each prediction time) nor monitoring (outcomes count from their
`available_at`), and retrain windows end before the simulated now.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pandas as pd

from retrain.core import clock
from retrain.core.config import Settings
from retrain.demo.common import (
    DemoState,
    ReportLabels,
    Say,
    add_loop_counts,
    monitor_and_retrain,
    quiet,
    start_prefect,
    timed,
    utc,
)
from retrain.usecase.spec import UseCaseSpec

if TYPE_CHECKING:
    from retrain.usecase.pipeline import Pipeline

STEP = timedelta(days=1)
HISTORY_MONTHS = 2  # landed, applied and materialized before the replay; the first champion's data
QUICK_MONTHS = 2


@dataclass(frozen=True)
class UseCasePlan:
    """The simulated calendar of a use-case demo (derived from the use case's data)."""

    first_train: tuple[str, str]
    first_eval: tuple[str, str]
    replay_from: str
    replay_to: str
    monitor_every_days: float


def plan_for(spec: UseCaseSpec, settings: Settings, raw: pd.DataFrame, *, quick: bool = False,
             until: str | None = None) -> UseCasePlan:
    """History = the first two calendar months; first champion trained on it up to its last evaluation
    window (`retrain_eval_days`, ending once labels matured); replay to the data's end (quick: two months)."""
    times = pd.to_datetime(raw[spec.data.time_col], utc=True)
    month0 = times.min().tz_localize(None).to_period("M").to_timestamp().tz_localize("UTC")
    replay_from = month0 + pd.DateOffset(months=HISTORY_MONTHS)
    eval_to = (replay_from - pd.Timedelta(hours=max(24.0, spec.label.delay_hours))).floor("D")
    eval_from = (eval_to - pd.Timedelta(days=settings.retrain_eval_days)).floor("D")
    # the data's last month that holds at least a week (bike sharing's last UTC hours spill into a new year)
    last_month = (times.max() - pd.Timedelta(days=7)).tz_localize(None).to_period("M").to_timestamp().tz_localize("UTC")
    replay_to = replay_from + pd.DateOffset(months=QUICK_MONTHS) if quick else last_month + pd.DateOffset(months=1)
    if until:
        replay_to = pd.Timestamp(utc(until))
    day = "%Y-%m-%d"
    return UseCasePlan(first_train=(month0.strftime(day), eval_from.strftime(day)),
                       first_eval=(eval_from.strftime(day), eval_to.strftime(day)),
                       replay_from=replay_from.strftime(day), replay_to=replay_to.strftime(day),
                       monitor_every_days=settings.monitor_window_days)


def prediction_offset(spec: UseCaseSpec) -> timedelta:
    return timedelta(hours=spec.prediction_offset_hours)


# ------------------------------------------------------------------------------------------- setup


def setup(spec: UseCaseSpec, settings: Settings, plan: UseCasePlan, state: DemoState, say: Say) -> None:
    """Servers and deployments, the history landed + applied + materialized, the first champion."""
    from retrain.features.store import materialize_until
    from retrain.models.registry import open_registry
    from retrain.usecase import featurestore, landing

    start_prefect(settings, state, say)
    if state.setup_done:
        return
    sessions = open_registry(settings)
    start = utc(plan.replay_from)
    clock.set_now(settings, start - prediction_offset(spec))  # the first prediction time
    t0 = time.perf_counter()
    say(f"{spec.name}: landing the history up to {start.date()} (rows whose label matured by then)")
    landed = landing.replay_until(spec, settings, sessions, start)
    say(f"  landed {landed.landed:,} rows ({landed.quarantined:,} quarantined); feature tables: {landed.tables}")
    say(f"feast apply ({settings.feature_repo})")
    featurestore.apply(spec, settings)
    seed_to = start - STEP  # the replay materializes each prediction time from here on
    say(f"materializing the online store up to {seed_to.date()}")
    with quiet():
        materialize_until(featurestore.open_store(settings), settings, seed_to,
                          start=landing.data_start(settings, spec))
    state.seconds["ingest_features"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    with quiet():  # Feast's and BentoML's deprecation chatter; the steps say what they do
        state.first_version = first_champion(pipeline(spec, settings), plan, say)
    state.seconds["first_champion"] = round(time.perf_counter() - t0, 1)
    state.setup_done = True
    state.day = plan.replay_from
    state.save(settings, spec.name)


def pipeline(spec: UseCaseSpec, settings: Settings) -> Pipeline:
    from retrain.usecase.pipeline import Pipeline

    return Pipeline(spec, settings)


def first_champion(pipe: Pipeline, plan: UseCasePlan, say: Say) -> str:
    """Train and evaluate (promote) the first model in-process, through the same pipeline the retrain
    deployment (which the replay's alerts start) runs for this use case."""
    a, b = plan.first_train
    say(f"training the first {pipe.spec.name} model on [{a}, {b})")
    version = pipe.train(utc(a), utc(b))
    a, b = plan.first_eval
    say(f"evaluating {version} on [{a}, {b}) (no champion yet: promoted when the gates pass)")
    outcome = pipe.evaluate(version, utc(a), utc(b), actor="demo:first-champion").to_dict()
    if outcome["decision"] != "promote":
        raise RuntimeError(f"the first model was rejected: {outcome['reasons']}")
    return version


# ------------------------------------------------------------------------------------------ replay


def request_rows(spec: UseCaseSpec, rows: pd.DataFrame) -> list[dict[str, Any]]:
    """`/predict` body rows from raw rows: the spec's request fields only, as JSON values (datetimes
    ISO 8601 with their UTC offset, missing values null)."""
    columns: dict[str, list[Any]] = {}
    for f in spec.request:
        values = rows[f.name]
        if f.kind == "datetime":
            stamps = pd.to_datetime(values, utc=True)
            columns[f.name] = [None if pd.isna(t) else t.isoformat() for t in stamps]
            continue
        cast: Callable[[Any], Any] = {"boolean": bool, "integer": int, "number": float}.get(f.kind, str)
        columns[f.name] = [None if _missing(v) else cast(v) for v in values]
    return [dict(zip(columns, vals, strict=True)) for vals in zip(*columns.values(), strict=True)]


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def predict(client: httpx.Client, settings: Settings, body: list[dict[str, Any]]) -> dict[str, int]:
    """POST rows in batches of `serve_max_batch`; counts per answering model version."""
    versions: dict[str, int] = {}
    headers = {"x-api-key": key} if (key := settings.api_key_value) else {}
    for i in range(0, len(body), settings.serve_max_batch):
        resp = client.post("/predict", json={"rows": body[i:i + settings.serve_max_batch]}, headers=headers)
        if resp.status_code != 200:
            raise RuntimeError(f"/predict answered {resp.status_code}: {resp.text[:500]}")
        version = resp.json()["model_version"]
        versions[version] = versions.get(version, 0) + len(resp.json()["predictions"])
    return versions


def replay(spec: UseCaseSpec, settings: Settings, plan: UseCasePlan, state: DemoState, say: Say,
           progress: Callable[[int, int, str], None]) -> None:
    """Walk the simulated days from `state.day` to `plan.replay_to` (see the module doc for the order)."""
    from retrain.features.store import materialize_until
    from retrain.models.registry import open_registry
    from retrain.usecase import featurestore, landing

    sessions = open_registry(settings)
    store = featurestore.open_store(settings)
    raw = featurestore.raw_rows(spec)
    times = pd.to_datetime(raw[spec.data.time_col], utc=True)
    offset = prediction_offset(spec)
    first, end = utc(plan.replay_from), utc(plan.replay_to)
    day = utc(state.day or plan.replay_from)
    total = (end - first).days
    base = f"http://{settings.serve_host}:{settings.serve_port}"
    last_monitor = day
    t_replay = time.perf_counter()
    with httpx.Client(base_url=base, timeout=120) as client:
        while day < end:
            nxt = day + STEP
            with timed(state, "ingest"):
                landing.replay_until(spec, settings, sessions, nxt + STEP, raw=raw)  # one step ahead
            todo = raw[((times >= day) & (times < nxt)).to_numpy()]
            when = pd.to_datetime(todo[spec.data.time_col], utc=True) - offset
            versions: dict[str, int] = {}
            for at in sorted(when.unique()):
                rows = todo[(when == at).to_numpy()]
                predicted_at = utc(pd.Timestamp(at))
                clock.set_now(settings, predicted_at)
                with timed(state, "materialize"), quiet():
                    materialize_until(store, settings, predicted_at)
                with timed(state, "predict"):
                    for v, n in predict(client, settings, request_rows(spec, rows)).items():
                        versions[v] = versions.get(v, 0) + n
            if (nxt - last_monitor).total_seconds() >= plan.monitor_every_days * 86400:
                as_of = nxt - offset  # the next step's first prediction time: outcomes matured by then count
                clock.set_now(settings, as_of)
                with timed(state, "monitor_and_retrain"):
                    monitor_and_retrain(settings, state, as_of, say)
                last_monitor = nxt
            day = nxt
            state.day = day.date().isoformat()
            state.seconds["replay"] = round(time.perf_counter() - t_replay, 1)
            state.save(settings, spec.name)
            served = ", ".join(f"{v}:{n}" for v, n in sorted(versions.items())) or "-"
            progress((day - first).days, total, f"{day.date()} served by {served}")


# ----------------------------------------------------------------------------------------- summary


def metric_name(spec: UseCaseSpec) -> str:
    return "rmse" if spec.objective == "regression" else "auc"


def monthly_table(spec: UseCaseSpec, settings: Settings, baseline_version: str) -> pd.DataFrame:
    """Per month of target rows: the metric of what was served vs the never-retrained first model scoring
    the same logged features, plus alerts, retrains and promotions of this use case."""
    from sqlalchemy import select

    from retrain.core.db import Alert, ModelVersion, Outcome, Prediction, Promotion
    from retrain.core.metrics import roc_auc
    from retrain.models.registry import open_registry
    from retrain.models.store import load_booster
    from retrain.usecase.serving import category_codes, encode

    sessions = open_registry(settings)
    with sessions() as s:
        preds = pd.DataFrame(s.execute(select(Prediction.entity_key, Prediction.event_time, Prediction.score,
                                              Prediction.features, Prediction.model_version)
                                       .where(Prediction.model_name == spec.name).order_by(Prediction.id)).all(),
                             columns=["key", "event_time", "score", "features", "model_version"])
        labels = pd.DataFrame(s.execute(select(Outcome.entity_key, Outcome.label)
                                        .where(Outcome.model_name == spec.name)).all(), columns=["key", "label"])
        base = s.scalars(select(ModelVersion).where(ModelVersion.model_name == spec.name,
                                                    ModelVersion.version == baseline_version)).one()
        alerts = pd.DataFrame(s.execute(select(Alert.received_at, Alert.outcome)
                                        .where(Alert.model_name == spec.name)).all(), columns=["at", "outcome"])
        promos = pd.DataFrame(s.execute(select(Promotion.created_at, Promotion.action, Promotion.alias)
                                        .where(Promotion.model_name == spec.name)).all(),
                              columns=["at", "action", "alias"])
    preds = preds.drop_duplicates("key", keep="last").merge(labels, on="key")
    if preds.empty:
        return pd.DataFrame()
    booster = load_booster(settings, base.bento_model_tag, base.model_checksum)
    names = list(spec.features.names)
    raw = np.array([[f.get(n) for n in names] for f in preds["features"]], dtype=object)
    matrix = encode(raw, names, category_codes(booster, spec.features.categorical))
    preds["baseline"] = booster.predict(matrix, num_threads=settings.num_threads)
    preds["month"] = pd.to_datetime(preds["event_time"], utc=True).dt.strftime("%Y-%m")
    metric = metric_name(spec)

    def score(y: np.ndarray, p: np.ndarray) -> float:
        if metric == "rmse":
            return math.sqrt(float(np.mean((y - p) ** 2)))
        return roc_auc(y.astype(bool), p)

    rows = []
    for month, grp in preds.groupby("month"):
        y = grp["label"].to_numpy(dtype="float64")
        rows.append({"month": month, "rows": len(grp), "mean_label": float(y.mean()),
                     f"{metric}_served": score(y, grp["score"].to_numpy(dtype="float64")),
                     f"{metric}_never_retrained": score(y, grp["baseline"].to_numpy(dtype="float64")),
                     "versions": ",".join(sorted(grp["model_version"].unique()))})
    return add_loop_counts(pd.DataFrame(rows), alerts, promos)


def report_labels(spec: UseCaseSpec, plan: UseCasePlan) -> ReportLabels:
    metric = metric_name(spec)
    return ReportLabels(folder=f"demo-{spec.name}", metric=metric, ylabel=metric.upper(),
                        baseline=f"never retrained (model of [{plan.first_train[0]}, {plan.first_train[1]}))",
                        title=f"{spec.name}: served vs never retrained (green: months with promotions)",
                        heading=f"retrain demo: {spec.name} replay {plan.replay_from} to {plan.replay_to}")
