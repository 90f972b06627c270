"""The steps of one retrain for any use case: catch up, train, evaluate (what the retrain flow orders).

A use case with its own Feast repository lands its rows (`landing`), trains through its feature
service (`training`) and is judged by the evaluator with its label and slices; a use case with its own
pipeline code (`pipeline:` in its spec) catches up and provides training frames through it. The
retrain and monitor flows look the use case up by the `model_name` their event carries, so several
use cases share one Prefect server and one RETRAIN_HOME.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from retrain.core import clock
from retrain.core.config import Settings, base_settings
from retrain.usecase.catalog import UseCaseError, load_callable, load_usecase, settings_for
from retrain.usecase.spec import UseCaseSpec

if TYPE_CHECKING:
    from retrain.evaluation.evaluate import EvaluationOutcome
    from retrain.models.train import FrameProvider, TrainedVersion


def settings_of(model_name: str) -> tuple[UseCaseSpec, Settings]:
    """(spec, settings) of the use case named by an event's `model_name`."""
    base = base_settings()
    spec = load_usecase(base, model_name)
    return spec, settings_for(spec, base)


@dataclass(frozen=True)
class Pipeline:
    """Catch-up, training and evaluation of one use case."""

    spec: UseCaseSpec
    settings: Settings

    @property
    def own_feast(self) -> bool:
        return self.spec.feast is not None

    def catch_up(self, now: datetime) -> dict[str, Any]:
        """Land what the clock has released (replays only) and bring the online store up to `now`."""
        from retrain.features.store import materialize_until
        from retrain.models.registry import open_registry

        s = self.settings
        if self.spec.pipeline is not None:
            done: dict[str, Any] = load_callable(self.spec, self.spec.pipeline.catch_up)(s, now)
            return done
        done = {}
        if self.own_feast:
            from retrain.usecase import featurestore, landing

            if clock.simulated(s):
                done["replay"] = landing.replay_until(self.spec, s, open_registry(s), now).to_dict()
            start = landing.data_start(s, self.spec)
            done["materialize"] = materialize_until(featurestore.open_store(s), s, now, start=start)
        return done

    def provider(self) -> FrameProvider:
        """Training and evaluation frames of a window, through the use case's feature service."""
        s = self.settings
        if self.spec.pipeline is not None:
            provider: FrameProvider = load_callable(self.spec, self.spec.pipeline.frame_provider)(s)
            return provider
        if self.own_feast:
            from retrain.usecase import featurestore
            from retrain.usecase.training import frame_provider

            return frame_provider(self.spec, s, featurestore.open_store(s))
        raise UseCaseError(f"{self.spec.name}: neither a feast section nor pipeline code: no feature service "
                           "to train through (use `retrain backtest` on its file)")

    def train_version(self, start: datetime | str, end: datetime | str) -> TrainedVersion:
        """Train a challenger on [start, end) and register it under the use case's name."""
        from retrain.models.registry import open_registry
        from retrain.models.train import train_version

        return train_version(self.settings, open_registry(self.settings), self.provider(), start, end,
                             label=self.spec.label.column, time_col=self.spec.data.time_col,
                             objective=self.spec.objective)

    def train(self, start: datetime, end: datetime) -> str:
        """Train a challenger on [start, end); its registry version."""
        return self.train_version(start, end).version

    def evaluate(self, version: str, start: datetime | str | None = None, end: datetime | str | None = None, *,
                 actor: str, act: bool = True, build_bento: bool | None = None,
                 feature_migration: str | None = None) -> EvaluationOutcome:
        """Champion vs challenger on [start, end) (default: after its training window); promotes on a
        pass when `act` (bento build first unless `build_bento` is False; None: the setting)."""
        from retrain.evaluation.evaluate import evaluate_version
        from retrain.models.registry import open_registry

        s = self.settings
        return evaluate_version(s, open_registry(s), version, self.provider(), window_from=start, window_to=end,
                                act=act, build_bento=s.retrain_build_bento if build_bento is None else build_bento,
                                actor=actor, feature_migration=feature_migration, label=self.spec.label.column,
                                slice_columns=tuple(self.spec.slices), time_col=self.spec.data.time_col)


def pipeline_for(model_name: str) -> Pipeline:
    """The pipeline of the use case an event names."""
    spec, settings = settings_of(model_name)
    return Pipeline(spec, settings)
