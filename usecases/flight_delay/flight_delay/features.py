"""The feature contract: feature tables, the Feast store, training sets and online lookups.

One Feast FeatureService (`flight_delay_v1`) feeds both point-in-time training sets and online
lookups, so train/serve skew cannot creep in. The feature tables are parquet files under
`RETRAIN_HOME/offline/features/`, rebuilt from the landed flights and outcomes:

- `weather`: hourly weather per origin, stamped at the observation hour (UTC);
- `planes`: static aircraft attributes, stamped at the start of the data;
- `carrier_stats` / `route_stats`: daily snapshots (00:00 UTC) of arrival-delay rates over trailing
  windows, computed only from flights that had *landed* before the snapshot (no leakage).

Landed flights and outcomes are the parts of the batches the database records as landed
(`flight_delay.landed`); the rebuild holds the ingest lock, so it never sees half a landing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from flight_delay.data import FLIGHTS_TABLE, load_planes, load_weather
from flight_delay.delay_facts import delay_facts
from flight_delay.landed import landed_parts
from retrain.core.config import Settings
from retrain.core.jsonsafe import read_json_state, write_json_atomic
from retrain.core.times import TimeLike, to_utc, utc_times
from retrain.features import store as feature_store
from retrain.features.offline import (
    OUTCOMES,
    ingest_lock,
    parts_fingerprint,
    read_parts,
    write_parquet_atomic,
)
from retrain.features.store import trailing_window_sums

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore

FEATURE_SERVICE = "flight_delay_v1"
WEATHER_FEATURES = ["temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib"]
PLANE_FEATURES = ["plane_year", "plane_seats", "plane_engines"]
CARRIER_FEATURES = ["carrier_late_rate_7d", "carrier_flights_7d", "carrier_mean_delay_7d", "carrier_late_rate_28d"]
ROUTE_FEATURES = ["route_late_rate_28d", "route_flights_28d", "route_mean_delay_28d"]
REQUEST_FEATURES = ["dep_hour", "dep_weekday", "dep_month", "dep_minute_of_day", "flight_distance"]
MODEL_FEATURES: list[str] = WEATHER_FEATURES + PLANE_FEATURES + CARRIER_FEATURES + ROUTE_FEATURES + REQUEST_FEATURES
ENTITY_KEYS = ["origin_hour", "tailnum", "carrier_day", "route_day"]
WEATHER_CARRY_HOURS = 2
MISSING_TAILNUM = ""
FEATURE_TABLES = ("weather", "planes", "carrier_stats", "route_stats")


# ---------------------------------------------------------------- offline tables


def features_dir(settings: Settings) -> Path:
    return settings.offline_dir / "features"


def landed_flights(settings: Settings, columns: list[str] | None = None) -> pd.DataFrame:
    """Every landed flight (only `columns`), as the ingestion wrote them."""
    frame = read_parts(landed_parts(settings, FLIGHTS_TABLE), columns)
    return frame if frame is not None else pd.DataFrame(columns=columns or [])


def landed_outcomes(settings: Settings) -> pd.DataFrame:
    """All recorded outcomes, one row per flight (the latest record wins)."""
    df = read_parts(landed_parts(settings, OUTCOMES))
    if df is None or df.empty:
        return pd.DataFrame(columns=["flight_id", "sched_dep", "landed_at", "arr_delay", "late"])
    return df.drop_duplicates("flight_id", keep="last").reset_index(drop=True)


def _us(series: pd.Series) -> pd.Series:
    """UTC timestamps floored to microseconds (DuckDB cannot read nanoseconds)."""
    return utc_times(series).dt.floor("us").astype("datetime64[us, UTC]")


def _bucket_text(when: pd.Series, freq: str, fmt: str) -> pd.Series:
    """Format timestamps floored to `freq`; formats each distinct bucket once (strftime is slow)."""
    buckets = utc_times(when).dt.floor(freq)
    codes, uniques = pd.factorize(buckets)
    text = pd.DatetimeIndex(uniques).strftime(fmt).to_numpy(dtype=object)
    return pd.Series(text[codes], index=when.index)


def hour_key(prefix: pd.Series, when: pd.Series) -> pd.Series:
    """Bucketed join key `<prefix>|YYYY-MM-DDTHH` (UTC hour)."""
    return prefix.astype(str) + "|" + _bucket_text(when, "h", "%Y-%m-%dT%H")


def day_key(prefix: pd.Series, when: pd.Series) -> pd.Series:
    """Bucketed join key `<prefix>|YYYY-MM-DD` (UTC day)."""
    return prefix.astype(str) + "|" + _bucket_text(when, "D", "%Y-%m-%d")


@lru_cache(maxsize=1)
def _weather_grid() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The whole year's hourly weather grid per origin, and each origin's observation hours.

    Carrying forward only looks back, so the grid cut at an origin's last observation <= horizon
    equals the grid built from the observations <= horizon: build it once, cut per call.
    """
    w = load_weather().drop_duplicates(["origin", "time_hour"], keep="last")
    frames = []
    for origin, grp in w.groupby("origin"):
        g = grp.set_index("time_hour")[WEATHER_FEATURES].astype("float64")
        # past the last observation too: the tail carries it forward like any gap (a live deployment is
        # always at that edge; Feast's exact-hour key would otherwise find no weather there)
        grid = pd.date_range(g.index.min(), g.index.max() + pd.Timedelta(hours=WEATHER_CARRY_HOURS), freq="h")
        g = g.reindex(grid).ffill(limit=WEATHER_CARRY_HOURS).dropna(how="all")
        g.insert(0, "origin", str(origin))
        frames.append(g.rename_axis("event_timestamp").reset_index())
    out = pd.concat(frames, ignore_index=True)
    out["event_timestamp"] = _us(out["event_timestamp"])
    out.insert(0, "origin_hour", hour_key(out["origin"], out["event_timestamp"]))
    observed = w[["origin", "time_hour"]].assign(origin=w["origin"].astype(str), time_hour=_us(w["time_hour"]))
    return out, observed


