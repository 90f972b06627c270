"""The evaluator: challenger vs champion on the same fresh labelled window, gates, decision, record.

Refusals (unknown version, a window overlapping training, too few labelled rows, missing feature
columns) raise `EvaluationRefused` before anything is written. A decision is written as one
`evaluations` row together with its alias move (reject: the version is marked rejected; promote:
it becomes the challenger), in one transaction, with the HTML/PNG report. Acting on a promote
decision (bento build, champion move, event) is `retrain.models.promotion`. The gate logic itself lives,
pure, in `retrain.evaluation.gates`.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sqlalchemy.orm import Session, sessionmaker

from retrain.core.config import Settings
from retrain.core.db import Evaluation, ModelVersion
from retrain.evaluation.gates import Decision, GateConfig, ServingStats, day_blocks, decide
from retrain.evaluation.gates_regression import decide_regression
from retrain.models import registry
from retrain.models.train import FrameProvider

if TYPE_CHECKING:
    import lightgbm as lgb

    from retrain.models.promotion import BentoBuilder, PromotionResult


log = logging.getLogger(__name__)


class EvaluationRefused(ValueError):
    """The evaluation cannot be run fairly; nothing was recorded."""


class PromotionFailed(RuntimeError):
    """The decision was promote and was recorded, but acting on it failed; the champion is unchanged."""

    def __init__(self, message: str, outcome: EvaluationOutcome) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass
class EvaluationOutcome:
    """A recorded evaluation and what was done about it."""

    evaluation_id: int
    model_name: str
    version: str
    champion: str | None
    window_from: datetime
    window_to: datetime
    n_rows: int
    decision: Decision
    report_html: Path | None
    promotion: PromotionResult | None = None
    event_sent: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = self.decision.to_dict()
        return {
            "evaluation_id": self.evaluation_id,
            "model_name": self.model_name,
            "version": self.version,
            "champion": self.champion,
            "window_from": self.window_from.isoformat(),
            "window_to": self.window_to.isoformat(),
            "n_rows": self.n_rows,
            **d,
            "report": str(self.report_html) if self.report_html else None,
            "promoted": self.promotion is not None,
            "promotion": self.promotion.to_dict() if self.promotion else None,
            "event_sent": self.event_sent,
            "notes": self.notes,
        }


def one_month_after(start: datetime) -> datetime:
    """The same instant one calendar month later (Jul 1 -> Aug 1)."""
    return (pd.Timestamp(start) + pd.DateOffset(months=1)).to_pydatetime()


def default_window(challenger: ModelVersion, champion: ModelVersion | None) -> tuple[datetime, datetime]:
    """One calendar month from the end of the later training window (so neither model saw it)."""
    start = challenger.train_to if champion is None else max(challenger.train_to, champion.train_to)
    return start, one_month_after(start)


def _check_window(challenger: ModelVersion, champion: ModelVersion | None, start: datetime,
                  end: datetime) -> None:
    if end <= start:
        raise EvaluationRefused(f"window: 'to' ({end.isoformat()}) must be after 'from' ({start.isoformat()})")
    for role, mv in (("challenger", challenger), ("champion", champion)):
        if mv is not None and start < mv.train_to:
            raise EvaluationRefused(
                f"window: starts {start.isoformat()}, before the end of the {role} {mv.version}'s training window "
                f"({mv.train_to.isoformat()}); evaluate on data the models have not seen (from "
                f"{mv.train_to.isoformat()} on)")


def measure_latency_ms(boosters: list[lgb.Booster], rows: list[pd.DataFrame], n: int = 200) -> list[float]:
    """Median single-row `predict` time per booster, timed interleaved so machine noise hits all alike.

    One thread, as a serving worker predicts one request (OpenMP start-up on a busy machine otherwise
    dominates and measures the machine, not the model).
    """
    samples: list[list[float]] = [[] for _ in boosters]
    rows = [r.copy() for r in rows]
    for i in range(n + 5):
        for k, (booster, row) in enumerate(zip(boosters, rows, strict=True)):
            t0 = time.perf_counter()
            booster.predict(row, num_threads=1)
            if i >= 5:  # warm-up
                samples[k].append((time.perf_counter() - t0) * 1000.0)
    return [statistics.median(s) for s in samples]


def _features(booster: lgb.Booster, frame: pd.DataFrame, who: str) -> pd.DataFrame:
    names = list(booster.feature_name())
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise EvaluationRefused(f"evaluation frame: lacks the {who}'s feature(s) {', '.join(missing)}")
    return frame[names]


def _load(settings: Settings, mv: ModelVersion) -> lgb.Booster:
    from retrain.models.store import ModelStoreError, load_booster

    try:
        return load_booster(settings, mv.bento_model_tag, mv.model_checksum)
    except ModelStoreError as exc:
        raise EvaluationRefused(f"version {mv.version}: {exc}") from exc


def _utc(value: datetime | str) -> datetime:
    from retrain.core.times import to_utc

    return to_utc(value).to_pydatetime()


def _record(sessions: sessionmaker[Session], settings: Settings, *, challenger: ModelVersion,
            champion: ModelVersion | None, start: datetime, end: datetime, n_rows: int, decision: Decision,
            actor: str, pending: Path | None, extra_metrics: dict[str, Any],
            write_html: Callable[[Path, int], Path] | None) -> tuple[int, Path | None]:
    """One transaction: the evaluation row, its alias move, and the report directory's final name."""
    where = {"dir": pending}  # the report directory's current name (a retried attempt renames it again)

    def work(session: Session) -> tuple[int, Path | None]:
        row = Evaluation(model_name=settings.model_name, challenger_id=challenger.id,
                         champion_id=champion.id if champion else None, window_from=start, window_to=end,
                         n_rows=n_rows, decision=decision.decision, reasons=list(decision.reasons),
                         gates=[g.to_dict() for g in decision.gates],
                         metrics={**decision.to_dict()["metrics"], **extra_metrics,
                                  "slices": [s.to_dict() for s in decision.slices]})
        session.add(row)
        session.flush()
        html: Path | None = None
        current = where["dir"]
        if current is not None and write_html is not None:
            target = settings.reports_dir / f"evaluation-{row.id}"
            if target != current:
                if target.exists():  # left by an evaluation whose transaction never committed
                    shutil.rmtree(target)
                current.rename(target)
                where["dir"] = target
            html = write_html(target, row.id)
            row.report_path = str(html)
        reason = f"evaluation {row.id}: " + "; ".join(decision.reasons)[:900]
        current_challenger = registry.alias_in(session, settings.model_name, registry.CHALLENGER)
        if decision.promote:
            registry.set_challenger_in(session, challenger.version, reason, actor, row.id,
                                       model_name=settings.model_name)
        elif current_challenger is not None and current_challenger.id == challenger.id:
            registry.clear_challenger_in(session, settings.model_name, reason, actor, row.id, status="rejected")
        else:
            mv = session.get(ModelVersion, challenger.id)
            assert mv is not None
            registry.mark_status_in(session, mv, "rejected")
        return row.id, html

    try:
        return registry.atomic(sessions, work)
    except BaseException:
        if where["dir"] is not None:
            shutil.rmtree(where["dir"], ignore_errors=True)
        raise


