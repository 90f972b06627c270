"""A use case's Feast store: open it (once per process), `feast apply`, materialize, and point-in-time
features through a feature service, the same way for every use case.

The use case's own code decides which tables exist and which entity rows a training set asks for;
this module only talks to Feast.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from retrain.core.config import Settings
from retrain.core.locks import named_lock
from retrain.core.times import TimeLike, to_utc
from retrain.features.offline import remember

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore


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
    """`feast apply` in-process: register the definitions of the use case's feature repository
    (`settings.feature_repo`; the tables its sources name must exist)."""
    settings.export_env()
    _SHARED.pop(_store_key(settings), None)
    from feast.repo_config import load_repo_config
    from feast.repo_operations import apply_total

    repo = settings.feature_repo
    # Feast imports the repo's files as top-level modules: drop cached ones so paths follow RETRAIN_HOME,
    # and put this repository first so another repository's `features.py` cannot shadow its own.
    for py in repo.glob("*.py"):
        sys.modules.pop(py.stem, None)
    while str(repo) in sys.path:
        sys.path.remove(str(repo))
    sys.path.insert(0, str(repo))
    cwd = Path.cwd()
    try:
        apply_total(load_repo_config(repo, settings.feature_store_yaml), repo, skip_source_validation=False)
    finally:
        import os

        os.chdir(cwd)  # apply_total changes into the repository and stays there


def materialize(store: FeatureStore, start: TimeLike, end: TimeLike) -> float:
    """Load feature rows with timestamps in [start, end] into the online store; returns seconds."""
    t0 = time.perf_counter()
    store.materialize(start_date=to_utc(start).to_pydatetime(), end_date=to_utc(end).to_pydatetime())
    return time.perf_counter() - t0


def materialization_lock(settings: Settings) -> AbstractContextManager[None]:
    """Serialize materialization: two writers raced on the registry's interval list (one entry lost)."""
    return named_lock(settings, "materialize", settings.home / ".materialize.lock")


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

    `start` is where a fresh view's seed window begins (default: the earliest row of the views' tables).
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
                "run `retrain ingest --until DATE` first (it lands rows and builds the feature tables)"
            )
        # A premature `feast materialize-incremental` records an empty, inverted interval: not a seed.
        fresh = [v.name for v in views if not any(s <= e for s, e in v.materialization_intervals)]
        seeded = [v.name for v in views if v.name not in fresh]
        t0 = time.perf_counter()
        if fresh:
            first = to_utc(start) if start is not None else sources_start(views)
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


def _row_bounds(view: Any) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """(oldest, newest) event timestamp in a view's parquet source, from the footer statistics
    (None: unknown, e.g. not a local parquet file or no statistics)."""
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
    bounds: tuple[pd.Timestamp, pd.Timestamp] | None = None
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(col).statistics
        if stats is None or not stats.has_min_max:
            return None
        lo, hi = to_utc(stats.min), to_utc(stats.max)
        bounds = (lo, hi) if bounds is None else (min(bounds[0], lo), max(bounds[1], hi))
    return bounds


def _newest_row(view: Any) -> pd.Timestamp | None:
    """Newest event timestamp in a view's parquet source (None: unknown)."""
    bounds = _row_bounds(view)
    return None if bounds is None else bounds[1]


def sources_start(views: Sequence[Any]) -> pd.Timestamp:
    """Just before the earliest row any view's table holds (a fresh view's seed window starts here)."""
    starts = [b[0] for b in (_row_bounds(v) for v in views) if b is not None]
    if not starts:
        raise NoFeatureDataError("the feature tables hold no rows with an event timestamp: nothing to materialize "
                                 "(run `retrain ingest --until DATE` first)")
    return min(starts) - pd.Timedelta(seconds=1)


def service(store: FeatureStore, name: str) -> FeatureService:
    """Fetch the feature service once (per-request lookups cost ~10 ms each)."""
    return store.get_feature_service(name)


def historical_features(store: FeatureStore, entities: pd.DataFrame, feature_service: str, *, id_col: str,
                        numeric: Sequence[str] = ()) -> pd.DataFrame:
    """Point-in-time features for entity rows (unique `id_col`), in the input's order (Feast reorders
    rows); the `numeric` columns as float64 (NaN where missing).

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
    out = out.set_index(id_col).reindex(entities[id_col]).reset_index()
    for view, names in request_only or []:
        inputs = {f.name: entities[f.name].tolist() for src in view.source_request_sources.values()
                  for f in src.schema}
        derived = view.feature_transformation.udf(inputs)
        for name in names:
            out[name] = derived[name]
    for col in numeric:
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

