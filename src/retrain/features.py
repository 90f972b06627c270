"""The feature contract: feature tables, the Feast store, training sets and online lookups.

One Feast FeatureService (`flight_delay_v1`) feeds both point-in-time training sets and online
lookups, so train/serve skew cannot creep in. The feature tables are parquet files under
`RETRAIN_HOME/offline/features/`, rebuilt from the landed flights and outcomes:

- `weather`: hourly weather per origin, stamped at the observation hour (UTC);
- `planes`: static aircraft attributes, stamped at the start of the data;
- `carrier_stats` / `route_stats`: daily snapshots (00:00 UTC) of arrival-delay rates over trailing
  windows, computed only from flights that had *landed* before the snapshot (no leakage).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from retrain.config import Settings
from retrain.data import TimeLike, load_planes, load_weather, to_utc, utc_times
from retrain.delay_facts import delay_facts
from retrain.jsonsafe import read_json_state, write_json_atomic
from retrain.offline import (
    file_lock,
    parts_fingerprint,
    read_table,
    remember,
    write_parquet_atomic,
)

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
    frame = read_table(settings, "flights", columns)
    return frame if frame is not None else pd.DataFrame(columns=columns or [])


def landed_outcomes(settings: Settings) -> pd.DataFrame:
    """All recorded outcomes, one row per flight (the latest record wins)."""
    df = read_table(settings, "outcomes")
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


def trailing_window_sums(
    codes: np.ndarray, n_keys: int, buckets: np.ndarray, weights: dict[str, np.ndarray | None],
    snapshots: np.ndarray, windows: dict[str, int],
) -> dict[str, dict[str, np.ndarray]]:
    """Per key and snapshot, sums over trailing windows; vectorized (a key x bucket grid, cumulative
    sums along buckets, window differences).

    Row i (key `codes[i]` in [0, n_keys)) is counted from snapshot index `buckets[i]` on: a row
    known at time t, with snapshots every unit, has bucket floor(t / unit) + 1, so a snapshot at T
    sees exactly the rows known strictly before T. A window of w units at snapshot s covers buckets
    (s - w, s]: rows known in [T - w units, T). `weights` maps a name to per-row values summed (None:
    count rows). Returns {window suffix: {name: array (n_keys, len(snapshots))}}, float64.
    """
    snaps = np.asarray(snapshots, dtype="int64")
    out: dict[str, dict[str, np.ndarray]] = {}
    if len(snaps) == 0:
        return {s: {n: np.zeros((n_keys, 0)) for n in weights} for s in windows}
    buckets = np.asarray(buckets, dtype="int64")
    keep = buckets <= snaps.max()  # known after the last snapshot: never counted
    first = min(int(buckets[keep].min()) if keep.any() else 0, int(snaps.min())) - max(windows.values())
    n_cols = int(snaps.max()) - first + 1
    cell = np.asarray(codes, dtype="int64")[keep] * n_cols + (buckets[keep] - first)
    cums = {}
    for name, w in weights.items():
        grid = np.bincount(cell, weights=None if w is None else np.asarray(w, dtype="float64")[keep],
                           minlength=n_keys * n_cols).astype("float64").reshape(n_keys, n_cols)
        cums[name] = np.cumsum(grid, axis=1)
    hi = snaps - first
    for suffix, width in windows.items():
        out[suffix] = {name: c[:, hi] - c[:, hi - width] for name, c in cums.items()}
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
    last build (the retrain flow's catch-up after the demo already refreshed).
    """
    marker = features_dir(settings) / ".tables.json"
    key = {"parts": parts_fingerprint(settings), "known_until": None if known_until is None
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


def open_store(settings: Settings) -> FeatureStore:
    """A FeatureStore for the active profile; keep one alive per process (it is not cheap)."""
    settings.export_env()
    from feast import FeatureStore

    return FeatureStore(repo_path=str(settings.feature_repo), fs_yaml_file=settings.feature_store_yaml)


_SHARED: dict[tuple[str, ...], FeatureStore] = {}


def shared_store(settings: Settings) -> FeatureStore:
    """One FeatureStore per process and Feast configuration, for the tasks of one flow run.

    Opening a store parses the YAML and loads the registry (~0.4 s); the retrain flow's catch-up,
    training and evaluation each needed one. `apply_repo` drops the shared store it may make stale.
    """
    key = _store_key(settings)
    store = _SHARED.get(key)
    if store is None:
        store = open_store(settings)
        remember(_SHARED, key, store, entries=2)
    return store


def _store_key(settings: Settings) -> tuple[str, ...]:
    env = [f"{k}={v}" for k, v in sorted(settings.feast_env().items())]
    return (str(settings.feature_repo), str(settings.feature_store_yaml), *env)


def apply_repo(settings: Settings) -> None:
    """`feast apply` in-process: register the definitions of `feature_repo/` (tables must exist)."""
    settings.export_env()
    _SHARED.pop(_store_key(settings), None)
    missing = [n for n in FEATURE_TABLES if not (features_dir(settings) / f"{n}.parquet").exists()]
    if missing:
        raise RuntimeError(f"feature tables missing under {features_dir(settings)}: {missing}; ingest first")
    from feast.repo_config import load_repo_config
    from feast.repo_operations import apply_total

    repo = settings.feature_repo
    # Feast imports the repo's files as top-level modules; drop cached ones so paths follow RETRAIN_HOME.
    for py in repo.glob("*.py"):
        sys.modules.pop(py.stem, None)
    if str(repo) not in sys.path:
        sys.path.append(str(repo))
    apply_total(load_repo_config(repo, settings.feature_store_yaml), repo, skip_source_validation=False)


def materialize(store: FeatureStore, start: TimeLike, end: TimeLike) -> float:
    """Load feature rows with timestamps in [start, end] into the online store; returns seconds."""
    t0 = time.perf_counter()
    store.materialize(start_date=to_utc(start).to_pydatetime(), end_date=to_utc(end).to_pydatetime())
    return time.perf_counter() - t0


def materialization_lock(settings: Settings) -> AbstractContextManager[None]:
    """Serialize materialization: two writers raced on the registry's interval list (one entry lost)."""
    return file_lock(settings.home / ".materialize.lock")


class NothingAppliedError(RuntimeError):
    """The Feast registry holds no feature views: `retrain apply` has not run for this home/registry."""


class NoFeatureDataError(RuntimeError):
    """Feature views are registered but their parquet tables do not exist: nothing ingested yet."""


def _registry_location(store: FeatureStore) -> str:
    """The registry's path or URL for messages (a database password hidden)."""
    registry = getattr(store.config, "registry", None)
    path = str(getattr(registry, "path", registry) or "?")
    if "://" in path and "@" in path:
        from sqlalchemy.engine import make_url

        try:
            return make_url(path).render_as_string(hide_password=True)
        except Exception:  # not a SQLAlchemy URL: say where without the credentials
            return path.split("://", 1)[0] + "://***@" + path.rsplit("@", 1)[1]
    return path


def materialize_until(store: FeatureStore, settings: Settings, until: TimeLike,
                      start: TimeLike | None = None) -> dict[str, Any]:
    """Bring the online store up to `until`, seeding views never materialized before.

    `materialize-incremental` on a fresh view starts at wall-clock now minus its TTL, which is empty
    in a replay of 2013; so a view without history is first loaded with an explicit window from the
    start of its data, after which incremental runs continue from the last end time.

    `start` is where a fresh view's seed window begins (default: the flights' feature tables' start).
    Raises `NothingAppliedError` when no feature view is registered (run `retrain apply`) and
    `NoFeatureDataError` when a view's parquet table is missing (run `retrain ingest`), rather than
    reporting success having loaded nothing.
    """
    end = to_utc(until).to_pydatetime()
    with materialization_lock(settings):
        views = store.list_feature_views()
        if not views:
            raise NothingAppliedError(
                f"no feature views are registered in the Feast registry ({_registry_location(store)}): "
                "run `retrain apply` (or `cd feature_repo && feast apply`) first"
            )
        # Feast would fail on a missing table with a DuckDB I/O error; local paths only (not s3:// etc.)
        sources = {v.name: str(getattr(getattr(v, "batch_source", None), "path", None) or "") for v in views}
        missing = sorted(n for n, p in sources.items() if p and "://" not in p and not Path(p).is_file())
        if missing:
            files = ", ".join(sorted({sources[n] for n in missing}))
            raise NoFeatureDataError(
                f"no feature data to load for {', '.join(missing)} (missing: {files}): "
                "run `retrain ingest --until DATE` first (it lands flights and builds the feature tables)"
            )
        # A premature `feast materialize-incremental` records an empty, inverted interval: not a seed.
        fresh = [v.name for v in views if not any(s <= e for s, e in v.materialization_intervals)]
        seeded = [v.name for v in views if v.name not in fresh]
        t0 = time.perf_counter()
        if fresh:
            first = to_utc(start) if start is not None else data_start(settings)
            seed = first.to_pydatetime()
            store.materialize(start_date=seed, end_date=end, feature_views=fresh)
        behind = [v for v in views if v.name in seeded and (v.most_recent_end_time is None
                                                             or to_utc(v.most_recent_end_time) < to_utc(end))]
        # a view whose table holds nothing after its last materialized end has nothing to load
        # (incremental runs only read rows stamped after that end); e.g. the static planes table
        stale = []
        for view in behind:
            newest = _newest_row(view)
            if newest is None or view.most_recent_end_time is None or newest > to_utc(view.most_recent_end_time):
                stale.append(view.name)
        if stale:
            store.materialize_incremental(end_date=end, feature_views=stale)
        return {"until": end.isoformat(), "seeded": fresh, "incremental": stale,
                "up_to_date": sorted(set(seeded) - set(stale)), "seconds": round(time.perf_counter() - t0, 3)}


def _newest_row(view: Any) -> pd.Timestamp | None:
    """Newest event timestamp in a view's parquet source, from the footer statistics (None: unknown)."""
    import pyarrow.parquet as pq

    source = getattr(view, "batch_source", None)
    path, field = getattr(source, "path", None), getattr(source, "timestamp_field", None)
    if not path or not field or not Path(path).is_file():
        return None
    meta = pq.ParquetFile(path).metadata
    try:
        col = meta.schema.names.index(field)
    except ValueError:
        return None
    newest: pd.Timestamp | None = None
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(col).statistics
        if stats is None or not stats.has_min_max:
            return None
        value = to_utc(stats.max)
        newest = value if newest is None else max(newest, value)
    return newest


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


def service(store: FeatureStore, name: str = FEATURE_SERVICE) -> FeatureService:
    """Fetch the feature service once (per-request lookups cost ~10 ms each)."""
    return store.get_feature_service(name)


# ---------------------------------------------------------------- training sets


@dataclass(frozen=True)
class TrainingSet:
    """A point-in-time correct training frame through the feature service."""

    frame: pd.DataFrame
    feature_names: list[str]
    n_flights: int
    n_excluded: int
    feature_service: str


def historical_features(store: FeatureStore, entities: pd.DataFrame, feature_service: str) -> pd.DataFrame:
    """Point-in-time features for entity rows, in the input's order (Feast reorders rows).

    Feast applies a python-mode on-demand view offline by converting the *whole* joined table to
    Python objects (`pa.Table.to_pydict`), ~2.5 s of a full-year training set spent on columns the
    view never reads. An on-demand view fed only by request data is therefore computed here with
    its registered transformation on just its request columns (the same function Feast would call,
    from the registry, pinned equal to Feast's own path by a test); anything else goes through Feast.
    """
    fs = service(store, feature_service)
    refs, request_only = _split_request_views(store, fs)
    if request_only is None:
        out = store.get_historical_features(entity_df=entities, features=fs).to_df()
    else:
        out = store.get_historical_features(entity_df=entities, features=refs).to_df()
    out = out.set_index("flight_id").reindex(entities["flight_id"]).reset_index()
    for view, names in request_only or []:
        inputs = {f.name: entities[f.name].tolist() for src in view.source_request_sources.values()
                  for f in src.schema}
        derived = view.feature_transformation.udf(inputs)
        for name in names:
            out[name] = derived[name]
    for col in MODEL_FEATURES:
        out[col] = pd.to_numeric(out[col], errors="coerce").astype("float64")
    return out


RequestViews = list[tuple[Any, list[str]]]


def _split_request_views(store: FeatureStore, fs: FeatureService) -> tuple[list[str], RequestViews | None]:
    """Feature refs of the service's plain views, and its python on-demand views fed only by request data.

    Returns (refs, None) when some on-demand view reads other views or is not python-mode: then
    Feast computes everything.
    """
    refs: list[str] = []
    request_only: list[tuple[Any, list[str]]] = []
    odfvs = {v.name: v for v in store.list_on_demand_feature_views()}
    for proj in fs.feature_view_projections:
        names = [f.name for f in proj.features]
        view = odfvs.get(proj.name)
        if view is None:
            refs += [f"{proj.name_to_use()}:{n}" for n in names]
            continue
        mode = getattr(view, "mode", "")
        if view.source_feature_view_projections or str(getattr(mode, "value", mode)) != "python":
            return refs, None
        request_only.append((view, names))
    return refs, request_only


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
