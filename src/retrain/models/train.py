"""LightGBM training on a time window: a pure `fit` (frame in, booster + metadata out) and the
`train_version` orchestration that saves the booster to the BentoML store and registers it.

`fit` works on any tabular frame (numeric and pandas `category` columns), so the backtest reuses it
on users' CSVs. It is deterministic: fixed seed, `deterministic=True`, `force_row_wise=True` and a
fixed thread count, so the same window and seed give identical predictions and fingerprint.

With `dask_address` (the `train_dask_address` setting) the boosting runs on a dask.distributed cluster
with `lightgbm.dask` (data-parallel), and the result is turned back into a plain Booster: what is saved,
served and evaluated is the same kind of model either way. See `_fit_on_dask` for what differs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata as importlib_metadata
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import pandas as pd

from retrain.core import metrics
from retrain.core.config import Settings
from retrain.core.jsonsafe import json_safe
from retrain.core.stats import build_reference_profile

if TYPE_CHECKING:
    import lightgbm as lgb
    from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

Objective = Literal["binary", "regression"]
LIBRARIES = ("lightgbm", "pandas", "numpy", "scikit-learn", "bentoml", "feast", "prefect")
# Parameters the caller cannot override: they are what makes a run reproducible.
FORCED_PARAMS = ("seed", "deterministic", "force_row_wise", "num_threads", "verbose")


class TrainingError(ValueError):
    """The training input breaks a rule (bad window, no data, wrong column types)."""


class TrainingSetLike(Protocol):
    """What `features.training_set` returns (only the fields training reads)."""

    @property
    def frame(self) -> pd.DataFrame: ...
    @property
    def feature_names(self) -> list[str]: ...
    @property
    def n_excluded(self) -> int: ...
    @property
    def feature_service(self) -> str: ...


FrameProvider = Callable[[datetime, datetime], TrainingSetLike]


@dataclass(frozen=True)
class TrainResult:
    """A fitted booster, what it was trained on, and its validation predictions."""

    booster: lgb.Booster
    feature_names: list[str]
    metadata: dict[str, Any]
    valid_frame: pd.DataFrame  # the early-stopping rows (most recent part of the window)
    valid_scores: np.ndarray = field(repr=False)


def default_params(settings: Settings | None = None, objective: Objective = "binary") -> dict[str, Any]:
    """The learner's defaults; `settings` supplies the tuned ones (learning rate, leaves)."""
    params = {
        "objective": objective,
        "metric": "binary_logloss" if objective == "binary" else "l2",
        "learning_rate": settings.learning_rate if settings else 0.05,
        "num_leaves": settings.num_leaves if settings else 63,
        "min_data_in_leaf": 50,
        "feature_fraction": 0.9,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
    }
    extra = settings.model_params if settings else {}
    params.update({k: v for k, v in extra.items() if k not in FORCED_PARAMS and k != "objective"})
    return params


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a model depends on (read from metadata: no imports)."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return out


def data_fingerprint(frame: pd.DataFrame, feature_names: Sequence[str], label: str) -> str:
    """sha256 over the feature and label values, independent of row order.

    Rows are hashed with pandas' stable row hash, the row hashes sorted, then digested together with
    the column names and dtypes: the same data in any order gives the same fingerprint.
    """
    cols = [*feature_names, label]
    digest = hashlib.sha256()
    digest.update(json.dumps({"columns": cols, "dtypes": [str(frame[c].dtype) for c in cols]}).encode())
    rows = pd.util.hash_pandas_object(frame[cols], index=False).to_numpy(dtype="uint64")
    digest.update(np.sort(rows).tobytes())
    return digest.hexdigest()


