"""Regression gates: paired (row or day-block) bootstrap on the loss difference, Holm-tested relative slice
tolerance, serving gates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrain.evaluation.gates import GateConfig, ServingStats
from retrain.evaluation.gates_regression import decide_regression, row_loss

CONFIG = GateConfig(slice_min_rows=100, slice_tolerance=0.05)


def _data(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return 20 * x + 100, x


def test_better_challenger_is_promoted_and_numbers_reconcile() -> None:
    y, _ = _data()
    rng = np.random.default_rng(1)
    champion = y + rng.normal(0, 10, y.size)
    challenger = y + rng.normal(0, 5, y.size)
    d = decide_regression(y, challenger, champion, config=CONFIG)
    assert d.promote, d.reasons
    assert d.metrics["challenger"]["rmse"] == pytest.approx(np.sqrt(np.mean((challenger - y) ** 2)))
    gain = row_loss("rmse", y, champion) - row_loss("rmse", y, challenger)
    assert d.metrics["bootstrap"]["observed"] == pytest.approx(gain.mean())
    assert d.metrics["bootstrap"]["lower"] > 0


@pytest.mark.parametrize("metric", ["rmse", "mae"])
def test_equal_or_worse_challenger_is_rejected(metric: str) -> None:
    y, _ = _data()
    rng = np.random.default_rng(2)
    champion = y + rng.normal(0, 5, y.size)
    same_quality = y + rng.normal(0, 5, y.size)
    worse = y + rng.normal(0, 8, y.size)
    for challenger in (same_quality, worse):
        d = decide_regression(y, challenger, champion, config=CONFIG, metric=metric)
        assert not d.promote and any("improvement failed" in r for r in d.reasons)


def test_a_slice_that_gets_worse_blocks_promotion() -> None:
    y, x = _data()
    rng = np.random.default_rng(3)
    region = np.where(x > 0, "north", "south")
    champion = y + rng.normal(0, 8, y.size)
    challenger = np.where(region == "north", y + rng.normal(0, 2, y.size), y + rng.normal(0, 10, y.size))
    d = decide_regression(y, challenger, champion, config=CONFIG, slices={"region": region})
    slices = {s.slice: s for s in d.slices}
    assert slices["region=south"].regressed and not slices["region=north"].regressed
    assert not d.promote and any(r.startswith("slices failed") for r in d.reasons)
    south = slices["region=south"]
    assert south.upper < -CONFIG.slice_tolerance and south.p_adjusted <= CONFIG.alpha <= slices["region=north"].p_value
    assert "region=south" in next(g.detail for g in d.gates if g.name == "slices")


def test_day_blocks_flow_through_decide_regression() -> None:
    y, x = _data(3000)
    rng = np.random.default_rng(5)
    day = np.repeat(np.arange(30), 100)
    region = np.where(x > 0, "north", "south")
    champion = y + rng.normal(0, 6, y.size) + rng.normal(0, 4, 30)[day]  # a day-level error the rows share
    challenger = y + rng.normal(0, 6, y.size) + rng.normal(0, 4, 30)[day]
    rows = decide_regression(y, challenger, champion, config=CONFIG, slices={"region": region})
    days = decide_regression(y, challenger, champion, config=CONFIG, slices={"region": region}, blocks=day)
    assert days.metrics["bootstrap"]["blocks"] == 30 and rows.metrics["bootstrap"]["blocks"] == 0
    assert days.metrics["bootstrap"]["sd"] > 2 * rows.metrics["bootstrap"]["sd"]
    assert "of 30 blocks" in next(g.detail for g in days.gates if g.name == "improvement")
    assert all(s.blocks == 30 for s in days.slices) and all(s.blocks is None for s in rows.slices)
    with pytest.raises(ValueError, match="one block label per row"):
        decide_regression(y, challenger, champion, config=CONFIG, blocks=day[:10])


def test_first_model_and_serving_gates() -> None:
    y, _ = _data()
    first = decide_regression(y, y + 1.0, None, config=CONFIG)
    assert first.promote and {g.name for g in first.gates if g.skipped} >= {"improvement", "latency"}
    slow = ServingStats(challenger_latency_ms=10.0, challenger_size_bytes=1, champion_latency_ms=1.0,
                        champion_size_bytes=1)
    d = decide_regression(y, y + 0.1, y + 5.0, config=CONFIG, serving=slow)
    assert not d.promote and any(r.startswith("latency failed") for r in d.reasons)
    with pytest.raises(ValueError, match="gate_regression_metric"):
        decide_regression(y, y, y, config=CONFIG, metric="r2")


def test_regression_report_shows_rmse_and_a_predicted_vs_observed_plot(tmp_path: Path) -> None:
    from retrain.evaluation import reports

    y, x = _data()
    rng = np.random.default_rng(4)
    region = np.where(x > 0, "north", "south")
    champion, challenger = y + rng.normal(0, 8, y.size), y + rng.normal(0, 4, y.size)
    d = decide_regression(y, challenger, champion, config=CONFIG, slices={"region": region})
    data = reports.ReportData("bike", "v2", "v1", "2024-01-01", "2024-02-01", y, challenger, champion, d)
    png = reports.render_png(data, tmp_path / reports.PNG_NAME)
    page = reports.render_html(data, tmp_path / reports.HTML_NAME, 7).read_text()
    assert png.stat().st_size > 10_000
    rows = {r["metric"]: r for r in reports.metrics_table(d)}
    assert set(rows) == set(reports.REGRESSION_ROWS) and "auc" not in rows
    assert rows["rmse"]["challenger"] == f"{d.metrics['challenger']['rmse']:.4f}"
    assert "rmse" in page and "region=north" in page and "PROMOTE" in page
