"""A use case's own Feast repository: its feature tables, `feast apply`, and point-in-time training
frames through its feature service.

The domain code (which tables, which entity rows) lives in the use case's folder, or is the engine's
generic module for a use case `retrain init` scaffolded (`retrain.usecase.generic`), and is named by the
spec (`feast.raw`, `feast.tables`, `feast.entity_rows`; `catalog.load_callable` binds the spec to a
function that takes it, so every ref is called the same way); this module only orders the steps, the
same way for every use case: land raw rows -> tables under `$RETRAIN_HOME/offline/usecases/<name>/` -> apply -> training
frames, whose features must equal what the use case's history gives (the parity test).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from retrain.core.config import Settings
from retrain.features import store as feature_store
from retrain.features.offline import write_parquet_atomic
from retrain.usecase.catalog import UseCaseError, load_callable
from retrain.usecase.spec import FeastSpec, UseCaseSpec

if TYPE_CHECKING:
    from feast import FeatureStore

ROW_ID = "row_id"


def _feast(spec: UseCaseSpec) -> FeastSpec:
    if spec.feast is None:
        raise UseCaseError(f"{spec.name}: has no feast section (its features come from the engine's feature_repo/)")
    return spec.feast


def tables_dir(settings: Settings, spec: UseCaseSpec) -> Path:
    """Where the use case's feature tables live (its FileSources point here)."""
    return settings.offline_dir / "usecases" / spec.name


def raw_rows(spec: UseCaseSpec) -> pd.DataFrame:
    """The use case's raw rows, as its data module returns them."""
    return _frame(spec, _feast(spec).raw)


def _frame(spec: UseCaseSpec, ref: str, *args: Any) -> Any:
    out = load_callable(spec, ref)(*args)
    if not isinstance(out, pd.DataFrame | dict):
        raise UseCaseError(f"{spec.name}: {ref} returned {type(out).__name__}, not a DataFrame")
    return out


def write_tables(spec: UseCaseSpec, settings: Settings, raw: pd.DataFrame) -> dict[str, int]:
    """Build the feature views' tables from landed raw rows and write them atomically; rows per table."""
    tables = _frame(spec, _feast(spec).tables, raw)
    if not isinstance(tables, dict) or not all(isinstance(t, pd.DataFrame) for t in tables.values()):
        raise UseCaseError(f"{spec.name}: feast.tables must return {{name: DataFrame}}")
    target = tables_dir(settings, spec)
    for name, table in tables.items():
        write_parquet_atomic(table, target / f"{name}.parquet")
    return {name: len(table) for name, table in tables.items()}


def apply(spec: UseCaseSpec, settings: Settings) -> None:
    """`feast apply` of the use case's repository for the active profile (tables must exist)."""
    _feast(spec)
    feature_store.apply_repo(settings)


def open_store(settings: Settings) -> FeatureStore:
    """The use case's FeatureStore (settings from `settings_for`: feature_repo is its repository)."""
    return feature_store.open_store(settings)


def training_frame(spec: UseCaseSpec, store: FeatureStore, raw: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time features of `raw` through the feature service, in raw's order, with the label and
    the event time: columns `row_id`, time column, features (spec order), label."""
    entities = _frame(spec, _feast(spec).entity_rows, raw)
    if ROW_ID not in entities.columns or not entities[ROW_ID].is_unique:
        raise UseCaseError(f"{spec.name}: feast.entity_rows must return a unique {ROW_ID!r} column")
    service = store.get_feature_service(spec.features.service)
    got = store.get_historical_features(entity_df=entities, features=service).to_df()
    got = got.set_index(ROW_ID).reindex(entities[ROW_ID]).reset_index()  # Feast reorders rows
    missing = [n for n in spec.features.names if n not in got.columns]
    if missing:
        raise UseCaseError(f"{spec.name}: feature service {spec.features.service} does not yield {missing}")
    out = pd.DataFrame({ROW_ID: got[ROW_ID].to_numpy(), spec.data.time_col: raw[spec.data.time_col].to_numpy()})
    for name in spec.features.names:
        out[name] = got[name].to_numpy()
    out[spec.label.column] = raw[spec.label.column].to_numpy()
    return out