def _check_frame(frame: pd.DataFrame, feature_names: Sequence[str], label: str, time_col: str,
                 objective: Objective) -> None:
    if frame.empty:
        raise TrainingError("frame: no rows to train on")
    if not feature_names:
        raise TrainingError("feature_names: at least one feature is required")
    missing = [c for c in [*feature_names, label, time_col] if c not in frame.columns]
    if missing:
        raise TrainingError(f"frame: missing column(s) {', '.join(missing)}")
    for col in feature_names:
        dtype = frame[col].dtype
        if not (pd.api.types.is_numeric_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype)):
            raise TrainingError(f"feature {col!r}: dtype {dtype} must be numeric, bool or category "
                                "(convert text columns with .astype('category'))")
    if frame[time_col].isna().any():
        raise TrainingError(f"{time_col}: has missing values; every row needs a time")
    y = frame[label]
    if y.isna().any():
        raise TrainingError(f"{label}: has missing values; drop unlabelled rows first")
    if objective == "binary":
        values = set(pd.unique(y.astype("float64")))
        if not values <= {0.0, 1.0}:
            raise TrainingError(f"{label}: must be binary (0/1 or bool) for objective 'binary', got "
                                f"{len(values)} distinct values")
    elif not pd.api.types.is_numeric_dtype(y.dtype):
        raise TrainingError(f"{label}: must be numeric for objective 'regression'")


def _sortable(column: pd.Series) -> np.ndarray:
    """Times as a plain numpy array (tz-aware columns would otherwise become Timestamp objects)."""
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        return column.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    return column.to_numpy()


