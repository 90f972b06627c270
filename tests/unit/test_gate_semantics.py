"""What the promotion gates' numbers mean: block bootstrap, the lower-bound convention, false promotions,
and Holm-corrected slice tests, checked on synthetic data where the truth is known."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from retrain.core import metrics
from retrain.evaluation import gates
from retrain.evaluation.gates import GateConfig, SliceResult, day_blocks, decide, holm
from retrain.evaluation.gates_regression import decide_regression, row_loss
from retrain.evaluation.gates_regression import improvement_gate as regression_improvement_gate

CONFIG = GateConfig()


def clustered_gain(seed: int, mu: float = 0.0, days: int = 30, per_day: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Per-row loss gains whose noise is mostly shared within a day (sd 1 per day, 1.5 per row)."""
    rng = np.random.default_rng(seed)
    day = np.repeat(np.arange(days), per_day)
    return mu + rng.normal(0, 1, days)[day] + rng.normal(0, 1.5, day.size), day


def equal_regressors(seed: int, days: int = 30, per_day: int = 20) -> tuple[np.ndarray, ...]:
    """Label and two equally good, independent predictions; each model has its own error per day."""
    rng = np.random.default_rng(seed)
    day = np.repeat(np.arange(days), per_day)
    y = 100 + rng.normal(0, 10, days)[day] + rng.normal(0, 5, day.size)
    champion = y + rng.normal(0, 3, days)[day] + rng.normal(0, 3, day.size)
    challenger = y + rng.normal(0, 3, days)[day] + rng.normal(0, 3, day.size)
    return y, challenger, champion, day


def weather_days(seed: int, days: int = 30, per_day: int = 200) -> tuple[np.ndarray, ...]:
    """Binary rows clustered by day: which model ranks better depends on the day's weather."""
    rng = np.random.default_rng(seed)
    day = np.repeat(np.arange(days), per_day)
    weather = rng.normal(size=days)[day]
    z = rng.normal(size=day.size)
    y = rng.random(day.size) < 1 / (1 + np.exp(-(2.0 * z - 0.5 + 0.5 * weather)))
    champion = z + rng.normal(size=z.size) * np.exp(-0.6 * weather)
    challenger = z + rng.normal(size=z.size) * np.exp(0.6 * weather)
    return y, challenger, champion, day


