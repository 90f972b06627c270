"""The serving runtime of a use case with its own Feast repository (behind `bentos/usecase/service.py`).

`UseCaseRuntime` is `retrain.serving.runtime.ServingRuntime` (champion follow with checksum-verified swaps,
shadow challenger, background prediction log, metrics, 503 until ready) with the use case's request
path, built from its spec:

validated rows -> a DataFrame of the request fields -> the use case's `feast.entity_rows` function
-> one `get_online_features` call through the FeatureService fetched at start -> the model's matrix
in `spec.features.names` order -> champion booster -> answer -> prediction log (after answering).

Categorical features are encoded as LightGBM encodes a pandas Categorical: the code of the value in
the categories the booster was trained with (`booster.pandas_categorical`), NaN when the value is
missing or not one of them; so a float64 matrix scores exactly like the training DataFrame did.
Each model gets its own encoding (a challenger may have seen other categories): the log keeps the raw
values and the shadow challenger encodes them with its own categories.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from retrain.core.config import Settings, base_settings
from retrain.core.db import utcnow
from retrain.serving.follow import AliasTarget, LoadedModel, ModelFollower, ModelLoadError, column_order, parse_verified
from retrain.serving.predlog import LogBatch
from retrain.serving.runtime import INLINE_MAX_ROWS, NotReadyError, PinnedModel, ServingRuntime
from retrain.usecase.catalog import UseCaseError, load_callable, load_usecase, settings_for
from retrain.usecase.featurestore import ROW_ID
from retrain.usecase.request import RequestModels, example_row, request_models, row_id
from retrain.usecase.spec import UseCaseSpec

if TYPE_CHECKING:
    import lightgbm as lgb
    from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

SERVICE_IMPORT = "bentos.usecase.service:UseCaseService"
ENTITY_TIMESTAMP = "event_timestamp"  # the entity frame's point-in-time column: not sent to the online store
Codes = dict[str, dict[str, int]]  # feature -> {category (as text): code}


def served_usecase(name: str, base: Settings | None = None) -> tuple[UseCaseSpec, Settings]:
    """The spec and settings of a use case this service can serve (it needs its own Feast repository)."""
    base = base if base is not None else base_settings()
    spec = load_usecase(base, name)
    if spec.feast is None:
        raise UseCaseError(f"use case {name!r}: has no feast section (its own Feast repository); "
                           "a use case with its own pipeline code names its own bento (setting `bento`)")
    return spec, settings_for(spec, base)


def category_codes(booster: lgb.Booster, categorical: Sequence[str]) -> Codes:
    """{feature: {category: code}} from the categories the booster was trained with.

    LightGBM stores one category list per pandas categorical column, in the training frame's column
    order (= the booster's feature order); the spec says which features those are.
    """
    names = list(booster.feature_name())
    cats = [n for n in names if n in set(categorical)]
    stored = booster.pandas_categorical or []
    if len(stored) != len(cats):
        raise ModelLoadError(f"model holds {len(stored)} pandas categorical feature(s), the use case declares "
                             f"{len(cats)} ({', '.join(cats) or 'none'}): train categoricals as pandas categories")
    return {name: {str(c): i for i, c in enumerate(values)} for name, values in zip(cats, stored, strict=True)}


def encode(raw: np.ndarray, names: Sequence[str], codes: Codes) -> np.ndarray:
    """Raw values (rows x `names`, object) -> float64 LightGBM input; NaN where missing or unknown."""
    n, k = raw.shape
    out = np.full((n, k), np.nan)
    for j, name in enumerate(names):
        mapping = codes.get(name)
        col = raw[:, j]
        for i in range(n):
            v = col[i]
            if v is None:
                continue
            if mapping is None:
                x = float(v)
                if not math.isnan(x):
                    out[i, j] = x
            else:
                c = mapping.get(str(v))
                if c is not None:
                    out[i, j] = c
    return out


def response_columns(resp: Any, names: Sequence[str], n: int) -> np.ndarray:
    """The online response's values for `names` (rows x names, object; None where null)."""
    out = np.full((n, len(names)), None, dtype=object)
    proto = getattr(resp, "proto", None)
    if proto is None:  # not Feast's OnlineResponse (stubs)
        data = resp.to_dict()
        for j, name in enumerate(names):
            out[:, j] = [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in data[name]]
        return out
    column = {name: i for i, name in enumerate(proto.metadata.feature_names.val)}
    for j, name in enumerate(names):
        if name not in column:
            raise UseCaseError(f"the feature service does not yield feature {name!r}")
        for i, v in enumerate(proto.results[column[name]].values):
            kind = v.WhichOneof("val")
            if kind is not None and kind != "null_val":
                out[i, j] = getattr(v, kind)
    return out


def _json_value(v: Any) -> Any:
    """A logged feature value: text stays text, numbers become floats (NaN -> None)."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool | np.bool_):
        return float(v)
    x = float(v)
    return None if math.isnan(x) or math.isinf(x) else x


class UseCaseFollower(ModelFollower):
    """`ModelFollower` for any objective: verify, parse, check the contract, warm up, keep the encoding."""

    def __init__(self, spec: UseCaseSpec, settings: Settings, sessions: sessionmaker[Session] | None,
                 **kwargs: Any) -> None:
        super().__init__(settings, sessions, **kwargs)
        self.spec = spec
        self.codes: weakref.WeakKeyDictionary[lgb.Booster, Codes] = weakref.WeakKeyDictionary()

    def load(self, target: AliasTarget) -> LoadedModel:
        if target.feature_service != self.settings.feature_service:
            raise ModelLoadError(f"version {target.version} was trained on feature service "
                                 f"{target.feature_service!r}, this service serves {self.settings.feature_service!r}")
        booster = parse_verified(self.resolve_path(target.bento_model_tag), target.model_checksum)
        codes = category_codes(booster, self.spec.features.categorical)
        model = LoadedModel(target=target, booster=booster, column_order=column_order(booster, self.served),
                            loaded_at=utcnow())
        self._warm_up(model, codes)
        self.codes[booster] = codes
        return model

    def _warm_up(self, model: LoadedModel, codes: Codes) -> None:
        """Score all-missing, all-first-category/zero and a ramp: finite (a probability for binary)."""
        k = len(self.served)
        ramp = np.linspace(-1.0, 1.0e4, k)
        ramp[[j for j, name in enumerate(self.served) if name in codes]] = 0.0  # a known category
        scores = model.predict(np.vstack([np.full(k, np.nan), np.zeros(k), ramp]))
        ok = scores.shape == (3,) and bool(np.all(np.isfinite(scores)))
        if ok and self.spec.objective == "binary":
            ok = bool(scores.min() >= 0 and scores.max() <= 1)
        if not ok:
            raise ModelLoadError(f"warm-up prediction is not a finite {self.spec.objective} score per row: {scores!r}")

    def codes_of(self, model: LoadedModel) -> Codes:
        found = self.codes.get(model.booster)
        if found is None:  # installed without `load` (tests): derive once
            found = self.codes[model.booster] = category_codes(model.booster, self.spec.features.categorical)
        return found


class UseCaseRuntime(ServingRuntime):
    """Everything one worker needs to serve one use case (see module doc)."""

    def __init__(
        self,
        spec: UseCaseSpec,
        settings: Settings,
        *,
        pinned: PinnedModel | None = None,
        follow: bool = True,
        store_factory: Callable[[Settings], Any] | None = None,
        sessions: sessionmaker[Session] | None = None,
        emit: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        if spec.feast is None:
            raise UseCaseError(f"{spec.name}: has no feast section (its own Feast repository)")
        self.spec = spec  # before super().__init__: `_new_follower` reads it
        self.models: RequestModels = request_models(spec, max_batch=settings.serve_max_batch)
        self._entity_rows = load_callable(spec, spec.feast.entity_rows)
        self._fields = [f.name for f in spec.request]
        self._datetime_fields = [f.name for f in spec.request if f.kind == "datetime"]
        super().__init__(settings, pinned=pinned, follow=follow, store_factory=store_factory, sessions=sessions,
                         emit=emit, features=spec.features.names)
        self.follower: UseCaseFollower

    def _new_follower(self, settings: Settings, sessions: sessionmaker[Session], **kwargs: Any) -> ModelFollower:
        return UseCaseFollower(self.spec, settings, sessions, **kwargs)

    def _connect(self) -> tuple[Any, Any]:
        from retrain.usecase.featurestore import open_store

        store = (self._store_factory or open_store)(self.settings)
        return store, store.get_feature_service(self.spec.features.service)

    def _warm(self) -> None:
        import json

        self._lookup_rows([self.models.item.model_validate_json(json.dumps(example_row(self.spec))).model_dump()])

    # ------------------------------------------------------------------ request path

    def request_frame(self, rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
        """The request fields (validated rows, dumped) as a DataFrame (spec names; datetimes as UTC timestamps)."""
        frame = pd.DataFrame(list(rows), columns=self._fields)
        for name in self._datetime_fields:
            frame[name] = pd.to_datetime(frame[name], utc=True)
        return frame

    def entity_frame(self, rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
        """The use case's entity rows of a batch (its `feast.entity_rows` function), one per row, in order."""
        ents = self._entity_rows(self.request_frame(rows))
        if not isinstance(ents, pd.DataFrame) or len(ents) != len(rows):
            raise UseCaseError(f"{self.spec.name}: feast.entity_rows must return one entity row per request row")
        return ents.reset_index(drop=True)

    def _lookup_rows(self, rows: Sequence[dict[str, Any]]) -> tuple[pd.DataFrame, np.ndarray]:
        """(entity frame, raw feature values rows x features) with one online-store call."""
        ents = self.entity_frame(rows)
        entity_rows = {c: ents[c].tolist() for c in ents.columns if c not in (ROW_ID, ENTITY_TIMESTAMP)}
        if self._lookup_lock is None:
            resp = self.store.get_online_features(features=self.feature_service, entity_rows=entity_rows)
        else:
            with self._lookup_lock:
                resp = self.store.get_online_features(features=self.feature_service, entity_rows=entity_rows)
        return ents, response_columns(resp, self.features, len(rows))

    def _score_rows(self, model: LoadedModel, rows: Sequence[dict[str, Any]]) -> tuple[pd.DataFrame, np.ndarray,
                                                                                   np.ndarray, np.ndarray]:
        ents, raw = self._lookup_rows(rows)
        matrix = encode(raw, self.features, self.follower.codes_of(model))
        threads = 1 if len(rows) < 500 else self.settings.num_threads
        return ents, raw, matrix, model.predict(matrix, num_threads=threads)

    async def predict_rows(self, rows: Sequence[BaseModel]) -> BaseModel:
        """Score validated rows (`models.item`); raises NotReadyError (503) when no champion / store."""
        t0 = time.perf_counter()
        model = self.follower.champion  # one snapshot for the whole batch
        if model is None or self.feature_service is None:
            raise NotReadyError("no champion model loaded yet" if model is None else "online store not available")
        request_id = self._request_ids()
        plains = [r.model_dump() for r in rows]  # once: the lookup, the answer and the log read them
        if len(rows) <= INLINE_MAX_ROWS:
            ents, raw, matrix, scores = self._score_rows(model, plains)
        else:
            ents, raw, matrix, scores = await asyncio.to_thread(self._score_rows, model, plains)
        missing_mask = np.isnan(matrix)
        now = utcnow()
        binary = self.spec.objective == "binary"
        threshold = self.settings.decision_threshold
        version = model.version
        time_col = self.spec.data.time_col
        entity_ids = ents[ROW_ID].astype(str).tolist() if ROW_ID in ents.columns else None
        preds: list[BaseModel] = []
        log_rows: list[dict[str, Any]] = []
        for i, row in enumerate(rows):
            attributes = row.model_dump(mode="json")
            plain = plains[i]
            # the log's entity key is the use case's row id (what its outcomes are keyed by); the answer
            # names the row by the request's id column when it carries one
            key = entity_ids[i] if entity_ids is not None else row_id(self.spec, plain, request_id=request_id,
                                                                       index=i)
            carried = self.spec.data.id_col is not None and plain.get(self.spec.data.id_col) is not None
            rid = row_id(self.spec, plain) if carried else key
            missing = [self.features[j] for j in np.flatnonzero(missing_mask[i])]
            score = float(scores[i])
            preds.append(self.models.prediction.model_construct(
                row_id=rid, score=score, predicted_label=(score >= threshold) if binary else None,
                model_version=version, missing_features=missing))
            event_time = plain.get(time_col)
            log_rows.append({
                "request_id": request_id, "model_name": self.settings.model_name, "model_version": version,
                "predicted_at": now, "entity_key": key,
                "event_time": event_time if isinstance(event_time, datetime) else now,
                "attributes": attributes,
                "features": {name: _json_value(v) for name, v in zip(self.features, raw[i], strict=True)},
                "missing_features": missing, "score": score, "shadow_version": None, "shadow_score": None})
        self.predlog.submit(LogBatch(log_rows, raw))
        self._count(version, missing_mask, t0)
        return self.models.response.model_construct(request_id=request_id, model_name=self.settings.model_name,
                                                    model_version=version, predictions=preds)

    def _shadow_inputs(self, challenger: LoadedModel, stacked: np.ndarray) -> np.ndarray:
        """The logged raw values, encoded with the challenger's own categories (flusher thread)."""
        return encode(stacked, self.features, self.follower.codes_of(challenger))