def time_split(frame: pd.DataFrame, time_col: str, validation_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Oldest rows train, the last `validation_fraction` of the window (by time) validates.

    Rows sharing the cut timestamp all go to validation, so no instant is on both sides.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise TrainingError(f"validation_fraction: {validation_fraction} must be in (0, 1)")
    column = frame[time_col]
    ordered = frame if column.is_monotonic_increasing else frame.sort_values(time_col, kind="mergesort")
    times = _sortable(ordered[time_col])
    cut = min(int(math.floor(len(ordered) * (1.0 - validation_fraction))), len(ordered) - 1)
    cut = int(np.searchsorted(times, times[cut], side="left"))
    if cut < 1:
        raise TrainingError(f"{time_col}: too few distinct times to hold out the last "
                            f"{validation_fraction:.0%} for early stopping")
    return ordered.iloc[:cut], ordered.iloc[cut:]


def validation_metrics(objective: Objective, y: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    """Metrics of the early-stopping set (NaN stored as None: JSON has no NaN)."""
    if objective == "binary":
        yb = y.astype(bool)
        out = {"auc": metrics.roc_auc(yb, scores), "log_loss": metrics.log_loss(yb, scores),
               "brier": metrics.brier(yb, scores)}
    else:
        err = scores - y.astype("float64")
        out = {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}
    return {k: (None if v is None or math.isnan(v) else float(v)) for k, v in out.items()}


def fit(
    frame: pd.DataFrame,
    feature_names: Sequence[str],
    *,
    label: str,
    time_col: str,
    objective: Objective = "binary",
    params: Mapping[str, Any] | None = None,
    seed: int = 42,
    num_threads: int = 2,
    validation_fraction: float = 0.15,
    num_boost_round: int = 300,
    early_stopping_rounds: int = 30,
    dask_address: str | None = None,
    refit_full: bool = False,
) -> TrainResult:
    """Fit LightGBM on `frame` with a time split; returns booster, metadata and validation scores.

    `dask_address` (a dask.distributed scheduler URL): fit there with `lightgbm.dask`; empty: in process.
    `refit_full`: once early stopping picked the number of rounds on the validation rows, refit that many
    rounds on the whole frame (the latest rows included) and return that booster; the validation metrics
    and scores (the monitoring reference) stay the early-stopped model's, the only out-of-sample ones.
    """
    import lightgbm as lgb

    feats = list(feature_names)
    _check_frame(frame, feats, label, time_col, objective)
    if num_boost_round < 1:
        raise TrainingError(f"num_boost_round: {num_boost_round} must be at least 1")
    started = time.perf_counter()
    fingerprint = data_fingerprint(frame, feats, label)
    t_fp = time.perf_counter()
    train_part, valid_part = time_split(frame, time_col, validation_fraction)
    y_train = train_part[label].to_numpy(dtype="float64")
    y_valid = valid_part[label].to_numpy(dtype="float64")
    if objective == "binary" and len(set(y_train)) < 2:
        raise TrainingError(f"{label}: the training part holds only one class; widen the window")

    full_params = {**default_params(None, objective), **dict(params or {})}
    full_params["objective"] = objective
    full_params.update(seed=seed, deterministic=True, force_row_wise=True, num_threads=num_threads, verbose=-1)
    t_split = time.perf_counter()
    distributed: dict[str, Any] = {}
    if dask_address:
        booster, best, distributed = _fit_on_dask(
            dask_address, full_params, train_part[feats], y_train, valid_part[feats], y_valid,
            objective=objective, num_boost_round=num_boost_round, early_stopping_rounds=early_stopping_rounds,
            seed=seed)
    else:
        train_ds = lgb.Dataset(train_part[feats], y_train, feature_name=feats, free_raw_data=True)
        valid_ds = lgb.Dataset(valid_part[feats], y_valid, reference=train_ds, free_raw_data=True)
        callbacks: list[Callable[..., Any]] = (
            [lgb.early_stopping(early_stopping_rounds, verbose=False)] if early_stopping_rounds > 0 else [])
        booster = lgb.train(full_params, train_ds, num_boost_round=num_boost_round, valid_sets=[valid_ds],
                            valid_names=["valid"], callbacks=callbacks)
        best = int(booster.best_iteration) if booster.best_iteration > 0 else booster.current_iteration()
    t_fit = time.perf_counter()
    scores = np.asarray(booster.predict(valid_part[feats], num_iteration=best), dtype="float64")
    refit: dict[str, Any] = {}
    if refit_full and not dask_address:  # a Dask fit is served as fitted (no distributed refit yet)
        whole = pd.concat([train_part, valid_part], ignore_index=True)
        full_ds = lgb.Dataset(whole[feats], whole[label].to_numpy(dtype="float64"), feature_name=feats,
                              free_raw_data=True)
        booster = lgb.train(full_params, full_ds, num_boost_round=best)
        refit = {"rounds": best, "rows": len(whole)}
    elapsed = time.perf_counter() - started
    meta: dict[str, Any] = {
        "objective": objective,
        "label": label,
        "time_col": time_col,
        "feature_names": feats,
        "n_rows": len(frame),
        "n_train": len(train_part),
        "n_valid": len(valid_part),
        "train_time_from": str(train_part[time_col].iloc[0]),
        "valid_time_from": str(valid_part[time_col].iloc[0]),
        "best_iteration": best,
        "validation": validation_metrics(objective, y_valid, scores),
        "data_fingerprint": fingerprint,
        "params": {**full_params, "num_boost_round": num_boost_round,
                   "early_stopping_rounds": early_stopping_rounds, "validation_fraction": validation_fraction},
        "library_versions": library_versions(),
        "train_seconds": round(elapsed, 3),
        "phase_seconds": {"fingerprint": round(t_fp - started, 3), "split": round(t_split - t_fp, 3),
                          "lgb_train": round(t_fit - t_split, 3), "validate": round(started + elapsed - t_fit, 3)},
    }
    if refit:  # the served booster saw the validation rows too
        meta["refit_full"] = refit
        meta["params"]["refit_full"] = True
    if distributed:  # recorded with the params too, so the registry tells how a version was fitted
        meta["distributed"] = distributed
        meta["params"]["distributed"] = distributed
    return TrainResult(booster=booster, feature_names=feats, metadata=meta,
                       valid_frame=valid_part, valid_scores=scores)


def _loss_by_iteration(booster: lgb.Booster, x_valid: pd.DataFrame, y_valid: np.ndarray,
                       objective: Objective) -> np.ndarray:
    """The objective's loss on the validation rows after each boosting round (binary log loss or l2)."""
    raw = np.zeros(len(x_valid), dtype="float64")
    losses = np.empty(booster.current_iteration(), dtype="float64")
    for i in range(len(losses)):
        raw += np.asarray(booster.predict(x_valid, start_iteration=i, num_iteration=1, raw_score=True), dtype="float64")
        if objective == "binary":
            losses[i] = float(np.mean(np.logaddexp(0.0, raw) - y_valid * raw))
        else:
            losses[i] = float(np.mean((raw - y_valid) ** 2))
    return losses


def early_stopping_iteration(losses: np.ndarray, early_stopping_rounds: int) -> int:
    """The round (1-based) `lightgbm.early_stopping` would keep: the best loss so far, once
    `early_stopping_rounds` rounds in a row failed to beat it (0 rounds: no early stopping, keep all)."""
    if early_stopping_rounds <= 0 or len(losses) == 0:
        return len(losses)
    best = 0
    for i in range(1, len(losses)):
        if losses[i] < losses[best]:
            best = i
        elif i - best >= early_stopping_rounds:
            break
    return best + 1


def _fit_on_dask(address: str, params: Mapping[str, Any], x_train: pd.DataFrame, y_train: np.ndarray,
                 x_valid: pd.DataFrame, y_valid: np.ndarray, *, objective: Objective, num_boost_round: int,
                 early_stopping_rounds: int, seed: int) -> tuple[lgb.Booster, int, dict[str, Any]]:
    """Fit with `lightgbm.dask` on the cluster at `address`; returns a plain Booster cut at its best round.

    What differs from the in-process fit:
    - data: the training rows are shuffled (seeded) and split into one partition per worker, scattered
      one to each; LightGBM trains data-parallel (`tree_learner=data`), each worker with its own threads
      (`num_threads` is the workers' `nthreads`). Feature bins come from the workers' own rows.
    - early stopping: `lightgbm.dask` has none (a worker that stops first leaves the others hanging), so
      all `num_boost_round` rounds are grown, then the round `lightgbm.early_stopping` would keep is picked
      here from the objective's loss (binary log loss / l2) on the validation rows, and the model cut there.
    - determinism: the row shuffle and split are seeded, but the model is not reproducible bit for bit:
      it differs from the in-process one (bagging and bins are per worker) and between runs (the workers'
      ranks in LightGBM's network change), so two fits agree on metrics within noise, not exactly. The
      data fingerprint is unchanged (it is taken before the split).
    - memory: the frame is still built here as one pandas frame, so the limit on rows is this process's.
    The validation rows never leave this process. The Booster comes back via `to_local()`, so nothing
    that loads, serves or evaluates the model needs Dask.
    """
    import warnings

    import dask.dataframe as dd
    import lightgbm as lgb
    from dask.distributed import Client
    from lightgbm.dask import DaskLGBMClassifier, DaskLGBMRegressor

    # lightgbm.dask sets the thread count from the workers and refuses its own early stopping
    dask_params = {k: v for k, v in params.items() if k not in ("num_threads", "early_stopping_round")}
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x_train))
    x_shuffled = x_train.iloc[order].reset_index(drop=True)
    y_values = y_train[order].astype("int64" if objective == "binary" else "float64")
    with Client(address, set_as_default=False, timeout="30s") as client:
        workers = sorted(client.scheduler_info()["workers"])
        if not workers:
            raise TrainingError(f"train_dask_address: no workers at {address}")
        bounds = np.linspace(0, len(x_shuffled), len(workers) + 1).astype(int)
        pieces = [(lo, hi, w) for lo, hi, w in zip(bounds[:-1], bounds[1:], workers, strict=True) if hi > lo]
        x_parts = [client.scatter(x_shuffled.iloc[lo:hi], workers=[w]) for lo, hi, w in pieces]
        y_parts = [client.scatter(pd.Series(y_values[lo:hi], name="label"), workers=[w]) for lo, hi, w in pieces]
        x_dask = dd.from_delayed(x_parts, meta=x_shuffled.iloc[:0], verify_meta=False)
        y_dask = dd.from_delayed(y_parts, meta=pd.Series(y_values[:0], name="label"), verify_meta=False)
        estimator_cls = DaskLGBMClassifier if objective == "binary" else DaskLGBMRegressor
        estimator = estimator_cls(client=client, n_estimators=num_boost_round, **dask_params)
        with client.as_current(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Parameter (n_jobs|num_threads) will be ignored")
            estimator.fit(x_dask, y_dask)
        local = estimator.to_local().booster_
        nthreads = client.nthreads()
    losses = _loss_by_iteration(local, x_valid, y_valid, objective)
    best = early_stopping_iteration(losses, early_stopping_rounds)
    booster = lgb.Booster(model_str=local.model_to_string(num_iteration=best))
    info = {"dask_address": address, "n_workers": len(pieces), "worker_threads": sum(nthreads.values()),
            "rounds_grown": int(local.current_iteration()), "tree_learner": "data",
            "early_stopping": "after the fit, on the validation rows' " +
                              ("binary_logloss" if objective == "binary" else "l2")}
    return booster, best, info


def fit_with_settings(frame: pd.DataFrame, feature_names: Sequence[str], settings: Settings,
                      **overrides: Any) -> TrainResult:
    """`fit` with every knob taken from Settings (what production and the backtest use)."""
    kwargs: dict[str, Any] = {
        "params": default_params(settings, overrides.get("objective", "binary")),
        "seed": settings.seed,
        "num_threads": settings.num_threads,
        "validation_fraction": settings.validation_fraction,
        "num_boost_round": settings.num_boost_round,
        "early_stopping_rounds": settings.early_stopping_rounds,
        "dask_address": settings.train_dask_address,
        "refit_full": settings.train_refit_full,
    }
    kwargs.update(overrides)
    return fit(frame, feature_names, **kwargs)


# --------------------------------------------------------------------------- orchestration


@dataclass(frozen=True)
class TrainedVersion:
    """A registered candidate: registry version, BentoML tag and the training metadata."""

    version: str
    version_id: int
    bento_model_tag: str
    train_from: datetime
    train_to: datetime
    model_checksum: str
    model_size_bytes: int
    metadata: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "version_id": self.version_id,
            "bento_model_tag": self.bento_model_tag,
            "train_from": self.train_from.isoformat(),
            "train_to": self.train_to.isoformat(),
            "model_checksum": self.model_checksum,
            "model_size_bytes": self.model_size_bytes,
            "n_train": self.metadata["n_train"],
            "n_valid": self.metadata["n_valid"],
            "best_iteration": self.metadata["best_iteration"],
            "validation": self.metadata["validation"],
            "data_fingerprint": self.metadata["data_fingerprint"],
            "train_seconds": self.metadata["train_seconds"],
            "phase_seconds": self.metadata.get("phase_seconds", {}),
        }