def latent(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    return z, rng.random(n) < 1 / (1 + np.exp(-(2.0 * z - 1.0))), rng


# ---------------------------------------------------------------------------------- blocks


def test_day_blocks_number_utc_periods() -> None:
    times = pd.Series(pd.to_datetime(["2024-03-01 00:00", "2024-03-01 23:59", "2024-03-02 00:00"], utc=True))
    days = day_blocks(times)
    assert days[0] == days[1] != days[2] and days.dtype == np.int64
    assert day_blocks(times, unit_hours=12).tolist() == [days[0] * 2, days[0] * 2 + 1, days[2] * 2]
    assert day_blocks(times.dt.tz_localize(None).to_numpy()).tolist() == days.tolist()  # naive = UTC
    assert day_blocks(["2024-03-01T20:00-05:00"]).tolist() == [days[2]]  # offsets are converted to UTC
    with pytest.raises(ValueError, match="event time"):
        day_blocks(pd.Series([pd.Timestamp("2024-03-01", tz="UTC"), pd.NaT]))
    with pytest.raises(ValueError, match="unit_hours"):
        day_blocks(times, unit_hours=0)


def test_one_block_per_row_is_the_row_bootstrap_and_the_row_bootstrap_is_unchanged() -> None:
    z, y, rng = latent(1, 1500)
    a, b = z + rng.normal(size=z.size), z + rng.normal(scale=1.3, size=z.size)
    rows = gates.paired_bootstrap(gates.metric_gain("auc", y, a, b), y.size, resamples=1000, seed=5)
    singletons = gates.paired_bootstrap(gates.metric_gain("auc", y, a, b), y.size, np.arange(y.size),
                                        resamples=1000, seed=5)
    assert np.array_equal(rows, singletons)
    before = metrics.paired_bootstrap(y, a, b, resamples=1000, seed=5)  # the gates' earlier row bootstrap
    assert np.allclose(rows, before, rtol=0, atol=1e-12)


def test_block_bootstrap_covers_the_true_difference_on_day_clustered_data() -> None:
    mu, seeds = 0.3, 100
    covered = {"rows": 0, "days": 0}
    sd: dict[str, list[float]] = {"rows": [], "days": []}
    for seed in range(seeds):
        gain, day = clustered_gain(seed, mu)
        for unit, blocks in (("rows", None), ("days", day)):
            _, st = regression_improvement_gate(gain, "rmse", CONFIG, blocks)
            covered[unit] += st["lower"] <= mu
            sd[unit].append(st["sd"])
    coverage = {k: v / seeds for k, v in covered.items()}
    ratio = float(np.mean(sd["days"]) / np.mean(sd["rows"]))
    assert coverage["days"] >= 0.85, coverage
    assert coverage["rows"] <= 0.80, coverage  # rows of one day are not independent: too narrow
    assert ratio > 2.2, ratio  # sqrt((1/30 + 2.25/600) / (3.25/600)) = 2.6 in theory
    assert 0.8 < np.mean(sd["days"]) / math.sqrt(1 / 30 + 2.25 / 600) < 1.1  # the true sd of the mean gain


def test_block_bootstrap_widens_the_auc_interval_on_day_clustered_scores() -> None:
    y, a, b, day = weather_days(3)
    config = GateConfig(seed=7)
    row_gate, rows = gates.improvement_gate(y, a, b, config)
    day_gate, days = gates.improvement_gate(y, a, b, config, day)
    assert rows["observed"] == days["observed"] and rows["blocks"] == 0 and days["blocks"] == 30
    assert days["sd"] / rows["sd"] > 3.0, (rows["sd"], days["sd"])
    assert "of rows" in row_gate.detail and "of 30 blocks" in day_gate.detail
    assert days["lower"] < rows["lower"]


def test_row_bootstrap_agrees_with_scipy_on_unclustered_data() -> None:
    rng = np.random.default_rng(11)
    y = rng.normal(0, 5, 600)
    champion, challenger = y + rng.normal(0, 3, y.size), y + rng.normal(0, 2.7, y.size)
    loss_a, loss_b = row_loss("rmse", y, challenger), row_loss("rmse", y, champion)
    config = GateConfig(bootstrap_resamples=4000, seed=1)
    _, ours = regression_improvement_gate(loss_b - loss_a, "rmse", config)
    ref = stats.bootstrap((loss_a, loss_b), lambda a, b, axis: np.mean(b - a, axis=axis), paired=True,
                          vectorized=True, method="percentile", confidence_level=2 * config.confidence - 1,
                          n_resamples=4000, random_state=2)
    assert abs(ours["lower"] - ref.confidence_interval.low) < 0.2 * ref.standard_error
    assert abs(ours["upper"] - ref.confidence_interval.high) < 0.2 * ref.standard_error
    assert ours["sd"] == pytest.approx(ref.standard_error, rel=0.08)

    z, yb, rng = latent(12, 500)
    a, b = z + rng.normal(size=z.size), z + rng.normal(scale=1.2, size=z.size)
    _, auc = gates.improvement_gate(yb, a, b, GateConfig(bootstrap_resamples=1500, seed=3))
    ref = stats.bootstrap((yb, a, b), lambda t, u, v: metrics.roc_auc(t, u) - metrics.roc_auc(t, v), paired=True,
                          vectorized=False, method="percentile", confidence_level=0.9, n_resamples=1500,
                          random_state=4)
    assert abs(auc["lower"] - ref.confidence_interval.low) < 0.3 * ref.standard_error  # ~3 Monte Carlo sds
    assert auc["sd"] == pytest.approx(ref.standard_error, rel=0.1)


# --------------------------------------------------------------------- the lower bound


def test_the_lower_bound_is_the_one_minus_confidence_quantile() -> None:
    gain, day = clustered_gain(4, mu=0.5)
    config = GateConfig(confidence=0.9, seed=8)
    gate, st = regression_improvement_gate(gain, "rmse", config, day)
    diffs = gates.paired_bootstrap(gates.mean_gain(gain), gain.size, day, resamples=1000, seed=8)
    assert st["lower"] == np.quantile(diffs, 1 - config.confidence) == gate.value
    assert st["upper"] == np.quantile(diffs, config.confidence)
    assert st["observed"] == pytest.approx(gain.mean()) and gate.passed == (st["lower"] > 0)

    z, y, rng = latent(5, 2000)
    a, b = z + rng.normal(scale=0.8, size=z.size), z + rng.normal(size=z.size)
    gate, st = gates.improvement_gate(y, a, b, config)
    diffs = gates.paired_bootstrap(gates.metric_gain("auc", y, a, b), y.size, resamples=1000, seed=8)
    assert st["lower"] == np.quantile(diffs, 1 - config.confidence) == gate.value


def test_a_positive_margin_raises_the_bar() -> None:
    gain, day = clustered_gain(6, mu=1.0)
    _, st = regression_improvement_gate(gain, "rmse", CONFIG, day)
    assert st["lower"] > 0
    below = GateConfig(improvement_margin=st["lower"] - 1e-9)
    above = GateConfig(improvement_margin=st["lower"] + 1e-9)
    assert regression_improvement_gate(gain, "rmse", below, day)[0].passed
    failed, _ = regression_improvement_gate(gain, "rmse", above, day)
    assert not failed.passed and failed.threshold == above.improvement_margin and "<= margin" in failed.detail


@pytest.mark.parametrize("metric", ["log_loss", "brier"])
def test_loss_gains_are_champion_minus_challenger(metric: str) -> None:
    z, y, rng = latent(7, 3000)
    sharp = 1 / (1 + np.exp(-(2.0 * z - 1.0 + rng.normal(scale=0.3, size=z.size))))
    blurred = 1 / (1 + np.exp(-(2.0 * z - 1.0 + rng.normal(scale=2.0, size=z.size))))
    config = GateConfig(metric=metric)
    better, st = gates.improvement_gate(y, sharp, blurred, config)
    assert better.passed and st["observed"] > 0 and st["lower"] > 0
    assert st["observed"] == pytest.approx(metrics.metric(metric, y, blurred) - metrics.metric(metric, y, sharp))
    worse, st = gates.improvement_gate(y, blurred, sharp, config)
    assert not worse.passed and st["observed"] < 0 and st["upper"] < 0


def test_regression_gain_sign() -> None:
    rng = np.random.default_rng(8)
    y = rng.normal(0, 5, 1000)
    good, bad = y + rng.normal(0, 1, y.size), y + rng.normal(0, 3, y.size)
    d = decide_regression(y, good, bad, config=CONFIG, metric="mae")
    assert d.promote and d.metrics["bootstrap"]["lower"] > 0
    assert d.metrics["bootstrap"]["observed"] == pytest.approx(np.mean(np.abs(bad - y) - np.abs(good - y)))
    assert decide_regression(y, bad, good, config=CONFIG, metric="mae").metrics["bootstrap"]["upper"] < 0


def test_resamples_with_one_class_are_dropped_not_fatal() -> None:
    rng = np.random.default_rng(9)
    day = np.repeat(np.arange(10), 40)
    y = np.zeros(day.size, dtype=bool)
    y[[3, 5, 7]] = True  # every positive on day 0: a resample without day 0 has no AUC
    a, b = rng.random(y.size) + y, rng.random(y.size) + 0.5 * y
    for blocks in (None, day):
        gate, st = gates.improvement_gate(y, a, b, CONFIG, blocks)
        assert 0 < st["resamples"] < CONFIG.bootstrap_resamples and math.isfinite(st["lower"])
        assert f"{int(st['resamples'])} paired resamples" in gate.detail
    none, st = gates.improvement_gate(np.zeros(50, dtype=bool), rng.random(50), rng.random(50), CONFIG)
    assert not none.passed and none.value is None and st == {} and "one class" in none.detail


def test_too_few_blocks_give_no_interval_and_no_promotion() -> None:
    gain, _ = clustered_gain(10, mu=5.0)
    three = np.arange(gain.size) % 3
    gate, st = regression_improvement_gate(gain, "rmse", CONFIG, three)
    assert not gate.passed and st == {} and "only 3 distinct blocks" in gate.detail
    assert regression_improvement_gate(gain, "rmse", GateConfig(min_blocks=3), three)[0].passed
    with pytest.raises(ValueError, match="one block label per row"):
        regression_improvement_gate(gain, "rmse", CONFIG, three[:-1])


# -------------------------------------------------------------------- false promotions


def test_false_promotion_rate_of_equally_good_models_is_about_alpha() -> None:
    """Equal quality is the boundary of the one-sided test, so the expected rate is alpha itself; with 30 days
    the percentile block bootstrap runs a little over it (6.0-6.5% measured over 1,000-3,000 seeds: few
    blocks, heavy-tailed gains), hence the room of three binomial standard errors. The row bootstrap
    promotes several times as many of these pairs."""
    seeds, alpha = 400, 1 - CONFIG.confidence
    promoted = {"rows": 0, "days": 0}
    for seed in range(seeds):
        y, challenger, champion, day = equal_regressors(seed, per_day=10)
        gain = row_loss("rmse", y, champion) - row_loss("rmse", y, challenger)
        config = GateConfig(seed=10_000 + seed)
        promoted["days"] += regression_improvement_gate(gain, "rmse", config, day)[0].passed
        if seed < 200:
            promoted["rows"] += regression_improvement_gate(gain, "rmse", config)[0].passed
    rate = {"days": promoted["days"] / seeds, "rows": promoted["rows"] / 200}
    assert rate["days"] <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / seeds), rate
    assert rate["rows"] >= max(0.1, 2 * rate["days"]), rate

    y, challenger, champion, day = equal_regressors(0)
    assert not decide_regression(y, challenger, challenger.copy(), config=CONFIG, blocks=day).promote
    z, yb, rng = latent(13, 2000)
    scores = z + rng.normal(size=z.size)
    assert not decide(yb, scores, scores.copy(), config=CONFIG, blocks=np.repeat(np.arange(20), 100)).promote