def evaluate_version(
    settings: Settings,
    sessions: sessionmaker[Session],
    version: str,
    frame_provider: FrameProvider,
    *,
    window_from: datetime | str | None = None,
    window_to: datetime | str | None = None,
    act: bool = False,
    build_bento: bool | None = None,
    bento_builder: BentoBuilder | None = None,
    actor: str = "retrain",
    feature_migration: str | None = None,
    latency_samples: int = 200,
    write_report: bool = True,
    label: str,
    slice_columns: tuple[str, ...] = (),
    time_col: str | None = None,
) -> EvaluationOutcome:
    """Score challenger `version` and the champion on one fresh window, decide, record, maybe act.

    `act=True` promotes on a promote decision (bento build first, unless `build_bento` is False;
    None means `settings.retrain_build_bento`; see `retrain.models.promotion`). The build starts in the
    background as soon as the window checks pass, and is cancelled unless the promotion uses it.
    """
    from retrain.models import promotion

    with sessions() as session:
        try:
            challenger = registry.find_version(session, version, settings.model_name)
        except registry.UnknownVersionError as exc:
            raise EvaluationRefused(str(exc)) from exc
        champion = registry.alias_in(session, settings.model_name, registry.CHAMPION)
    if champion is not None and champion.id == challenger.id:
        raise EvaluationRefused(f"version {challenger.version} is the champion; evaluate a different version")
    start, end = default_window(challenger, champion)
    start = _utc(window_from) if window_from is not None else start
    end = _utc(window_to) if window_to is not None else (one_month_after(start) if window_from else end)
    _check_window(challenger, champion, start, end)
    background: promotion.BackgroundBuild | None = None
    if act and bento_builder is None and (settings.retrain_build_bento if build_bento is None else build_bento):
        background = promotion.BackgroundBuild(settings, challenger.bento_model_tag)  # overlaps the scoring
    try:
        return _evaluate(settings, sessions, challenger, champion, frame_provider, start, end, act=act,
                         build_bento=build_bento, bento_builder=background.result if background else bento_builder,
                         actor=actor, feature_migration=feature_migration, latency_samples=latency_samples,
                         write_report=write_report, label=label, slice_columns=slice_columns, time_col=time_col)
    finally:
        if background is not None:
            background.cancel()  # no-op when the promotion claimed the bento