def reference_profile(settings: Settings, result: TrainResult, label: str,
                      frame: pd.DataFrame | None = None, *, regression: bool = False) -> dict[str, Any]:
    """The monitoring baseline: feature distributions over the whole training window (`frame`),
    scores and the baseline AUC on the validation rows (honest, out-of-sample), plus what the
    label-free rules need (`estimate.monitoring_baseline`): gain importance, the calibrator of the
    validation scores (binary), per-feature drift thresholds learned from time slices of `frame`
    as long as a monitoring window, and the band of the estimated AUC.

    Profiling features on the validation rows alone (about a week of a two-month window) made
    seasonal features such as weather look drifted within days.
    """
    from retrain.core.estimate import monitoring_baseline

    valid = result.valid_frame
    valid_labels = valid[label].to_numpy()
    profile = dict(build_reference_profile(
        valid, result.feature_names, result.valid_scores, labels=valid_labels, settings=settings,
        regression=regression))
    whole_frame = frame if frame is not None and len(frame) > len(valid) else valid
    if whole_frame is not valid:
        whole = build_reference_profile(whole_frame, result.feature_names, np.zeros(len(whole_frame)),
                                        settings=settings)
        profile["features"] = whole["features"]
        profile["n_rows_features"] = whole["n_rows"]
    time_col = str(result.metadata.get("time_col", ""))
    valid_times = valid[time_col] if time_col in valid.columns else None
    profile.update(monitoring_baseline(
        profile, booster=result.booster, feature_names=result.feature_names, valid_times=valid_times,
        valid_scores=result.valid_scores, valid_labels=valid_labels, frame=whole_frame, time_col=time_col,
        settings=settings, regression=regression))
    return profile


