"""The steps of one retrain for any use case: catch up, train, evaluate (what the retrain flow orders).

A use case with its own Feast repository lands its rows (`landing`), trains through its feature
service (`training`) and is judged by the evaluator with its label and slices; a use case without one
keeps the engine's built-in pipeline. The retrain and monitor flows look the use case up by the `model_name`
their event carries, so several use cases share one Prefect server and one RETRAIN_HOME.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from retrain import clock
from retrain.config import Settings, base_settings
from retrain.usecase.catalog import load_usecase, settings_for
from retrain.usecase.spec import UseCaseSpec

if TYPE_CHECKING:
    from retrain.evaluate import EvaluationOutcome


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
        from retrain.features import materialize_until
        from retrain.registry import open_registry

        s = self.settings
        done: dict[str, Any] = {}
        if self.own_feast:
            from retrain.usecase import featurestore, landing

            if clock.simulated(s):
                done["replay"] = landing.replay_until(self.spec, s, open_registry(s), now).to_dict()
            start = landing.data_start(s, self.spec)
            done["materialize"] = materialize_until(featurestore.open_store(s), s, now, start=start)
            return done
        from retrain.features import refresh_feature_tables, shared_store
        from retrain.ingest import replay_until

        if clock.simulated(s):
            done["replay"] = replay_until(s, open_registry(s), now).counts()
            done["tables"] = refresh_feature_tables(s, now)
        done["materialize"] = materialize_until(shared_store(s), s, now)
        return done

    def train(self, start: datetime, end: datetime) -> str:
        """Train a challenger on [start, end); its registry version."""
        from retrain.registry import open_registry

        if self.own_feast:
            from retrain.usecase.training import train

            return train(self.spec, self.settings, open_registry(self.settings), start, end).version
        from retrain.train import feast_frame_provider, train_version

        provider = feast_frame_provider(self.settings, shared=True)
        return train_version(self.settings, open_registry(self.settings), provider, start, end).version

    def evaluate(self, version: str, start: datetime, end: datetime, *, actor: str) -> EvaluationOutcome:
        """Champion vs challenger on [start, end); promotes on a pass (bento build first when set)."""
        from retrain.evaluate import evaluate_version
        from retrain.registry import open_registry

        s = self.settings
        if self.own_feast:
            from retrain.usecase import featurestore
            from retrain.usecase.training import frame_provider

            provider = frame_provider(self.spec, s, featurestore.open_store(s))
            return evaluate_version(s, open_registry(s), version, provider, window_from=start, window_to=end,
                                    act=True, build_bento=s.retrain_build_bento, actor=actor,
                                    label=self.spec.label.column, slice_columns=tuple(self.spec.slices))
        from retrain.train import feast_frame_provider

        return evaluate_version(s, open_registry(s), version, feast_frame_provider(s, shared=True),
                                window_from=start, window_to=end, act=True, build_bento=s.retrain_build_bento,
                                actor=actor)


def pipeline_for(model_name: str) -> Pipeline:
    """The pipeline of the use case an event names."""
    spec, settings = settings_of(model_name)
    return Pipeline(spec, settings)
