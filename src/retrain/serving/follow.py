"""Champion follow: every serving worker tracks the registry's aliases and swaps models in place.

An in-process reload only changes the worker that handled it, so each worker polls the shared
pointer (the `aliases` table) itself. A new target is loaded from the local BentoML model store,
its file's sha256 checked against `ModelVersion.model_checksum` BEFORE LightGBM parses it (a
truncated model file aborts the whole process instead of raising), the booster parsed from exactly
the bytes that were hashed, checked against the feature contract, warmed up with a validation
prediction, and only then published by replacing one immutable `LoadedModel` reference. A request
reads that reference once, so every row of a batch is scored by the same version. When any step
fails, the old model keeps serving, the failure is logged, counted and emitted as
`retrain.serving.swap_failed`, and the target is retried after `serve_swap_retry_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from retrain.core.config import Settings
from retrain.core.db import Alias, ModelVersion, utcnow

if TYPE_CHECKING:
    import lightgbm as lgb

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


class ModelLoadError(RuntimeError):
    """A model could not be verified, parsed or warmed up; the message says which step."""


@dataclass(frozen=True)
class AliasTarget:
    """What an alias points at, with what is needed to load and verify it."""

    alias: str
    version_id: int | None
    version: str
    bento_model_tag: str
    model_checksum: str | None
    feature_service: str
    train_from: datetime | None
    train_to: datetime | None
    promoted_at: datetime | None
    generation: int | None

    @property
    def key(self) -> tuple[str, str | None]:
        """Identity of the artifact: same tag and checksum means nothing to reload."""
        return (self.bento_model_tag, self.model_checksum)


@dataclass(frozen=True)
class LoadedModel:
    """A verified, warmed-up booster; replaced as a whole, never mutated."""

    target: AliasTarget
    booster: lgb.Booster
    column_order: list[int] | None  # permutation of the served features into the booster's order
    loaded_at: datetime

    @property
    def version(self) -> str:
        return self.target.version

    def predict(self, matrix: np.ndarray, num_threads: int = 1) -> np.ndarray:
        """Probabilities for rows in the serving feature order."""
        x = matrix if self.column_order is None else matrix[:, self.column_order]
        return np.asarray(self.booster.predict(x, num_threads=num_threads), dtype="float64")


def read_aliases(sessions: sessionmaker[Session], model_name: str) -> dict[str, AliasTarget]:
    """All aliases of a model with their versions, in one cheap query."""
    stmt = (select(Alias, ModelVersion).join(ModelVersion, ModelVersion.id == Alias.version_id)
            .where(Alias.model_name == model_name))
    with sessions() as session:
        rows = session.execute(stmt).all()
    return {
        alias.alias: AliasTarget(
            alias=alias.alias, version_id=mv.id, version=mv.version, bento_model_tag=mv.bento_model_tag,
            model_checksum=mv.model_checksum, feature_service=mv.feature_service, train_from=mv.train_from,
            train_to=mv.train_to, promoted_at=alias.updated_at, generation=alias.generation,
        )
        for alias, mv in rows
    }


def version_by_tag(sessions: sessionmaker[Session], tag: str) -> ModelVersion | None:
    """The registry row of a BentoML model tag (used for a pinned model's checksum)."""
    with sessions() as session:
        return session.scalars(select(ModelVersion).where(ModelVersion.bento_model_tag == tag)).first()


def trial_load(path: Path, timeout: float = 60.0) -> None:
    """Parse a model file in a child process: a corrupt file kills the child, not the server."""
    code = "import sys, lightgbm; lightgbm.Booster(model_file=sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, encoding="utf-8",
                          errors="replace", timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise ModelLoadError(f"trial load of {path.name} failed (exit {proc.returncode}): {tail[0][:300]}")


def parse_verified(path: Path, expected_sha256: str | None) -> lgb.Booster:
    """Hash the file, compare, then parse the very bytes that were hashed (no re-read race).

    Without a recorded checksum (a pinned bento whose registry is out of reach) the file is parsed
    in a child process first.
    """
    import lightgbm as lgb

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"model file {path}: cannot read ({exc})") from exc
    if expected_sha256:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise ModelLoadError(f"model file {path.name}: checksum mismatch (registry {expected_sha256[:12]}…, "
                                 f"file {actual[:12]}…, {len(data)} bytes); refusing to load it")
    else:
        trial_load(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"model file {path.name}: not LightGBM's text format") from exc
    try:
        return lgb.Booster(model_str=text)
    except Exception as exc:
        raise ModelLoadError(f"model file {path.name}: LightGBM refused it ({exc})") from exc