def weather_table(horizon: pd.Timestamp, created: pd.Timestamp) -> pd.DataFrame:
    """Weather per origin and UTC hour, observed at or before `horizon`.

    One row per (origin, hour) on a complete hourly grid up to the horizon's hour; an hour without an
    observation (a gap, or the hours since the last one) carries the last one forward for at most
    WEATHER_CARRY_HOURS (the same answer a backward as-of join with a 3-hour TTL gives). Rows are keyed
    `origin_hour` so both the point-in-time join and the online lookup are exact-key matches: a flight
    gets the weather of its departure hour, offline and online.
    """
    grid, observed = _weather_grid()
    last_seen = observed[observed["time_hour"] <= horizon].groupby("origin")["time_hour"].max()
    # hours after an origin's last observation <= horizon hold only its carried value (no later one
    # is <= horizon), up to the horizon's hour and WEATHER_CARRY_HOURS
    carried = last_seen + pd.Timedelta(hours=WEATHER_CARRY_HOURS)
    cap = pd.Timestamp(horizon).floor("h")
    cut = grid["origin"].map(carried.where(carried <= cap, cap))
    out = grid[cut.notna().to_numpy() & (grid["event_timestamp"] <= cut).to_numpy()].reset_index(drop=True)
    out["created"] = created
    return out


def planes_table(known_at: pd.Timestamp, created: pd.Timestamp) -> pd.DataFrame:
    """Aircraft attributes; reference data, known from the start of the data."""
    p = load_planes()
    out = pd.DataFrame({
        "tailnum": p["tailnum"].astype(str),
        "event_timestamp": known_at,
        "plane_year": p["year"].astype("float64"),
        "plane_seats": p["seats"].astype("float64"),
        "plane_engines": p["engines"].astype("float64"),
    })
    out["event_timestamp"] = _us(out["event_timestamp"])
    out["created"] = created
    return out


