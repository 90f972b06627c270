"""The evaluator: gates on constructed score arrays, then the whole evaluate -> decide -> promote path
on synthetic data with a known concept change (no Feast, no servers)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from tests.support.models import Provider, registry_home

from retrain.core import metrics
from retrain.core.config import Settings
from retrain.core.db import Evaluation
from retrain.evaluation import evaluate, gates, reports
from retrain.evaluation.evaluate import EvaluationRefused, PromotionFailed, evaluate_version
from retrain.evaluation.gates import GateConfig, ServingStats, decide
from retrain.models import promotion, registry, train
from retrain.models import store as modelstore

CONFIG = GateConfig(slice_min_rows=500)


def _latent(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    y = rng.random(n) < 1 / (1 + np.exp(-(2.0 * z - 1.0)))
    return z, y, rng


def _gate(decision: gates.Decision, name: str) -> gates.GateResult:
    return next(g for g in decision.gates if g.name == name)


# ------------------------------------------------------------------------------ pure gates


def test_clearly_better_challenger_is_promoted() -> None:
    z, y, rng = _latent(8000, 1)
    champion = z + rng.normal(scale=1.5, size=z.size)
    challenger = z + rng.normal(scale=0.4, size=z.size)
    carriers = rng.choice(["AA", "UA", "DL"], size=z.size)
    d = decide(y, challenger, champion, config=CONFIG, slices={"carrier": carriers},
               serving=ServingStats(0.2, 1000, 0.2, 1000), feature_services=("fs1", "fs1"))
    assert d.decision == "promote", d.reasons
    assert all(g.passed and not g.skipped for g in d.gates)
    imp = _gate(d, "improvement")
    assert imp.value is not None and imp.value > 0.05
    assert d.metrics["challenger"]["auc"] > d.metrics["champion"]["auc"] + 0.05
    assert len(d.slices) == 3


def test_identical_model_is_rejected() -> None:
    z, y, rng = _latent(8000, 2)
    scores = 1 / (1 + np.exp(-(z + rng.normal(size=z.size))))
    d = decide(y, scores, scores.copy(), config=CONFIG)
    assert d.decision == "reject"
    imp = _gate(d, "improvement")
    assert not imp.passed and imp.value == 0.0 and imp.threshold == 0.0
    assert any(r.startswith("improvement failed") for r in d.reasons)


def test_better_overall_but_worse_on_one_large_slice_is_rejected_by_the_slice_gate() -> None:
    z, y, rng = _latent(12000, 3)
    carriers = rng.choice(["AA", "UA", "DL", "B6"], size=z.size, p=[0.3, 0.2, 0.25, 0.25])
    champion = z + rng.normal(scale=1.0, size=z.size)
    challenger = z + rng.normal(scale=0.3, size=z.size)
    ua = carriers == "UA"
    challenger[ua] = z[ua] + rng.normal(scale=2.5, size=ua.sum())  # much worse on UA only
    d = decide(y, challenger, champion, config=CONFIG, slices={"carrier": carriers})
    assert _gate(d, "improvement").passed
    sl = _gate(d, "slices")
    assert not sl.passed and sl.value is not None and sl.value < -CONFIG.slice_tolerance
    assert d.decision == "reject"
    regressed = [s.slice for s in d.slices if s.regressed]
    assert regressed == ["carrier=UA"]
    assert "carrier=UA" in sl.detail and "Holm p" in sl.detail
    ua = next(s for s in d.slices if s.slice == "carrier=UA")
    assert ua.upper < -CONFIG.slice_tolerance and ua.p_adjusted <= CONFIG.alpha  # significant after Holm


def test_tiny_noisy_difference_is_rejected() -> None:
    z, y, rng = _latent(3000, 4)
    champion = z + rng.normal(scale=1.0, size=z.size)
    challenger = z + rng.normal(scale=0.97, size=z.size)  # a hair better in expectation: noise level
    d = decide(y, challenger, champion, config=CONFIG)
    imp = _gate(d, "improvement")
    assert d.decision == "reject" and not imp.passed
    assert imp.value is not None and imp.value <= 0.0
    assert d.metrics["bootstrap"]["upper"] > 0.0  # the interval straddles zero


def test_no_champion_absolute_gates_decide() -> None:
    z, y, rng = _latent(5000, 5)
    noise = rng.random(z.size)
    weak = decide(y, noise, None, config=CONFIG)
    assert weak.decision == "reject" and not _gate(weak, "auc_floor").passed
    assert [g.name for g in weak.gates if g.skipped] == ["improvement", "slices", "latency", "model_size",
                                                         "compatibility"]
    good = decide(y, z, None, config=CONFIG)
    assert good.decision == "promote" and _gate(good, "auc_floor").value == pytest.approx(metrics.roc_auc(y, z))


def test_serving_and_compatibility_gates() -> None:
    z, y, rng = _latent(6000, 6)
    champion = z + rng.normal(scale=1.5, size=z.size)
    challenger = z + rng.normal(scale=0.4, size=z.size)
    slow = decide(y, challenger, champion, config=CONFIG, serving=ServingStats(1.0, 9000, 0.25, 1000),
                  feature_services=("flight_delay_v2", "flight_delay_v1"))
    assert slow.decision == "reject"
    assert {g.name for g in slow.gates if not g.passed} == {"latency", "model_size", "compatibility"}
    assert _gate(slow, "latency").value == pytest.approx(4.0)
    migrated = decide(y, challenger, champion, config=CONFIG, feature_services=("flight_delay_v2", "flight_delay_v1"),
                      migration="v2 adds taxi-out; approved by ops")
    assert _gate(migrated, "compatibility").passed and "approved by ops" in _gate(migrated, "compatibility").detail


def test_gate_thresholds_come_from_settings(tmp_path: Path) -> None:
    z, y, rng = _latent(5000, 7)
    scores = z + rng.normal(size=z.size)
    auc = metrics.roc_auc(y, scores)
    strict = GateConfig.from_settings(Settings(home=tmp_path, gate_auc_floor=auc + 0.01))
    lax = GateConfig.from_settings(Settings(home=tmp_path, gate_auc_floor=auc - 0.01))
    assert decide(y, scores, None, config=strict).decision == "reject"
    assert decide(y, scores, None, config=lax).decision == "promote"
    with pytest.raises(ValueError, match="gate_bootstrap_resamples"):
        GateConfig(bootstrap_resamples=100)


def test_rank_auc_and_weighted_bootstrap_match_sklearn() -> None:
    z, y, rng = _latent(3000, 8)
    a = np.round(z + rng.normal(size=z.size), 1)  # many ties
    b = z + rng.normal(scale=2, size=z.size)
    assert metrics.roc_auc(y, a) == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    diffs = metrics.paired_bootstrap(y, a, b, resamples=3, seed=11)
    idx = np.random.default_rng(11).integers(0, z.size, size=(3, z.size))
    for k in range(3):
        expected = roc_auc_score(y[idx[k]], a[idx[k]]) - roc_auc_score(y[idx[k]], b[idx[k]])
        assert diffs[k] == pytest.approx(expected, abs=1e-12)


def test_bootstrap_of_25k_rows_is_fast() -> None:
    z, y, rng = _latent(25_000, 9)
    a, b = z + rng.normal(size=z.size), z + rng.normal(size=z.size)
    t0 = time.perf_counter()
    diffs = metrics.paired_bootstrap(y, a, b, resamples=1000, seed=1)
    elapsed = time.perf_counter() - t0
    assert diffs.shape == (1000,) and np.isfinite(diffs).all()
    # Compared with the naive loop in the same run (the machine is shared, absolute times drift):
    # sklearn on 2 x 25 explicit resamples, extrapolated to 1000 paired resamples.
    idx = rng.integers(0, z.size, size=(25, z.size))
    t0 = time.perf_counter()
    for row in idx:
        roc_auc_score(y[row], a[row]) - roc_auc_score(y[row], b[row])
    naive = (time.perf_counter() - t0) * 1000 / 25
    assert elapsed < naive / 3, f"bootstrap {elapsed:.2f} s vs naive sklearn loop ~{naive:.2f} s"
    assert elapsed < 20.0, f"1000 resamples of 25k rows took {elapsed:.2f} s"


# ---------------------------------------------------------------------- evaluate_version


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, sessionmaker[Session], Provider]:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    settings, sessions = registry_home(tmp_path)
    return settings, sessions, Provider()


def _train(home: tuple[Settings, sessionmaker[Session], Provider], start: str, end: str) -> str:
    settings, sessions, provider = home
    return train.train_version(settings, sessions, provider, start, end, label="late", time_col="sched_dep").version


Home = tuple[Settings, sessionmaker[Session], Provider]


def _evaluate(home: Home, version: str, **kw: object) -> evaluate.EvaluationOutcome:
    settings, sessions, provider = home
    kw.setdefault("act", True)
    kw.setdefault("build_bento", False)
    return evaluate_version(settings, sessions, version, provider, latency_samples=30, **{"label": "late", **kw})  # type: ignore[arg-type]


def _champion(home: tuple[Settings, sessionmaker[Session], Provider]) -> str | None:
    mv = registry.get_alias(home[1], registry.CHAMPION, home[0].model_name)
    return mv.version if mv else None


def _n_evaluations(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(Evaluation)) or 0)


def test_evaluate_promote_then_better_challenger_replaces_champion(home) -> None:  # type: ignore[no-untyped-def]
    settings, sessions, provider = home
    v1 = _train(home, "2013-01-01", "2013-03-01")
    first = _evaluate(home, v1)
    assert first.decision.decision == "promote" and first.champion is None
    assert first.promotion is not None and _champion(home) == v1
    assert (first.window_from.isoformat(), first.window_to.isoformat()) == (
        "2013-03-01T00:00:00+00:00", "2013-04-01T00:00:00+00:00")
    assert first.report_html is not None and first.report_html.is_file()
    assert (first.report_html.parent / reports.PNG_NAME).stat().st_size > 10_000
    assert first.report_html.parent.name == f"evaluation-{first.evaluation_id}"

    v2 = _train(home, "2013-03-01", "2013-05-01")
    second = _evaluate(home, v2)
    assert second.decision.decision == "promote", second.decision.reasons
    assert second.champion == v1 and _champion(home) == v2
    chal, champ = second.decision.metrics["challenger"], second.decision.metrics["champion"]
    assert chal["auc"] > champ["auc"] + 0.05  # v1 never learned x2
    assert second.window_from.isoformat().startswith("2013-05-01")
    with sessions() as s:
        row = s.get(Evaluation, second.evaluation_id)
        assert row is not None and row.decision == "promote" and row.n_rows == second.n_rows
        assert {g["name"] for g in row.gates} == {"auc_floor", "improvement", "slices", "latency", "model_size",
                                                  "compatibility"}
        assert all(g["passed"] for g in row.gates) and row.report_path == str(second.report_html)
    assert registry.get_version(sessions, v1).status == "archived"
    champion_moves = [h for h in registry.history(sessions, settings.model_name) if h.alias == "champion"]
    assert [(h.from_version, h.to_version, h.evaluation_id) for h in champion_moves] == [
        (None, v1, first.evaluation_id), (v1, v2, second.evaluation_id)]
    assert second.to_dict()["gates"][0].keys() >= {"name", "passed", "value", "threshold"}


def test_identical_challenger_is_rejected_end_to_end(home) -> None:  # type: ignore[no-untyped-def]
    settings, sessions, _ = home
    v1 = _train(home, "2013-01-01", "2013-03-01")
    _evaluate(home, v1)
    twin = _train(home, "2013-01-01", "2013-03-01")
    assert registry.get_version(sessions, twin).data_fingerprint == registry.get_version(sessions, v1).data_fingerprint
    out = _evaluate(home, twin)
    assert out.decision.decision == "reject" and out.promotion is None
    assert _gate(out.decision, "improvement").value == 0.0
    assert _champion(home) == v1 and registry.get_version(sessions, twin).status == "rejected"
    assert out.event_sent is False  # no PREFECT_API_URL: logged, not sent to a throwaway server


def test_refusals_record_nothing(home) -> None:  # type: ignore[no-untyped-def]
    settings, sessions, provider = home
    v1 = _train(home, "2013-01-01", "2013-03-01")
    with pytest.raises(EvaluationRefused, match="before the end of the challenger"):
        _evaluate(home, v1, window_from="2013-02-15", window_to="2013-03-15")
    with pytest.raises(EvaluationRefused, match="need at least 500"):
        _evaluate(home, v1, window_from="2013-03-01", window_to="2013-03-02")
    with pytest.raises(EvaluationRefused, match="no such model version"):
        _evaluate(home, "v42")
    with pytest.raises(EvaluationRefused, match="no labelled flights"):
        _evaluate(home, v1, window_from="2015-01-01")
    _evaluate(home, v1)
    with pytest.raises(EvaluationRefused, match="is the champion"):
        _evaluate(home, v1)
    assert _n_evaluations(sessions) == 1
    assert not list(settings.reports_dir.glob(".pending-*"))


def test_faults_in_training_evaluation_and_bento_build_leave_the_champion(home, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    settings, sessions, provider = home
    v1 = _train(home, "2013-01-01", "2013-03-01")
    _evaluate(home, v1)
    history_before = registry.history(sessions, settings.model_name)

    # training blows up mid-fit
    import lightgbm

    real_train = lightgbm.train
    monkeypatch.setattr(lightgbm, "train", lambda *a, **k: (_ for _ in ()).throw(MemoryError("oom")))
    with pytest.raises(MemoryError):
        _train(home, "2013-03-01", "2013-05-01")
    monkeypatch.setattr(lightgbm, "train", real_train)
    v2 = _train(home, "2013-03-01", "2013-05-01")

    # evaluation blows up: in the feature fetch, and while writing the report inside the transaction
    provider.fail = ConnectionError("feature store unreachable")
    with pytest.raises(ConnectionError):
        _evaluate(home, v2)
    provider.fail = None
    monkeypatch.setattr(reports, "render_html", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        _evaluate(home, v2)
    monkeypatch.undo()
    assert _n_evaluations(sessions) == 1
    assert sorted(p.name for p in settings.reports_dir.iterdir()) == ["evaluation-1"]

    # bento build fails after a promote decision
    def broken_build(_settings: Settings, tag: str) -> str:
        raise promotion.BentoBuildError(f"bentoml build for {tag} failed (exit 1)")

    with pytest.raises(PromotionFailed) as caught:
        _evaluate(home, v2, build_bento=True, bento_builder=broken_build)
    assert caught.value.outcome.decision.decision == "promote"
    assert _champion(home) == v1
    assert registry.get_version(sessions, v1).status == "champion"
    assert registry.get_version(sessions, v2).status == "challenger"
    moves = registry.history(sessions, settings.model_name)
    assert [h for h in moves if h.alias == "champion"] == [h for h in history_before if h.alias == "champion"]

    # and once the build works, the same version goes through with the bento tag recorded
    res = promotion.promote_version(settings, sessions, v2, "retry after build fix", "t",
                                    caught.value.outcome.evaluation_id, builder=lambda s, tag: "flight_delay:b1")
    assert res.bento_tag == "flight_delay:b1" and _champion(home) == v2
    assert registry.get_version(sessions, v2).bento_tag == "flight_delay:b1"


def test_no_promote_leaves_a_passing_version_as_challenger(home) -> None:  # type: ignore[no-untyped-def]
    settings, sessions, _ = home
    v1 = _train(home, "2013-01-01", "2013-03-01")
    out = _evaluate(home, v1, act=False)
    assert out.decision.decision == "promote" and out.promotion is None
    assert _champion(home) is None
    assert registry.get_alias(sessions, registry.CHALLENGER, settings.model_name).version == v1  # type: ignore[union-attr]


@pytest.mark.slow
def test_promotion_builds_a_bento_pinned_to_the_model(home) -> None:  # type: ignore[no-untyped-def]
    settings, sessions, _ = home
    v1 = _train(home, "2013-01-01", "2013-03-01")
    mv = registry.get_version(sessions, v1)
    res = promotion.promote_version(settings, sessions, v1, "first champion", "test", build=True)
    assert res.bento_tag and res.bento_tag.startswith("flight_delay:")
    assert registry.get_version(sessions, v1).bento_tag == res.bento_tag
    import bentoml

    bento = bentoml.bentos.get(res.bento_tag)
    assert Path(bento.path).is_relative_to(settings.bentoml_home)
    pinned = [str(m.tag) for svc in bento.info.services for m in svc.models]
    assert pinned == [mv.bento_model_tag]


@pytest.mark.slow
def test_background_build_ships_a_promotion_and_leaves_nothing_after_a_rejection(home) -> None:  # type: ignore[no-untyped-def]
    """The bento is built while the evaluation scores: kept (and pinned) on promote, deleted on reject."""
    import bentoml

    settings, sessions, _ = home
    v1 = _train(home, "2013-01-01", "2013-03-01")
    first = _evaluate(home, v1, build_bento=True)
    assert first.promotion is not None and first.promotion.bento_tag
    assert registry.get_version(sessions, v1).bento_tag == first.promotion.bento_tag
    modelstore.use_store(settings)
    bento = bentoml.bentos.get(first.promotion.bento_tag)
    assert [str(m.tag) for svc in bento.info.services for m in svc.models] == [
        registry.get_version(sessions, v1).bento_model_tag]
    twin = _train(home, "2013-01-01", "2013-03-01")
    out = _evaluate(home, twin, build_bento=True)
    assert out.decision.decision == "reject" and _champion(home) == v1
    modelstore.use_store(settings)
    assert [str(b.tag) for b in bentoml.bentos.list()] == [first.promotion.bento_tag]