def column_order(booster: lgb.Booster, served: list[str]) -> list[int] | None:
    """How to reorder served columns for the booster; None when the orders already agree."""
    names = list(booster.feature_name())
    if names == served:
        return None
    if len(names) != len(served):
        raise ModelLoadError(f"model expects {len(names)} features, the feature service serves {len(served)}")
    if all(n == f"Column_{i}" for i, n in enumerate(names)):
        return None  # trained without names: positional, in the contract's order
    unknown = sorted(set(names) - set(served))
    if unknown:
        raise ModelLoadError(f"model expects features the feature service does not serve: {', '.join(unknown)}")
    index = {n: i for i, n in enumerate(served)}
    return [index[n] for n in names]


def validation_matrix(n_features: int) -> np.ndarray:
    """Warm-up rows: all missing, all zero, and a ramp (covers NaN routing and both split sides)."""
    return np.vstack([np.full(n_features, np.nan), np.zeros(n_features), np.linspace(-1.0, 1.0e4, n_features)])


def warm_up(model: LoadedModel, n_features: int) -> None:
    """A validation prediction: the right shape, finite probabilities in [0, 1]."""
    scores = model.predict(validation_matrix(n_features))
    if scores.shape != (3,) or not np.all(np.isfinite(scores)) or scores.min() < 0 or scores.max() > 1:
        raise ModelLoadError(f"warm-up prediction is not a probability per row: {scores!r}")


def load_model(target: AliasTarget, model_path: Path, served: list[str], feature_service: str) -> LoadedModel:
    """Verify, parse, check against the feature contract, warm up."""
    if target.feature_service != feature_service:
        raise ModelLoadError(f"version {target.version} was trained on feature service {target.feature_service!r}, "
                             f"this service serves {feature_service!r}")
    booster = parse_verified(model_path, target.model_checksum)
    model = LoadedModel(target=target, booster=booster, column_order=column_order(booster, served),
                        loaded_at=utcnow())
    warm_up(model, len(served))
    return model


Emitter = Callable[[str, dict[str, Any]], None]