def _evaluate(settings: Settings, sessions: sessionmaker[Session], challenger: ModelVersion,
              champion: ModelVersion | None, frame_provider: FrameProvider, start: datetime, end: datetime, *,
              act: bool, build_bento: bool | None, bento_builder: BentoBuilder | None, actor: str,
              feature_migration: str | None, latency_samples: int, write_report: bool, label: str,
              slice_columns: tuple[str, ...], time_col: str | None) -> EvaluationOutcome:
    from retrain.evaluation import reports
    from retrain.models import promotion

    config = GateConfig.from_settings(settings)
    try:
        frame = frame_provider(start, end).frame
    except ValueError as exc:
        raise EvaluationRefused(f"window [{start.isoformat()}, {end.isoformat()}): {exc}") from exc
    frame = frame[frame[label].notna()].reset_index(drop=True)
    if len(frame) < settings.eval_min_rows:
        raise EvaluationRefused(f"window [{start.isoformat()}, {end.isoformat()}): {len(frame)} labelled rows, "
                                f"need at least {settings.eval_min_rows} (eval_min_rows)")
    regression = str((challenger.params or {}).get("objective", "binary")) == "regression"
    y = frame[label].to_numpy(dtype="float64") if regression else frame[label].to_numpy().astype(bool)
    chal_booster = _load(settings, challenger)
    chal_x = _features(chal_booster, frame, "challenger")
    chal_scores = np.asarray(chal_booster.predict(chal_x, num_threads=settings.num_threads), dtype="float64")
    champ_scores: np.ndarray | None = None
    serving: ServingStats | None = None
    services: tuple[str, str] | None = None
    if champion is not None:
        champ_booster = _load(settings, champion)
        champ_x = _features(champ_booster, frame, "champion")
        champ_scores = np.asarray(champ_booster.predict(champ_x, num_threads=settings.num_threads),
                                  dtype="float64")
        lat = measure_latency_ms([chal_booster, champ_booster], [chal_x.iloc[:1], champ_x.iloc[:1]],
                                 latency_samples)
        serving = ServingStats(lat[0], challenger.model_size_bytes, lat[1], champion.model_size_bytes)
        services = (challenger.feature_service, champion.feature_service)
    slices = {c: frame[c].to_numpy() for c in slice_columns if c in frame.columns}
    # rows of one block of event time share its conditions: resample whole blocks (gate_block_hours)
    blocks = day_blocks(frame[time_col], config.block_hours) if time_col and time_col in frame.columns else None
    if regression:
        decision = decide_regression(y, chal_scores, champ_scores, config=config,
                                     metric=settings.gate_regression_metric, slices=slices, serving=serving,
                                     feature_services=services, migration=feature_migration, blocks=blocks)
    else:
        decision = decide(y, chal_scores, champ_scores, config=config, slices=slices, serving=serving,
                          feature_services=services, migration=feature_migration, blocks=blocks)
    extra = {"window_rows": len(frame), "feature_migration": feature_migration}

    data = reports.ReportData(settings.model_name, challenger.version, champion.version if champion else None,
                              start.isoformat(), end.isoformat(), y, chal_scores, champ_scores, decision)
    pending: Path | None = None
    if write_report:
        pending = settings.reports_dir / f".pending-{uuid.uuid4().hex}"
        pending.mkdir(parents=True)
        try:
            reports.render_png(data, pending / reports.PNG_NAME)
        except BaseException:
            shutil.rmtree(pending, ignore_errors=True)
            raise
    evaluation_id, html = _record(
        sessions, settings, challenger=challenger, champion=champion, start=start, end=end, n_rows=len(frame),
        decision=decision, actor=actor, pending=pending, extra_metrics=extra,
        write_html=(lambda d, i: reports.render_html(data, d / reports.HTML_NAME, i)) if write_report else None)
    outcome = EvaluationOutcome(evaluation_id, settings.model_name, challenger.version,
                                champion.version if champion else None, start, end, len(frame), decision, html)
    log.info("evaluation %d: %s %s vs %s", evaluation_id, decision.decision, challenger.version,
             champion.version if champion else "none")
    if reports.in_prefect_run():
        reports.publish_artifacts(data, evaluation_id, html)
    if not decision.promote:
        outcome.event_sent = promotion.emit_decision(settings, promotion.EVENT_REJECTED, {
            "version": challenger.version, "champion": outcome.champion, "evaluation_id": evaluation_id,
            "reasons": decision.reasons})
        return outcome
    if not act:
        outcome.notes.append("decision is promote; not acted on (--no-promote): the version is the challenger")
        return outcome
    try:
        outcome.promotion = promotion.promote_version(
            settings, sessions, challenger.version, f"evaluation {evaluation_id}: all gates passed", actor,
            evaluation_id, build=build_bento, builder=bento_builder,
            expect_champion_id=champion.id if champion else None)
    except Exception as exc:
        outcome.notes.append(f"promotion failed, champion unchanged: {exc}")
        raise PromotionFailed(f"evaluation {evaluation_id} decided promote, but promoting failed: {exc}",
                              outcome) from exc
    outcome.event_sent = outcome.promotion.event_sent
    return outcome