def rolling_delay_stats(
    outcomes: pd.DataFrame, key: str, keys_of: pd.Series, windows: dict[str, int], snapshots: pd.DatetimeIndex,
) -> pd.DataFrame:
    """Daily snapshots of delay stats per key, using only outcomes with landed_at < snapshot.

    `windows` maps a suffix to a window in days. For each snapshot T (a UTC midnight) and window W
    the stats cover flights that landed in [T - W days, T) (see `trailing_window_sums`).
    """
    if outcomes.empty:
        return pd.DataFrame(columns=[key, "event_timestamp"])
    day_ns = 86_400 * 10**9
    landed = utc_times(outcomes["landed_at"]).dt.tz_localize(None)
    landed_day = landed.to_numpy().astype("datetime64[ns]").astype("int64") // day_ns
    snap_day = snapshots.tz_convert("UTC").tz_localize(None).to_numpy().astype("datetime64[ns]").astype("int64")
    snap_day = snap_day // day_ns
    codes, uniques = pd.factorize(keys_of.to_numpy())
    sums = trailing_window_sums(codes, len(uniques), landed_day + 1,
                                {"n": None, "late": outcomes["late"].astype("float64").to_numpy(),
                                 "delay": outcomes["arr_delay"].astype("float64").to_numpy()}, snap_day, windows)
    snap_naive = snapshots.tz_convert("UTC").tz_localize(None).to_numpy()  # datetime64, not Timestamp objects
    out = pd.DataFrame({
        key: np.repeat(uniques.astype(str), len(snap_day)),
        "event_timestamp": pd.DatetimeIndex(np.tile(snap_naive, len(uniques))).tz_localize("UTC"),
    })
    for suffix in windows:
        win = {name: values.ravel() for name, values in sums[suffix].items()}
        n = win["n"]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"n_{suffix}"] = n
            out[f"rate_{suffix}"] = np.where(n > 0, win["late"] / np.maximum(n, 1), np.nan)
            out[f"delay_{suffix}"] = np.where(n > 0, win["delay"] / np.maximum(n, 1), np.nan)
    out["event_timestamp"] = _us(out["event_timestamp"])
    return out


def carrier_stats_table(
    outcomes: pd.DataFrame, carriers: pd.Series, snapshots: pd.DatetimeIndex, created: pd.Timestamp
) -> pd.DataFrame:
    stats = rolling_delay_stats(outcomes, "carrier", carriers, {"7d": 7, "28d": 28}, snapshots)
    out = pd.DataFrame({
        "carrier_day": day_key(stats["carrier"], stats["event_timestamp"]),
        "carrier": stats["carrier"], "event_timestamp": stats["event_timestamp"],
        "carrier_late_rate_7d": stats.get("rate_7d"), "carrier_flights_7d": stats.get("n_7d"),
        "carrier_mean_delay_7d": stats.get("delay_7d"), "carrier_late_rate_28d": stats.get("rate_28d"),
    })
    out["created"] = created
    return out


def route_stats_table(
    outcomes: pd.DataFrame, routes: pd.Series, snapshots: pd.DatetimeIndex, created: pd.Timestamp
) -> pd.DataFrame:
    stats = rolling_delay_stats(outcomes, "route", routes, {"28d": 28}, snapshots)
    out = pd.DataFrame({
        "route_day": day_key(stats["route"], stats["event_timestamp"]),
        "route": stats["route"], "event_timestamp": stats["event_timestamp"],
        "route_late_rate_28d": stats.get("rate_28d"), "route_flights_28d": stats.get("n_28d"),
        "route_mean_delay_28d": stats.get("delay_28d"),
    })
    out["created"] = created
    return out


def refresh_feature_tables(settings: Settings, known_until: TimeLike | None = None) -> dict[str, int]:
    """Rebuild the four feature tables from what has landed; returns rows per table.

    Each table is stamped with when its values became known: weather at the observation hour, the
    delay rates at daily snapshots that only see flights landed before them. `known_until` is the
    (simulated) present: weather observed up to then is included; by default the last landed
    departure. Nothing is rebuilt when neither the landed parts nor `known_until` changed since the
    last build (the retrain flow's catch-up after the demo already refreshed). Holds the ingest lock:
    a landing in flight finishes (or fails) first.
    """
    with ingest_lock(settings):
        return _refresh_tables(settings, known_until)


def _landed_fingerprint(settings: Settings) -> str | None:
    """Fingerprint of the landed flights and outcome parts; None when nothing landed."""
    parts = landed_parts(settings, FLIGHTS_TABLE) + landed_parts(settings, OUTCOMES)
    return parts_fingerprint(parts) if parts else None


def tables_behind(settings: Settings) -> bool:
    """Whether parts landed since the feature tables were last built (an ingest stopped before its
    rebuild, or tables never built)."""
    landed = _landed_fingerprint(settings)
    built = read_json_state(features_dir(settings) / ".tables.json")
    return landed is not None and (built is None or built.get("key", {}).get("parts") != landed)