def _window(start: datetime | str, end: datetime | str) -> tuple[datetime, datetime]:
    from retrain.core.times import to_utc

    lo, hi = to_utc(start).to_pydatetime(), to_utc(end).to_pydatetime()
    if hi <= lo:
        raise TrainingError(f"training window: 'to' ({hi.isoformat()}) must be after 'from' ({lo.isoformat()})")
    return lo, hi


def train_version(
    settings: Settings,
    sessions: sessionmaker[Session],
    frame_provider: FrameProvider,
    start: datetime | str,
    end: datetime | str,
    *,
    label: str,
    time_col: str,
    objective: Objective = "binary",
) -> TrainedVersion:
    """Build the training set for [start, end), fit, save to the model store, register a candidate.

    All or nothing: on any failure the saved model (if any) is deleted and nothing is registered.
    """
    from retrain.models import registry
    from retrain.models import store as modelstore

    lo, hi = _window(start, end)
    t0 = time.perf_counter()
    try:
        tset = frame_provider(lo, hi)
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc
    frame = tset.frame
    if frame.empty:
        raise TrainingError(f"no labelled rows in [{lo.isoformat()}, {hi.isoformat()})")
    times = pd.to_datetime(frame[time_col], utc=True)
    if times.min() < pd.Timestamp(lo) or times.max() >= pd.Timestamp(hi):
        raise TrainingError(f"{time_col}: the training set has rows outside [{lo.isoformat()}, {hi.isoformat()})")
    t_set = time.perf_counter()
    result = fit_with_settings(frame, tset.feature_names, settings, label=label, time_col=time_col,
                               objective=objective)
    t_fit = time.perf_counter()
    profile = json_safe(reference_profile(settings, result, label, frame, regression=objective == "regression"))
    t_profile = time.perf_counter()
    meta = result.metadata
    bento_meta = json_safe({
        "feature_service": tset.feature_service, "train_from": lo.isoformat(), "train_to": hi.isoformat(),
        "feature_names": result.feature_names, "n_train": meta["n_train"], "n_valid": meta["n_valid"],
        "best_iteration": meta["best_iteration"], "validation": meta["validation"],
        "data_fingerprint": meta["data_fingerprint"],
    })
    labels = {"feature_service": tset.feature_service, "window": f"{lo.date()}_{hi.date()}"}
    saved = modelstore.save_booster(settings, result.booster, metadata=bento_meta, labels=labels)
    t_save = time.perf_counter()
    phases = {"training_set": round(t_set - t0, 3), **meta["phase_seconds"], "fit_total": round(t_fit - t_set, 3),
              "reference_profile": round(t_profile - t_fit, 3), "save_model": round(t_save - t_profile, 3)}
    try:
        row = registry.register_version(
            sessions,
            model_name=settings.model_name,
            bento_model_tag=saved.tag,
            feature_service=tset.feature_service,
            train_from=lo,
            train_to=hi,
            n_train=int(meta["n_train"]),
            n_valid=int(meta["n_valid"]),
            n_excluded=int(tset.n_excluded),
            data_fingerprint=meta["data_fingerprint"],
            model_checksum=saved.checksum,
            model_size_bytes=saved.size_bytes,
            params=json_safe(meta["params"]),
            metrics=json_safe({"validation": meta["validation"], "best_iteration": meta["best_iteration"],
                                "feature_names": result.feature_names, "bento_version": saved.version,
                                "phase_seconds": phases}),
            library_versions=meta["library_versions"],
            reference_profile=profile,
            train_seconds=float(meta["train_seconds"]),
        )
    except BaseException:
        modelstore.delete_model(settings, saved.tag)
        raise
    phases["register"] = round(time.perf_counter() - t_save, 3)
    meta = {**meta, "phase_seconds": phases}
    log.info("registered %s (%s): %d train / %d valid rows, validation %s", row.version, saved.tag,
             meta["n_train"], meta["n_valid"], meta["validation"])
    return TrainedVersion(version=row.version, version_id=row.id, bento_model_tag=saved.tag, train_from=lo,
                          train_to=hi, model_checksum=saved.checksum, model_size_bytes=saved.size_bytes,
                          metadata=meta)
