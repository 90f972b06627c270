"""Guardrail after promotion: the replaced champion is scored in shadow for `guardrail_hours`; once labels
mature, a new champion that is worse on the same traffic (beyond the block bootstrap's noise) is rolled
back, with the evidence in the history and a `retrain.model.rollback` event; a better or equal one stays."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import numpy as np
import pytest
from tests.support.models import RegistryHome, add_fake_version, migrated_home

from retrain.alerts.guardrail import check_guardrail
from retrain.core import db
from retrain.core.config import Settings
from retrain.core.events import EVENT_ROLLBACK
from retrain.models import registry
from retrain.serving.follow import CHAMPION, AliasTarget, LoadedModel, ModelFollower

MODEL = "uc"
PROMOTED = datetime(2013, 6, 1, tzinfo=UTC)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[RegistryHome]:
    home = migrated_home(Settings(home=tmp_path, model_name=MODEL, eval_min_rows=300, guardrail_hours=192))
    sessions = home.sessions
    for name, params in (("v-old", {}), ("v-new", {}), ("r-old", {"objective": "regression"}),
                         ("r-new", {"objective": "regression"})):
        add_fake_version(sessions, MODEL, name, params=params)
    with mock.patch("retrain.core.clock.now", lambda _s: PROMOTED - timedelta(days=30)):
        registry.promote(sessions, "v-old", "first champion", "setup", model_name=MODEL)
    with mock.patch("retrain.core.clock.now", lambda _s: PROMOTED):
        registry.promote(sessions, "v-new", "evaluation 1: all gates passed", "flow:retrain", model_name=MODEL)
    yield home


def _traffic(home: RegistryHome, new: str, old: str, n: int, *, new_is_worse: bool, regression: bool = False,
             seed: int = 3) -> None:
    """`n` predictions over the week after the promotion, served by `new` with `old` in shadow; labels matured
    (the check runs at NOW, a week after the promotion, inside the 8-day window)."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n)
    y = (signal + rng.normal(scale=0.7, size=n) > 0).astype(float)
    good = 1 / (1 + np.exp(-2 * signal))
    bad = 1 / (1 + np.exp(-2 * rng.normal(size=n)))  # no relation to the label
    if regression:
        y = 100 + 20 * signal
        good, bad = y + rng.normal(scale=5, size=n), y + rng.normal(scale=30, size=n)
    served, shadow = (bad, good) if new_is_worse else (good, bad)
    with home.sessions.begin() as s:
        for i in range(n):
            at = PROMOTED + timedelta(minutes=int(9900 * i / n))
            s.add(db.Prediction(request_id=f"r{i}", model_name=MODEL, model_version=new, predicted_at=at,
                                entity_key=f"e{i}", event_time=at, features={}, score=float(served[i]),
                                shadow_version=old, shadow_score=float(shadow[i])))
            s.add(db.Outcome(model_name=MODEL, entity_key=f"e{i}", event_time=at, available_at=at + timedelta(hours=2),
                             label=float(y[i])))


def _champion(home: RegistryHome) -> str | None:
    row = registry.get_alias(home.sessions, registry.CHAMPION, MODEL)
    return row.version if row else None


NOW = PROMOTED + timedelta(days=7)


def test_a_worse_new_champion_is_rolled_back_with_the_evidence(home: RegistryHome) -> None:
    _traffic(home, "v-new", "v-old", 1400, new_is_worse=True)
    sent: list[tuple[str, dict[str, Any]]] = []
    result = check_guardrail(home.settings, home.sessions, MODEL, NOW, emit=lambda e, p: sent.append((e, p)))
    assert result.status == "rollback" and _champion(home) == "v-old"
    assert result.stats["n"] == 1400 and result.stats["blocks"] == 7 and result.stats["lower"] > 0
    move = registry.history(home.sessions, MODEL, registry.CHAMPION)[-1]
    assert (move.action, move.actor, move.from_version, move.to_version) == ("rollback", "guardrail", "v-new", "v-old")
    assert move.reason.startswith("guardrail: the previous champion's auc advantage on the same 1400 matured rows")
    [(event, payload)] = sent
    assert event == EVENT_ROLLBACK and payload["version"] == "v-old" and payload["rolled_back"] == "v-new"
    # rolled back: nothing left to guard
    assert check_guardrail(home.settings, home.sessions, MODEL, NOW).status == "none"


def test_a_better_new_champion_stays(home: RegistryHome) -> None:
    _traffic(home, "v-new", "v-old", 1400, new_is_worse=False)
    result = check_guardrail(home.settings, home.sessions, MODEL, NOW)
    assert result.status == "keep" and _champion(home) == "v-new" and result.stats["upper"] < 0


def test_too_few_matured_rows_wait(home: RegistryHome) -> None:
    _traffic(home, "v-new", "v-old", 200, new_is_worse=True)
    result = check_guardrail(home.settings, home.sessions, MODEL, NOW)
    assert result.status == "waiting" and _champion(home) == "v-new"
    assert result.detail.startswith("200 matured rows scored by both in 7 day blocks; need 300")


def test_past_the_window_the_guardrail_is_over(home: RegistryHome) -> None:
    _traffic(home, "v-new", "v-old", 1400, new_is_worse=True)
    later = PROMOTED + timedelta(hours=home.settings.guardrail_hours + 1)
    assert check_guardrail(home.settings, home.sessions, MODEL, later).status == "none"
    assert _champion(home) == "v-new"


def test_regression_uses_the_relative_loss(home: RegistryHome) -> None:
    with mock.patch("retrain.core.clock.now", lambda _s: PROMOTED - timedelta(days=1)):
        registry.promote(home.sessions, "r-old", "regression champion", "setup", model_name=MODEL)
    with mock.patch("retrain.core.clock.now", lambda _s: PROMOTED):
        registry.promote(home.sessions, "r-new", "evaluation 2", "flow:retrain", model_name=MODEL)
    _traffic(home, "r-new", "r-old", 1400, new_is_worse=True, regression=True)
    result = check_guardrail(home.settings, home.sessions, MODEL, NOW)
    assert result.status == "rollback" and result.stats["metric"] == "relative rmse" and _champion(home) == "r-old"


def _loaded(version: str, promoted_at: datetime | None = None) -> LoadedModel:
    target = AliasTarget(alias=CHAMPION, version_id=None, version=version, bento_model_tag=f"{MODEL}:{version}",
                         model_checksum=version, feature_service="fs", train_from=None, train_to=None,
                         promoted_at=promoted_at, generation=None)
    return LoadedModel(target=target, booster=SimpleNamespace(), column_order=None, loaded_at=PROMOTED)


@pytest.mark.parametrize("hours", [168.0, 0.0])
def test_serving_keeps_the_replaced_champion_in_shadow_for_the_window(tmp_path: Path, hours: float) -> None:
    follower = ModelFollower(Settings(home=tmp_path, guardrail_hours=hours), None, served_features=["x"],
                             resolve_path=lambda tag: tmp_path / tag)
    old = _loaded("v-old")
    follower.install(CHAMPION, old)
    assert follower.guarded() is None  # a first champion replaces nothing
    with mock.patch("retrain.serving.follow.utcnow", lambda: PROMOTED + timedelta(hours=1)):
        follower.install(CHAMPION, _loaded("v-new", promoted_at=PROMOTED))
        assert follower.guarded() is (old if hours else None)
    with mock.patch("retrain.serving.follow.utcnow", lambda: PROMOTED + timedelta(hours=169)):
        assert follower.guarded() is None  # the window is over: shadow scoring stops