class ModelFollower:
    """Holds this worker's champion and challenger and moves them when the registry does."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session] | None,
        *,
        served_features: list[str],
        resolve_path: Callable[[str], Path],
        emit: Emitter | None = None,
        on_swap: Callable[[str, LoadedModel], None] | None = None,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.served = served_features
        self.resolve_path = resolve_path
        self.emit = emit
        self.on_swap = on_swap
        self.on_failure = on_failure
        self.champion: LoadedModel | None = None
        self.challenger: LoadedModel | None = None
        self.previous: LoadedModel | None = None  # the champion a promotion replaced, scored in shadow for a while
        self.previous_until: datetime | None = None
        self.registry: dict[str, AliasTarget] = {}
        self.last_error: str | None = None
        self.last_checked: datetime | None = None
        self._failed: dict[tuple[str, tuple[str, str | None]], float] = {}
        self._registry_ok = True
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ loading

    def load(self, target: AliasTarget) -> LoadedModel:
        return load_model(target, self.resolve_path(target.bento_model_tag), self.served,
                          self.settings.feature_service)

    def guarded(self) -> LoadedModel | None:
        """The previous champion while its guardrail window runs (`guardrail_hours` after the promotion)."""
        previous, until = self.previous, self.previous_until
        if previous is None or until is None or utcnow() >= until:
            return None
        return previous

    def install(self, alias: str, model: LoadedModel | None) -> None:
        """Publish a model (one reference assignment: requests see the old or the new one, whole)."""
        if alias == CHAMPION:
            old = self.champion
            if old is not None and model is not None and old.target.key != model.target.key:
                self._guard(old, model)
            self.champion = model
        else:
            self.challenger = model
        if model is not None:
            log.info("serving %s %s (%s) in worker %d", alias, model.version, model.target.bento_model_tag,
                     os.getpid())
            if self.on_swap:
                self.on_swap(alias, model)

    def _guard(self, old: LoadedModel, new: LoadedModel) -> None:
        """Keep the replaced champion for shadow scoring during the new one's guardrail window."""
        hours = self.settings.guardrail_hours
        start = new.target.promoted_at or utcnow()
        if hours <= 0:
            self.previous = self.previous_until = None
            return
        self.previous, self.previous_until = old, start + timedelta(hours=hours)
        log.info("guardrail: %s scored in shadow beside %s until %s", old.version, new.version,
                 self.previous_until.isoformat())

    def _follow_previous(self, targets: dict[str, AliasTarget]) -> None:
        """A worker started after a promotion loads the replaced champion itself (once per promotion)."""
        champion = targets.get(CHAMPION)
        if (self.settings.guardrail_hours <= 0 or champion is None or self.champion is None
                or self.champion.target.key != champion.key or self.sessions is None):
            return
        if self.previous is not None and self.previous_until is not None:
            return
        from retrain.models.registry import replaced_champion

        pair = replaced_champion(self.sessions, self.settings.model_name, utcnow(), self.settings.guardrail_hours)
        if pair is None or pair[0].version != champion.version:
            self.previous_until = utcnow()  # nothing to guard: do not ask again for this champion
            self.previous = None
            return
        _new, old, promoted_at = pair
        target = AliasTarget(alias="previous", version_id=old.id, version=old.version,
                             bento_model_tag=old.bento_model_tag, model_checksum=old.model_checksum,
                             feature_service=old.feature_service, train_from=old.train_from, train_to=old.train_to,
                             promoted_at=None, generation=None)
        try:
            self.previous = self.load(target)
        except Exception as exc:
            log.warning("guardrail: could not load the previous champion %s: %s", old.version, exc)
            self.previous = None
        self.previous_until = promoted_at + timedelta(hours=self.settings.guardrail_hours)

    def _fail(self, alias: str, target: AliasTarget, exc: BaseException) -> None:
        key = (alias, target.key)
        first = key not in self._failed
        self._failed[key] = time.monotonic()
        current = self.champion if alias == CHAMPION else self.challenger
        self.last_error = f"{alias} {target.version}: {exc}"
        log.error("could not swap in %s %s (%s): %s; still serving %s", alias, target.version,
                  target.bento_model_tag, exc, current.version if current else "nothing")
        if self.on_failure:
            self.on_failure(alias)
        if first and self.emit is not None:
            payload = {"alias": alias, "version": target.version, "bento_model_tag": target.bento_model_tag,
                       "error": str(exc)[:2000], "serving_version": current.version if current else None,
                       "worker_pid": os.getpid()}
            try:
                self.emit("retrain.serving.swap_failed", payload)
            except Exception:
                log.exception("could not emit retrain.serving.swap_failed")

    def _due(self, alias: str, target: AliasTarget) -> bool:
        failed_at = self._failed.get((alias, target.key))
        return failed_at is None or time.monotonic() - failed_at >= self.settings.serve_swap_retry_seconds

    def _follow(self, alias: str, target: AliasTarget | None) -> None:
        current = self.champion if alias == CHAMPION else self.challenger
        if target is None:
            if alias == CHALLENGER and current is not None:
                log.info("challenger alias cleared: shadow scoring of %s stops", current.version)
                self.install(CHALLENGER, None)
            return  # a champion alias that disappeared keeps the last champion serving
        if current is not None and current.target.key == target.key:
            if current.target != target:  # same artifact, alias metadata moved (e.g. promoted again)
                self.install(alias, LoadedModel(target, current.booster, current.column_order, current.loaded_at))
            return
        if alias == CHALLENGER and self.champion is not None and self.champion.target.key == target.key:
            self.install(CHALLENGER, None)  # a challenger identical to the champion has nothing to say
            return
        if not self._due(alias, target):
            return
        try:
            model = self.load(target)
        except Exception as exc:
            self._fail(alias, target, exc)
            return
        self._failed.pop((alias, target.key), None)
        self.last_error = None
        self.install(alias, model)

    def poll_once(self) -> bool:
        """Read the aliases and follow them; False when the registry could not be read."""
        if self.sessions is None:
            return False
        with self._lock:
            try:
                targets = read_aliases(self.sessions, self.settings.model_name)
            except Exception as exc:
                if self._registry_ok:
                    log.warning("registry unreadable (%s); keeping %s", str(exc).splitlines()[0][:300],
                                self.champion.version if self.champion else "no model")
                self._registry_ok = False
                return False
            if not self._registry_ok:
                log.info("registry readable again")
            self._registry_ok = True
            self.registry = targets
            self.last_checked = utcnow()
            self._follow(CHAMPION, targets.get(CHAMPION))
            self._follow(CHALLENGER, targets.get(CHALLENGER))
            try:
                self._follow_previous(targets)
            except Exception as exc:  # the guardrail's shadow must never stop the champion follow
                log.warning("guardrail: previous champion not followed: %s", str(exc).splitlines()[0][:300])
            return True

    async def run(self, stop: asyncio.Event, interval: float, also: Callable[[], None] | None = None) -> None:
        """Poll every `interval` seconds until `stop` is set (loads happen in a thread)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
            if stop.is_set():
                return
            try:
                if also is not None:
                    await asyncio.to_thread(also)
                await asyncio.to_thread(self.poll_once)
            except Exception:
                log.exception("champion follow: poll failed")
