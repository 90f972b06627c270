"""Champion follow: verify-before-load, atomic swaps, keep serving on failure, challenger tracking."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker
from tests.support.models import fake_version_fields, registry_home

from flight_delay.features import MODEL_FEATURES
from retrain.models import registry
from retrain.serving.follow import (
    CHALLENGER,
    CHAMPION,
    ModelFollower,
    ModelLoadError,
    column_order,
    parse_verified,
    trial_load,
)


def booster(seed: int, names: list[str] | None = None) -> lgb.Booster:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, len(MODEL_FEATURES)))
    y = (x[:, seed % len(MODEL_FEATURES)] + rng.normal(size=400) > 0).astype(int)
    ds = lgb.Dataset(x, y, feature_name=names or list(MODEL_FEATURES))
    return lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1, "seed": seed}, ds, num_boost_round=5)


def save(b: lgb.Booster, path: Path) -> str:
    b.save_model(str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Store:
    """Model files by tag, as the BentoML store would resolve them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, Path] = {}

    def add(self, sessions: sessionmaker[Session], seed: int, *, corrupt: bool = False) -> str:
        i = len(self.files) + 1
        path = self.root / f"model{i}.txt"
        checksum = save(booster(seed), path)
        if corrupt:  # truncated after the registry recorded the good file's checksum
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        fields = fake_version_fields(i)
        fields.update(model_checksum=checksum, bento_model_tag=f"flight_delay:m{i}")
        self.files[fields["bento_model_tag"]] = path
        return registry.register_version(sessions, **fields).version

    def resolve(self, tag: str) -> Path:
        return self.files[tag]


@pytest.fixture
def home(tmp_path: Path) -> tuple[Any, sessionmaker[Session], Store, list[tuple[str, dict[str, Any]]]]:
    settings, sessions = registry_home(tmp_path, serve_swap_retry_seconds=3600.0)
    return settings, sessions, Store(tmp_path), []


def follower(home: Any) -> ModelFollower:
    settings, sessions, store, events = home
    return ModelFollower(settings, sessions, served_features=list(MODEL_FEATURES), resolve_path=store.resolve,
                         emit=lambda name, payload: events.append((name, payload)))


def test_truncated_model_is_refused_before_lightgbm_parses_it(tmp_path: Path) -> None:
    path = tmp_path / "m.txt"
    checksum = save(booster(1), path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        parse_verified(path, checksum)
    # without a checksum the file is parsed in a child process; LightGBM aborting kills only the child
    with pytest.raises(ModelLoadError, match="trial load"):
        trial_load(path)


def test_column_order_follows_the_booster_names() -> None:
    served = list(MODEL_FEATURES)
    assert column_order(booster(1), served) is None
    rev = booster(2, names=served[::-1])
    order = column_order(rev, served)
    assert order is not None and [served[i] for i in order] == served[::-1]
    with pytest.raises(ModelLoadError, match="does not serve: bogus"):
        column_order(booster(3, names=["bogus", *served[1:]]), served)


def test_follow_swaps_keeps_old_on_corrupt_and_tracks_challenger(home: Any) -> None:
    settings, sessions, store, events = home
    f = follower(home)
    assert f.poll_once() and f.champion is None  # no champion yet: nothing to serve
    v1 = store.add(sessions, 1)
    registry.promote(sessions, v1, reason="first", actor="test")
    f.poll_once()
    assert f.champion is not None and f.champion.version == v1
    first = f.champion
    f.poll_once()
    assert f.champion is first  # unchanged alias: no reload

    v2 = store.add(sessions, 2)
    registry.promote(sessions, v2, reason="better", actor="test")
    f.poll_once()
    assert f.champion is not None and f.champion.version == v2
    x = np.random.default_rng(0).normal(size=(5, len(MODEL_FEATURES)))
    assert not np.allclose(first.predict(x), f.champion.predict(x))

    bad = store.add(sessions, 3, corrupt=True)
    registry.promote(sessions, bad, reason="corrupt", actor="test")
    f.poll_once()
    f.poll_once()
    assert f.champion.version == v2  # still serving the old model
    assert f.last_error is not None and "checksum mismatch" in f.last_error
    assert [e[0] for e in events] == ["retrain.serving.swap_failed"]  # emitted once, not per poll
    assert events[0][1]["version"] == bad and events[0][1]["serving_version"] == v2

    v4 = store.add(sessions, 4)
    registry.set_challenger(sessions, v4, reason="shadow", actor="test")
    f.poll_once()
    assert f.challenger is not None and f.challenger.version == v4 and f.champion.version == v2
    registry.clear_challenger(sessions, "flight_delay", reason="done", actor="test")
    f.poll_once()
    assert f.challenger is None
    info = f.registry[CHAMPION]
    assert info.version == bad and CHALLENGER not in f.registry


def test_unreadable_registry_keeps_the_champion(home: Any) -> None:
    settings, sessions, store, _ = home
    f = follower(home)
    v1 = store.add(sessions, 1)
    registry.promote(sessions, v1, reason="first", actor="test")
    f.poll_once()

    def down() -> Session:
        raise RuntimeError("database unavailable")

    f.sessions = down  # type: ignore[assignment]
    assert f.poll_once() is False
    assert f.champion is not None and f.champion.version == v1


def test_model_trained_on_another_feature_service_is_refused(home: Any) -> None:
    settings, sessions, store, events = home
    v1 = store.add(sessions, 1)
    with sessions() as s, s.begin():
        registry.find_version(s, v1).feature_service = "flight_delay_v0"
    registry.promote(sessions, v1, reason="first", actor="test")
    f = follower(home)
    f.poll_once()
    assert f.champion is None and "flight_delay_v0" in (f.last_error or "")
