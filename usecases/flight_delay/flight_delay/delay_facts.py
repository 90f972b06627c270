"""The facts behind the delay-rate feature tables, kept up to date part by part.

`refresh_feature_tables` needs every recorded outcome with its flight's carrier and route, and the
span of scheduled departures. Joining ~330k outcomes to ~340k flights by id on every simulated day
was the largest per-day cost of the demo; landed parts are immutable, so this module keeps the
joined rows in memory (per offline directory, per process) and only reads parts it has not seen.
Any part whose stat signature changed, or a part list that is not an extension of the one already
read, starts over from scratch, so the answer always equals the full join. The parts are those of the
batches the database records as landed (`landed.landed_parts`), never every part on disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from flight_delay.data import FLIGHTS_TABLE
from flight_delay.landed import landed_parts
from retrain.core.config import Settings
from retrain.core.times import utc_times
from retrain.features import offline

FACT_COLUMNS = ["flight_id", "carrier", "route", "landed_at", "arr_delay", "late", "batch_id"]
_OUTCOME_COLUMNS = ["flight_id", "landed_at", "arr_delay", "late", "batch_id"]


@dataclass
class DelayFacts:
    """Outcomes joined to their flight's carrier and route, plus the span of departures."""

    flight_sigs: list[tuple[str, int, int]] = field(default_factory=list)
    outcome_sigs: list[tuple[str, int, int]] = field(default_factory=list)
    key_of: dict[str, tuple[str, str]] = field(default_factory=dict)  # flight_id -> (carrier, route)
    matched: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FACT_COLUMNS))
    pending: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=_OUTCOME_COLUMNS))
    seen: set[str] = field(default_factory=set)
    duplicates: bool = False
    sched_min: pd.Timestamp | None = None
    sched_max: pd.Timestamp | None = None

    @property
    def outcomes(self) -> pd.DataFrame:
        """One row per flight (the latest record wins), only flights that landed."""
        if not self.duplicates:
            return self.matched
        ordered = self.matched.sort_values("batch_id", kind="stable")
        return ordered.drop_duplicates("flight_id", keep="last").reset_index(drop=True)


_STATE: dict[str, DelayFacts] = {}


def delay_facts(settings: Settings) -> DelayFacts:
    """The joined outcome facts for `settings.offline_dir`, reading only parts not seen before."""
    fparts = landed_parts(settings, FLIGHTS_TABLE)
    oparts = landed_parts(settings, offline.OUTCOMES)
    fsigs = [offline.signature(p) for p in fparts]
    osigs = [offline.signature(p) for p in oparts]
    key = str(settings.offline_dir)
    state = _STATE.get(key)
    if state is None or not (offline.extends(fsigs, state.flight_sigs) and offline.extends(osigs, state.outcome_sigs)):
        state = DelayFacts()
    new_flights: list[Path] = fparts[len(state.flight_sigs):]
    new_outcomes: list[Path] = oparts[len(state.outcome_sigs):]
    if new_flights:
        _add_flights(state, new_flights)
    if new_flights or new_outcomes:
        fresh = _read_outcomes(new_outcomes) if new_outcomes else None
        frames = [f for f in (state.pending, fresh) if f is not None and len(f)]
        if frames:
            _match(state, pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0])
    state.flight_sigs, state.outcome_sigs = fsigs, osigs
    offline.remember(_STATE, key, state, entries=4)
    return state


def _read_outcomes(parts: list[Path]) -> pd.DataFrame | None:
    frame = offline.read_parts(parts, None)
    if frame is not None and "batch_id" not in frame.columns:  # parts written outside ingestion
        frame["batch_id"] = -1
    return None if frame is None else frame[_OUTCOME_COLUMNS]


def _add_flights(state: DelayFacts, parts: list[Path]) -> None:
    flights = offline.read_parts(parts, ["flight_id", "carrier", "origin", "dest", "sched_dep"])
    if flights is None or flights.empty:
        return
    routes = flights["origin"].astype(str) + "-" + flights["dest"].astype(str)
    state.key_of.update(zip(flights["flight_id"].astype(str).tolist(),
                            zip(flights["carrier"].astype(str).tolist(), routes.tolist(), strict=True),
                            strict=True))
    sched = utc_times(flights["sched_dep"])
    lo, hi = sched.min(), sched.max()
    state.sched_min = lo if state.sched_min is None else min(state.sched_min, lo)
    state.sched_max = hi if state.sched_max is None else max(state.sched_max, hi)


def _match(state: DelayFacts, outcomes: pd.DataFrame) -> None:
    """Attach carrier and route to outcomes whose flight is known; keep the rest pending."""
    ids = outcomes["flight_id"].astype(str).tolist()
    keys = [state.key_of.get(i) for i in ids]
    known = np.fromiter((k is not None for k in keys), dtype=bool, count=len(keys))
    state.pending = outcomes[~known].reset_index(drop=True)
    hit = outcomes[known].reset_index(drop=True)
    if hit.empty:
        return
    hit_keys = [k for k in keys if k is not None]
    hit.insert(1, "carrier", [k[0] for k in hit_keys])
    hit.insert(2, "route", [k[1] for k in hit_keys])
    hit_ids = [i for i, ok in zip(ids, known.tolist(), strict=True) if ok]
    if not state.duplicates:
        state.duplicates = any(i in state.seen for i in hit_ids) or len(set(hit_ids)) < len(hit_ids)
    state.seen.update(hit_ids)
    hit["flight_id"] = hit_ids
    frame = hit[FACT_COLUMNS]
    state.matched = frame if state.matched.empty else pd.concat([state.matched, frame], ignore_index=True)