def _refresh_tables(settings: Settings, known_until: TimeLike | None) -> dict[str, int]:
    marker = features_dir(settings) / ".tables.json"
    key = {"parts": _landed_fingerprint(settings) or parts_fingerprint([]), "known_until": None if known_until is None
           else to_utc(known_until).isoformat()}
    built = read_json_state(marker)
    if (built is not None and built.get("key") == key
            and all((features_dir(settings) / f"{n}.parquet").exists() for n in FEATURE_TABLES)):
        return {str(k): int(v) for k, v in built["rows"].items()}  # same landed parts, same horizon
    facts = delay_facts(settings)
    if facts.sched_min is None or facts.sched_max is None:
        return dict.fromkeys(FEATURE_TABLES, 0)
    created = pd.Timestamp.now(tz="UTC").floor("us")
    first_day, last = facts.sched_min.floor("D"), facts.sched_max
    if known_until is not None:
        last = max(last, to_utc(known_until))
    snapshots = pd.date_range(first_day, last.floor("D") + pd.Timedelta(days=1), freq="D", tz="UTC")
    outcomes = facts.outcomes
    outcomes = outcomes[(utc_times(outcomes["landed_at"]) < snapshots.max()).to_numpy()]
    carriers, routes = outcomes["carrier"], outcomes["route"]
    tables = {
        "weather": weather_table(last.ceil("h"), created),
        "planes": planes_table(first_day - pd.Timedelta(days=1), created),
        "carrier_stats": carrier_stats_table(outcomes, carriers, snapshots, created),
        "route_stats": route_stats_table(outcomes, routes, snapshots, created),
    }
    for name, table in tables.items():
        write_parquet_atomic(table, features_dir(settings) / f"{name}.parquet")
    rows = {name: len(table) for name, table in tables.items()}
    write_json_atomic(marker, {"key": key, "rows": rows})
    return rows


# ---------------------------------------------------------------- entity rows


