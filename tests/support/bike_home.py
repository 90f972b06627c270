"""A RETRAIN_HOME for serving bike sharing: hours landed and its Feast repository applied, a small
LightGBM regression trained on point-in-time rows, registered and promoted (shared by the use-case
service tests and bench/serve_generic.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import pandas as pd
import pytest
from sqlalchemy.orm import Session, sessionmaker
from tests.support.models import fake_version_fields

from retrain.core.config import Settings, get_settings
from retrain.models import registry
from retrain.models import store as modelstore
from retrain.models.train import fit
from retrain.usecase import featurestore as FS
from retrain.usecase.spec import UseCaseSpec

USECASE = "bike_sharing"
LANDED_UNTIL = pd.Timestamp("2011-06-02", tz="UTC")  # hours landed (tables written) before this
TRAIN_FROM = pd.Timestamp("2011-03-01", tz="UTC")
TRAIN_TO = pd.Timestamp("2011-06-01", tz="UTC")
HOURS = pd.to_datetime(["2011-06-01 15:00", "2011-06-01 16:00", "2011-06-01 17:00"], utc=True)  # served


@dataclass
class BikeHome:
    spec: UseCaseSpec
    settings: Settings
    sessions: sessionmaker[Session]
    store: Any
    booster: lgb.Booster
    version: str
    picks: pd.DataFrame  # the raw rows of HOURS
    offline: pd.DataFrame  # their point-in-time training rows (model frame)
    start: pd.Timestamp  # materialized up to here


def model_frame(spec: UseCaseSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """Categoricals as pandas categories (sorted values: deliberately not the spec's order), the rest float64."""
    out = frame.copy()
    for name in spec.features.names:
        if name in spec.features.categorical:
            values = [None if pd.isna(v) else str(v) for v in out[name].tolist()]
            out[name] = pd.Categorical(values, categories=sorted({v for v in values if v is not None}))
        else:
            out[name] = pd.to_numeric(out[name], errors="coerce").astype("float64")
    return out


def payload(row: pd.Series, **changes: Any) -> dict[str, Any]:
    """A request row from a raw bike hour (ts with its UTC offset, as a client sends it)."""
    body = {"ts": pd.Timestamp(row["ts"]).tz_convert("America/New_York").isoformat(),
            "holiday": bool(row["holiday"]), "workingday": bool(row["workingday"]), "season": str(row["season"])}
    body.update(changes)
    return body


def materialize_to(home: BikeHome, when: pd.Timestamp) -> None:
    home.store.materialize(start_date=home.start.to_pydatetime(), end_date=when.to_pydatetime())
    home.start = when


def bike_env(mp: pytest.MonkeyPatch, home: Path) -> None:
    """The environment of a bike-sharing serving home (also what a `bentoml serve` child inherits)."""
    mp.setenv("RETRAIN_HOME", str(home))
    mp.setenv("RETRAIN_USECASE", USECASE)
    mp.setenv("BENTOML_HOME", str(home / "bentoml"))
    mp.setenv("RETRAIN_SERVE_LOG_FLUSH_SECONDS", "0.2")
    mp.setenv("RETRAIN_SERVE_MAX_BATCH", "5")
    mp.delenv("RETRAIN_API_KEY", raising=False)
    get_settings.cache_clear()


def build_bike_home() -> BikeHome:
    """Tables of the hours landed before LANDED_UNTIL, `feast apply`, a small regression trained on the
    point-in-time rows of [TRAIN_FROM, TRAIN_TO) as champion, online store up to HOURS[0]'s prediction time."""
    from retrain.usecase.serving import served_usecase

    spec, settings = served_usecase(USECASE)
    settings.ensure_dirs()
    raw = FS.raw_rows(spec)
    landed = raw[raw["ts"] < LANDED_UNTIL].reset_index(drop=True)
    FS.write_tables(spec, settings, landed)
    FS.apply(spec, settings)
    store = FS.open_store(settings)

    train_rows = landed[(landed["ts"] >= TRAIN_FROM) & (landed["ts"] < TRAIN_TO)].reset_index(drop=True)
    frame = model_frame(spec, FS.training_frame(spec, store, train_rows))
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    result = fit(frame, spec.features.names, label="cnt", time_col="ts", objective="regression",
                 params={"min_data_in_leaf": 20}, num_threads=1, num_boost_round=20, early_stopping_rounds=0)
    booster = result.booster
    assert booster.pandas_categorical is not None

    sessions = registry.open_registry(settings)
    saved = modelstore.save_booster(settings, booster, metadata={}, labels={})
    fields = fake_version_fields(1, model_name=USECASE)
    fields.update(bento_model_tag=saved.tag, model_checksum=saved.checksum, feature_service=spec.features.service)
    version = registry.register_version(sessions, **fields).version
    registry.promote(sessions, version, reason="serving test", actor="tests", model_name=USECASE)

    picks = raw[raw["ts"].isin(HOURS)].reset_index(drop=True)
    assert len(picks) == len(HOURS)
    offline = model_frame(spec, FS.training_frame(spec, store, picks))
    bh = BikeHome(spec=spec, settings=settings, sessions=sessions, store=store, booster=booster, version=version,
                  picks=picks, offline=offline, start=raw["ts"].min() - pd.Timedelta(days=1))
    materialize_to(bh, HOURS[0] - pd.Timedelta(hours=1))  # the first served hour's prediction time
    return bh


def offline_score(bike: BikeHome, i: int, **changes: Any) -> float:
    row = bike.offline.iloc[[i]][bike.spec.features.names].copy()
    for name, value in changes.items():
        row[name] = value
    return float(bike.booster.predict(row)[0])