# --------------------------------------------------------------------------- Holm, slices


def test_holm_gives_the_textbook_rejections() -> None:
    rejected, adjusted = holm([0.01, 0.04, 0.03, 0.005], 0.05)
    assert rejected.tolist() == [True, False, False, True]
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    rejected, adjusted = holm([0.01, 0.02, 0.025], 0.05)  # Bonferroni would keep the last two
    assert rejected.all() and adjusted == pytest.approx([0.03, 0.04, 0.04])
    rejected, adjusted = holm([0.2, 0.0, 0.9], 0.05)
    assert rejected.tolist() == [False, True, False] and adjusted == pytest.approx([0.4, 0.0, 0.9])
    assert holm([], 0.05)[0].size == 0


def _stores(seed: int, bad: bool, stores: int = 12, per_store: int = 150) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    store = np.repeat(np.arange(stores), per_store)
    y = rng.normal(0, 10, store.size)
    champion = y + rng.normal(0, 5, y.size)
    challenger = y + rng.normal(0, 5, y.size) * np.where(bad & (store == 7), 1.6, 1.0)
    return y, challenger, champion, store


def test_one_bad_slice_among_noisy_ones_is_caught_and_noise_alone_is_not() -> None:
    config = GateConfig(slice_min_rows=100, slice_tolerance=0.02)
    y, challenger, champion, store = _stores(0, bad=True)
    d = decide_regression(y, challenger, champion, config=config, slices={"store": store})
    flagged = [s.slice for s in d.slices if s.regressed]
    assert flagged == ["store=7"], [(s.slice, s.delta, s.p_adjusted) for s in d.slices]
    gate = next(g for g in d.gates if g.name == "slices")
    assert not gate.passed and "store=7" in gate.detail and "Holm p" in gate.detail and "lower bound" in gate.detail

    false_failures, point_failures, seeds = 0, 0, 20
    for seed in range(seeds):
        y, challenger, champion, store = _stores(100 + seed, bad=False)
        d = decide_regression(y, challenger, champion, config=config, slices={"store": store})
        false_failures += any(s.regressed for s in d.slices)
        point_failures += any(s.delta < -config.slice_tolerance for s in d.slices)  # the old rule
    assert false_failures <= 1, false_failures  # Holm holds the family-wise rate at 5%
    assert point_failures == seeds  # a fixed tolerance on point differences fails every equal challenger