def entity_frame(flights: pd.DataFrame) -> pd.DataFrame:
    """Entity rows for `flight_delay_v1`: bucketed join keys, event timestamp and request fields.

    Weather is keyed by origin and departure hour, delay stats by carrier/route and departure day
    (UTC); the plain origin/carrier/route columns ride along for slicing and checks.
    """
    sched = _us(flights["sched_dep"])
    tail = flights["tailnum"].astype("object")
    origin = flights["origin"].astype(str)
    carrier = flights["carrier"].astype(str)
    route = origin + "-" + flights["dest"].astype(str)
    return pd.DataFrame({
        "flight_id": flights["flight_id"].astype(str).to_numpy(),
        "origin": origin.to_numpy(),
        "carrier": carrier.to_numpy(),
        "route": route.to_numpy(),
        "origin_hour": hour_key(origin, sched).to_numpy(),
        "tailnum": tail.where(tail.notna(), MISSING_TAILNUM).astype(str).to_numpy(),
        "carrier_day": day_key(carrier, sched).to_numpy(),
        "route_day": day_key(route, sched).to_numpy(),
        "event_timestamp": sched.reset_index(drop=True),  # tz-aware; .to_numpy() boxes Timestamps
        "sched_dep_epoch": (sched.astype("int64") // 1_000_000).to_numpy(),
        "distance": flights["distance"].astype("float64").to_numpy(),
    })


# ---------------------------------------------------------------- Feast store


def data_start(settings: Settings) -> pd.Timestamp:
    """Earliest timestamp any feature table holds (the seed window's start)."""
    starts = []
    for name in FEATURE_TABLES:
        path = features_dir(settings) / f"{name}.parquet"
        if path.exists():
            ts = pd.read_parquet(path, columns=["event_timestamp"])["event_timestamp"]
            if len(ts):
                starts.append(pd.Timestamp(ts.min()))
    if not starts:
        raise RuntimeError("no feature tables yet: ingest flights first (`retrain ingest --until DATE`)")
    return min(starts).tz_convert("UTC") - pd.Timedelta(seconds=1)


# ---------------------------------------------------------------- training sets


@dataclass(frozen=True)
class TrainingSet:
    """A point-in-time correct training frame through the feature service."""

    frame: pd.DataFrame
    feature_names: list[str]
    n_flights: int
    n_excluded: int
    feature_service: str


def labelled_flights(settings: Settings, start: TimeLike, end: TimeLike) -> tuple[pd.DataFrame, int]:
    """Landed flights departing in [start, end) joined to their outcomes; returns (rows, excluded)."""
    cols = ["flight_id", "sched_dep", "carrier", "flight", "tailnum", "origin", "dest", "distance"]
    flights = landed_flights(settings, cols)
    if flights.empty:
        return flights, 0
    sched = utc_times(flights["sched_dep"])
    flights = flights[(sched >= to_utc(start)) & (sched < to_utc(end))]
    outcomes = landed_outcomes(settings)[["flight_id", "arr_delay", "late"]]
    merged = flights.merge(outcomes, on="flight_id", how="left")
    excluded = int(merged["late"].isna().sum())
    merged = merged[merged["late"].notna()].copy()
    merged["late"] = merged["late"].astype(bool)
    return merged.sort_values(["sched_dep", "flight_id"]).reset_index(drop=True), excluded


def training_set(
    store: FeatureStore, settings: Settings, start: TimeLike, end: TimeLike,
    progress: Callable[[str], Any] | None = None,
) -> TrainingSet:
    """Training rows for flights departing in [start, end): features as of departure, label late.

    Flights without an outcome (cancelled, diverted, not landed yet) are excluded and counted.
    """
    if to_utc(end) <= to_utc(start):
        raise ValueError(f"training window: 'to' ({end}) must be after 'from' ({start})")
    flights, excluded = labelled_flights(settings, start, end)
    if flights.empty:
        raise ValueError(f"no labelled flights depart in [{start}, {end}): ingest that period first")
    if progress:
        progress(f"point-in-time join of {len(flights):,} flights through {settings.feature_service}")
    feats = historical_features(store, entity_frame(flights), settings.feature_service)
    frame = flights[["flight_id", "sched_dep", "carrier", "origin", "dest"]].copy()
    frame["sched_dep"] = utc_times(frame["sched_dep"])
    for col in MODEL_FEATURES:
        frame[col] = feats[col].to_numpy()
    frame["late"] = flights["late"].to_numpy()
    return TrainingSet(frame=frame, feature_names=list(MODEL_FEATURES), n_flights=len(flights) + excluded,
                       n_excluded=excluded, feature_service=settings.feature_service)


# ---------------------------------------------------------------- online


def online_features(store: FeatureStore, fs: FeatureService, flights: pd.DataFrame) -> pd.DataFrame:
    """Online features for flights (one store call), columns MODEL_FEATURES, index as the input."""
    ents = entity_frame(flights)
    rows = {k: ents[k].tolist() for k in ENTITY_KEYS}
    rows["sched_dep_epoch"] = ents["sched_dep_epoch"].astype(int).tolist()
    rows["distance"] = ents["distance"].astype(float).tolist()
    resp = store.get_online_features(features=fs, entity_rows=rows).to_dict()
    out = pd.DataFrame({c: pd.to_numeric(pd.Series(resp[c]), errors="coerce") for c in MODEL_FEATURES})
    out.index = flights.index
    return out.astype("float64")


def apply_repo(settings: Settings) -> None:
    """`feast apply` of feature_repo/ once the four feature tables exist."""
    missing = [n for n in FEATURE_TABLES if not (features_dir(settings) / f"{n}.parquet").exists()]
    if missing:
        raise RuntimeError(f"feature tables missing under {features_dir(settings)}: {missing}; ingest first")
    feature_store.apply_repo(settings)


def service(store: FeatureStore, name: str = FEATURE_SERVICE) -> FeatureService:
    """The flights' feature service (fetched once per worker)."""
    return feature_store.service(store, name)


def historical_features(store: FeatureStore, entities: pd.DataFrame, feature_service: str = FEATURE_SERVICE
                        ) -> pd.DataFrame:
    """Point-in-time features of flights' entity rows (`entity_frame`), in their order, MODEL_FEATURES as float64."""
    return feature_store.historical_features(store, entities, feature_service, id_col="flight_id",
                                             numeric=MODEL_FEATURES)
