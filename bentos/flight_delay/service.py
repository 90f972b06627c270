"""Minimal flight-delay service: the pinned model scores raw feature rows.

The model tag is a bento argument (`bentoml build --arg model_tag=flight_delay:<version>`), so a
built bento always serves the model it was built for. The serving issue grows this service
(online features, champion following, prediction log); keep this one small.
"""

from __future__ import annotations

import math
from typing import Any

import bentoml
import pandas as pd
from bentoml.exceptions import InvalidArgument
from pydantic import BaseModel


class BuildArgs(BaseModel):
    model_tag: str


args = bentoml.use_arguments(BuildArgs)


@bentoml.service(name="flight_delay", traffic={"timeout": 30})
class FlightDelay:
    """Scores feature rows with the pinned LightGBM booster."""

    model = bentoml.models.BentoModel(args.model_tag)

    def __init__(self) -> None:
        self.booster = bentoml.lightgbm.load_model(self.model)
        self.features: list[str] = list(self.booster.feature_name())

    @bentoml.api
    def predict(self, rows: list[dict[str, float | None]]) -> dict[str, Any]:
        """Late-arrival probability per row; missing features are NaN, unknown ones refused."""
        if not rows:
            raise InvalidArgument("rows: send at least one feature row")
        for i, row in enumerate(rows):
            unknown = sorted(set(row) - set(self.features))
            if unknown:
                raise InvalidArgument(f"rows[{i}]: unknown feature(s) {', '.join(unknown)}")
        frame = pd.DataFrame([{f: (math.nan if r.get(f) is None else r[f]) for f in self.features} for r in rows],
                             columns=self.features, dtype="float64")
        scores = self.booster.predict(frame)
        return {"model_tag": str(self.model.tag), "scores": [float(s) for s in scores]}
