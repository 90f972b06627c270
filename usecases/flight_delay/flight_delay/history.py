"""The flights' labelled history for `retrain backtest`: one point-in-time training set through
`flight_delay_v1` over the whole range, built in a temporary (or given) home."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from retrain.core.config import Settings
from retrain.usecase.frames import (
    LABEL_TIME,
    ROW_ID,
    BacktestInputError,
    History,
    Progress,
    _home_settings,
    scoped_env,
)

FLIGHTS_START = pd.Timestamp("2013-01-01", tz="UTC")


FLIGHTS_END = pd.Timestamp("2014-01-01", tz="UTC")


FLIGHTS_SEEN_AT = pd.Timestamp("2014-01-02", tz="UTC")  # every 2013 flight that landed has its outcome

SLICE_COLUMNS = ("carrier", "origin")  # the slices the gates check (usecase.yaml `slices`)


def history_from_training_set(frame: pd.DataFrame, feature_names: Sequence[str], *,
                              landed: pd.DataFrame | None = None, feature_service: str | None = None,
                              label_lag_hours: float = 0.0, source: str = "flights") -> History:
    """A `features.training_set(...).frame` as a History: label `late`, time `sched_dep`, labels known
    when the flight landed (`landed`: flight_id, landed_at), slices by carrier and origin as the
    evaluator uses."""
    feats = list(feature_names)
    need = ["flight_id", "sched_dep", "late", *feats]
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise BacktestInputError(f"training set: missing column(s) {', '.join(missing)}")
    slices = tuple(c for c in SLICE_COLUMNS if c in frame.columns)
    times = pd.to_datetime(frame["sched_dep"], utc=True)
    out = pd.DataFrame({ROW_ID: frame["flight_id"].astype(str).to_numpy(), "sched_dep": times.to_numpy()})
    for name in feats:
        out[name] = frame[name].astype("float64").to_numpy()
    for name in slices:
        out[name] = frame[name].astype(str).to_numpy()
    out["late"] = frame["late"].astype("float64").to_numpy()
    out = out.sort_values(["sched_dep", ROW_ID], kind="mergesort").reset_index(drop=True)
    fallback = out["sched_dep"] + pd.Timedelta(hours=label_lag_hours)
    if landed is not None:
        when = pd.to_datetime(landed.drop_duplicates("flight_id", keep="last").set_index("flight_id")["landed_at"],
                              utc=True)
        mapped = pd.to_datetime(out[ROW_ID].map(when), utc=True)
        out[LABEL_TIME] = mapped.where(mapped.notna(), fallback)
    else:
        out[LABEL_TIME] = fallback
    if out.empty:
        raise BacktestInputError("training set: no labelled flights")
    return History(frame=out, feature_names=feats, label="late", time_col="sched_dep", objective="binary",
                   categorical=[], source=source, slice_columns=slices, feature_service=feature_service)



def _landed_any(settings: Settings) -> bool:
    """Whether the home's database (migrated here) records a landed flights batch: what readers take."""
    from flight_delay.landed import landed_batch_ids
    from retrain.core import db
    from retrain.features.offline import sessions_for

    db.upgrade(settings.db_url)
    with sessions_for(settings)() as session:
        return bool(landed_batch_ids(session, "flights"))


def prepare_flights_home(settings: Settings, progress: Progress | None = None) -> dict[str, Any]:
    """Make `settings.home` hold every 2013 flight, its outcome, the feature tables and the applied
    Feast repo; steps already done are skipped (a reused home costs nothing)."""
    from flight_delay import features as F
    from flight_delay.data import ReplayClock, enrich_flights, load_flights, outcomes_of
    from flight_delay.landed import register_parts
    from retrain.features.offline import sessions_for

    say = progress or (lambda _m: None)
    done: dict[str, Any] = {}
    settings.ensure_dirs()
    if not _landed_any(settings):
        say("landing the 2013 flights and outcomes")
        flights = enrich_flights(ReplayClock(load_flights()).flights_between(None, FLIGHTS_SEEN_AT))
        register_parts(settings, flights=flights, outcomes=outcomes_of(flights, settings.delay_threshold_minutes),
                       source="backtest home", sessions=sessions_for(settings))
        done["landed"] = len(flights)
    if not all((F.features_dir(settings) / f"{t}.parquet").exists() for t in F.FEATURE_TABLES) or done:
        say("building the feature tables")
        done["tables"] = F.refresh_feature_tables(settings)
    if not (settings.home / "feast_registry.db").exists() or done:
        say("applying the Feast repository")
        F.apply_repo(settings)
        done["applied"] = True
    return done


def load_history(settings: Settings, *, feature_home: Path | None = None, start: datetime | None = None,
                 end: datetime | None = None, progress: Progress | None = None) -> History:
    """The flights history through `flight_delay_v1`: one point-in-time training set for the whole
    range (fetched once; the backtest slices its windows in memory by `sched_dep`).

    Without `feature_home` the year is landed into a temporary home, removed afterwards.
    """
    from flight_delay import features as F
    from retrain.features import store as FS

    lo = pd.Timestamp(start) if start is not None else FLIGHTS_START
    hi = pd.Timestamp(end) if end is not None else FLIGHTS_END
    lo = lo.tz_localize("UTC") if lo.tzinfo is None else lo.tz_convert("UTC")
    hi = hi.tz_localize("UTC") if hi.tzinfo is None else hi.tz_convert("UTC")
    if hi <= lo:
        raise BacktestInputError(f"--to ({hi.isoformat()}) must be after --from ({lo.isoformat()})")
    temp = None if feature_home is not None else Path(tempfile.mkdtemp(prefix="retrain-backtest-"))
    home = feature_home if feature_home is not None else temp
    assert home is not None
    say = progress or (lambda _m: None)
    try:
        # Feast prints `feast apply`'s progress on stdout: keep stdout for the result (`--json`)
        with scoped_env(), contextlib.redirect_stdout(sys.stderr):
            hs = _home_settings(settings, home)
            prepare_flights_home(hs, progress)
            store = FS.open_store(hs)
            say(f"training set for [{lo.date()}, {hi.date()}) through {hs.feature_service}")
            try:
                ts = F.training_set(store, hs, lo, hi, progress=progress)
            except ValueError as exc:
                raise BacktestInputError(f"flights: {exc}") from exc
            landed = F.landed_outcomes(hs)[["flight_id", "landed_at"]]
        where = "temporary home" if temp is not None else str(home)
        history = history_from_training_set(ts.frame, ts.feature_names, landed=landed,
                                            feature_service=ts.feature_service,
                                            source=f"flights via {ts.feature_service} ({where})")
        if ts.n_excluded:
            history.notes.append(f"{ts.n_excluded} flight(s) without an outcome (cancelled/diverted) left out")
        return replace(history, n_excluded=ts.n_excluded)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)

