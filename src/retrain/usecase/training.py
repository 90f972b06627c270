"""Training a use case that has its own Feast repository: point-in-time frames of its landed rows
through its feature service, fitted with its objective and registered under its name."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import pandas as pd

from retrain.core.config import Settings
from retrain.models.train import FrameProvider, TrainedVersion, TrainingError, train_version
from retrain.usecase import featurestore as FS
from retrain.usecase.labels import label_values
from retrain.usecase.landing import landed_rows
from retrain.usecase.spec import UseCaseSpec

if TYPE_CHECKING:
    from feast import FeatureStore
    from sqlalchemy.orm import Session, sessionmaker


@dataclass(frozen=True)
class UseCaseTrainingSet:
    """What `train_version` reads (the same fields as `features.TrainingSet`)."""

    frame: pd.DataFrame
    feature_names: list[str]
    n_excluded: int
    feature_service: str


def model_frame(spec: UseCaseSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """Features as LightGBM takes them: declared categoricals as pandas categories (sorted values of
    this frame; the booster keeps them for serving), everything else float64."""
    out = frame.copy()
    for name in spec.features.names:
        if name in spec.features.categorical:
            values = out[name].astype("string")
            cats = sorted(str(v) for v in values.dropna().unique())
            plain = [None if pd.isna(v) else str(v) for v in values.tolist()]
            out[name] = pd.Categorical(plain, categories=cats)
        else:
            out[name] = pd.to_numeric(out[name], errors="coerce").astype("float64")
    return out


def frame_provider(spec: UseCaseSpec, settings: Settings, store: FeatureStore) -> FrameProvider:
    """[lo, hi) -> the labelled landed rows of that window through the feature service."""

    def provide(lo: datetime, hi: datetime) -> UseCaseTrainingSet:
        rows = landed_rows(settings, spec)
        if rows.empty:
            raise TrainingError(f"{spec.name}: nothing landed yet; run `retrain ingest --usecase {spec.name} "
                                "--until DATE` first")
        times = pd.to_datetime(rows[spec.data.time_col], utc=True)
        window = rows[((times >= pd.Timestamp(lo)) & (times < pd.Timestamp(hi))).to_numpy()].reset_index(drop=True)
        labels = label_values(spec, window)
        labelled = window[labels.notna().to_numpy()].reset_index(drop=True)
        if labelled.empty:
            raise TrainingError(f"{spec.name}: no labelled landed rows in [{lo.isoformat()}, {hi.isoformat()})")
        frame = FS.training_frame(spec, store, labelled)
        frame[spec.label.column] = labels[labels.notna()].to_numpy()
        frame[spec.data.time_col] = pd.to_datetime(frame[spec.data.time_col], utc=True)
        return UseCaseTrainingSet(frame=model_frame(spec, frame), feature_names=list(spec.features.names),
                                  n_excluded=int(len(window) - len(labelled)), feature_service=spec.features.service)

    return provide


def train(spec: UseCaseSpec, settings: Settings, sessions: sessionmaker[Session], start: datetime | str,
          end: datetime | str) -> TrainedVersion:
    """Fit a candidate on [start, end) of the landed rows and register it under the use case's name."""
    store = FS.open_store(settings)
    return train_version(settings, sessions, frame_provider(spec, settings, store), start, end,
                         label=spec.label.column, time_col=spec.data.time_col, objective=spec.objective)
