"""Acting on a decision: build a bento pinned to the model, move the champion alias, emit the event.

The bento is built *before* the alias moves, so a failed build leaves the champion as it was; a
bento built for a move that then fails (e.g. the champion changed meanwhile) is deleted again.
An evaluation that may promote starts the build in the background while it scores (`BackgroundBuild`),
so the build is mostly off the alert-to-new-model path; a rejection cancels it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from retrain.core.config import BENTOS_DIR, REPO_ROOT, Settings
from retrain.core.events import EVENT_PROMOTED, EVENT_REJECTED
from retrain.models import registry

log = logging.getLogger(__name__)

__all__ = ["EVENT_PROMOTED", "EVENT_REJECTED", "BackgroundBuild", "BentoBuildError", "PromotionResult", "build_bento",
           "emit_decision", "promote_version"]

BentoBuilder = Callable[[Settings, str], str]


class BentoBuildError(RuntimeError):
    """`bentoml build` failed; the champion was not moved."""


@dataclass(frozen=True)
class PromotionResult:
    version: str
    previous: str | None
    bento_tag: str | None
    event_sent: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _build_command(settings: Settings, model_tag: str) -> tuple[list[str], dict[str, str]]:
    from retrain.models.store import use_store

    home = use_store(settings)
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    bentofile = BENTOS_DIR / settings.bento / "bentofile.yaml"
    if not bentofile.is_file():
        raise BentoBuildError(f"bento {settings.bento!r}: no {bentofile} (setting `bento`)")
    args = ["--arg", f"model_tag={model_tag}"]
    if settings.bento == "usecase":  # the one service definition for any use case: which one it serves
        args += ["--arg", f"usecase={settings.usecase}"]
    cmd = [sys.executable, "-m", "bentoml", "build", "-f", str(bentofile), *args, "--output", "tag", str(REPO_ROOT)]
    return cmd, env


def _built_tag(model_tag: str, returncode: int, stdout: str, stderr: str) -> str:
    tags = [line.split("__tag__:", 1)[1].strip() for line in stdout.splitlines() if "__tag__:" in line]
    if returncode != 0 or not tags:
        tail = "\n".join((stderr or stdout).strip().splitlines()[-15:])
        raise BentoBuildError(f"bentoml build for {model_tag} failed (exit {returncode}):\n{tail}")
    return tags[-1]


def build_bento(settings: Settings, model_tag: str, *, timeout: float = 900.0) -> str:
    """`bentoml build` from the repo root with the model tag baked in; returns the bento tag."""
    cmd, env = _build_command(settings, model_tag)
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BentoBuildError(f"bentoml build for {model_tag} did not finish: {exc}") from exc
    return _built_tag(model_tag, proc.returncode, proc.stdout, proc.stderr)


class BackgroundBuild:
    """`bentoml build` started early in a subprocess, e.g. while the evaluation scores the challenger.

    `result()` waits for the bento tag (the builder `promote_version` calls, so the bento still
    exists before the alias moves); `cancel()` stops the build or deletes what it built.
    """

    def __init__(self, settings: Settings, model_tag: str, *, timeout: float = 900.0) -> None:
        cmd, env = _build_command(settings, model_tag)
        self.settings, self.model_tag, self.timeout = settings, model_tag, timeout
        self._proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
        self._tag: str | None = None
        self._claimed = False

    def result(self, _settings: Settings | None = None, _model_tag: str | None = None) -> str:
        """The bento tag (raises BentoBuildError); the caller owns the bento from here on."""
        try:
            out, err = self._proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired as exc:
            self._proc.kill()
            self._proc.communicate()
            raise BentoBuildError(f"bentoml build for {self.model_tag} did not finish: {exc}") from exc
        self._tag = _built_tag(self.model_tag, self._proc.returncode, out, err)
        self._claimed = True
        return self._tag

    def cancel(self) -> None:
        """Not needed after all: stop the build, or delete the bento it made (no-op once claimed)."""
        if self._claimed:
            return
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.communicate()
            return
        out, err = self._proc.communicate()
        try:
            tag = _built_tag(self.model_tag, self._proc.returncode, out, err)
        except BentoBuildError:
            return
        delete_bento(self.settings, tag)


def delete_bento(settings: Settings, bento_tag: str) -> None:
    from retrain.models.store import use_store

    use_store(settings)
    import bentoml

    try:
        bentoml.bentos.delete(bento_tag)
    except Exception as exc:  # cleanup must not hide the original failure
        log.warning("could not delete bento %s: %s", bento_tag, exc)


def emit_decision(settings: Settings, event: str, payload: dict[str, Any]) -> bool:
    """Emit `retrain.model.promoted` / `rejected` on `retrain.model.<name>` (False when not sent)."""
    from retrain.core import events

    try:
        return events.emit(event, events.model_resource(settings.model_name), payload, settings)
    except Exception as exc:  # the decision is recorded; a lost notification must not undo it
        log.warning("event %s not sent: %s", event, exc)
        return False


def promote_version(
    settings: Settings,
    sessions: sessionmaker[Session],
    version: str,
    reason: str,
    actor: str,
    evaluation_id: int | None = None,
    *,
    build: bool | None = None,
    builder: BentoBuilder | None = None,
    expect_champion_id: int | None = registry.ANY_CHAMPION,
) -> PromotionResult:
    """Build the bento, then move the champion alias (recording the bento tag), then emit the event."""
    if not reason or not reason.strip():
        raise registry.RegistryError("reason: a promotion needs a reason")
    with sessions() as session:
        target = registry.find_version(session, version, settings.model_name)
        champion = registry.alias_in(session, settings.model_name, registry.CHAMPION)
    if champion is not None and champion.id == target.id:
        raise registry.RegistryError(f"version {target.version} is already the champion")
    if build is None:
        build = settings.retrain_build_bento
    bento_tag = (builder or build_bento)(settings, target.bento_model_tag) if build else None
    try:
        row = registry.promote(sessions, target.version, reason, actor, evaluation_id, model_name=settings.model_name,
                               bento_tag=bento_tag, expect_champion_id=expect_champion_id)
    except BaseException:
        if bento_tag:
            delete_bento(settings, bento_tag)
        raise
    previous = champion.version if champion else None
    sent = emit_decision(settings, EVENT_PROMOTED, {
        "version": row.version, "bento_model_tag": row.bento_model_tag, "bento_tag": bento_tag,
        "previous": previous, "evaluation_id": evaluation_id, "reason": reason, "actor": actor,
    })
    log.info("promoted %s (previous %s, bento %s)", row.version, previous, bento_tag)
    return PromotionResult(row.version, previous, bento_tag, sent)