def test_binary_slice_gate_flags_only_the_significantly_worse_slice() -> None:
    z, y, rng = latent(14, 6000)
    carrier = np.repeat(np.array([f"c{i}" for i in range(12)]), 500)
    champion = z + rng.normal(size=z.size)
    challenger = z + rng.normal(size=z.size)
    bad = carrier == "c4"
    challenger[bad] = rng.normal(size=bad.sum())  # no signal on c4
    day = np.tile(np.arange(25), 240)
    config = GateConfig(slice_min_rows=400, slice_tolerance=0.01)
    for blocks in (None, day):
        rows = gates.slice_results(y, challenger, champion, {"carrier": carrier}, config, blocks)
        assert [r.slice for r in rows if r.regressed] == ["carrier=c4"]
        assert sum(r.delta < -config.slice_tolerance for r in rows) > 1  # the point rule would flag noise too
        worst = min(rows, key=lambda r: r.delta)
        assert worst.upper < -config.slice_tolerance and worst.p_adjusted <= config.alpha
        assert worst.blocks == (None if blocks is None else 25)
        gate = gates.slice_gate(rows, config)
        assert not gate.passed and gate.value == worst.delta and "carrier=c4" in gate.detail


def test_slice_results_stay_backward_compatible() -> None:
    old = SliceResult("region=north", 600, 0.71, 0.70, 0.01, False)
    assert math.isnan(old.p_value) and old.blocks is None
    d = old.to_dict()
    assert d["p_adjusted"] is None and d["lower"] is None and d["delta"] == 0.01
    assert gates.slice_gate([old], CONFIG).passed
    with pytest.raises(ValueError, match="gate_min_blocks"):
        GateConfig(min_blocks=1)


def test_block_settings_default_until_settings_carry_them(tmp_path: Path) -> None:
    from retrain.core.config import Settings

    config = GateConfig.from_settings(Settings(home=tmp_path))
    assert config.block_hours == 24.0 and config.min_blocks == 5 and config.alpha == pytest.approx(0.05)
