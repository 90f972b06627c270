"""`retrain init` gives a use case its own Feast repository: the generic steps (write_tables, apply,
training_frame) work for it, the label-stats features recomputed by hand from the CSV match the
training frame (a label not yet known at prediction time never counts), and online lookups
materialized only up to each prediction time answer what the training frame holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrain.core.config import base_settings, get_settings
from retrain.usecase import featurestore as FS
from retrain.usecase import generic
from retrain.usecase.catalog import load_callable, settings_for
from retrain.usecase.history import load_history
from retrain.usecase.scaffold import init_usecase

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DELAY_HOURS = 6
DAYS = 60


def hourly_file(path: Path, *, entities: bool, seed: int = 0) -> Path:
    """~60 days, one row per hour (per shop when `entities`), a binary label driven by x, the shop and
    the hour of day, 5% of labels missing, a category with blanks."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2024-01-01", periods=DAYS * 24, freq="h", tz="UTC")
    frames = []
    for shop in (["a", "b"] if entities else [None]):
        n = len(ts)
        x = rng.normal(size=n)
        base = {"a": 0.8, "b": -0.8}.get(shop or "", 0.0)
        p = 1 / (1 + np.exp(-(1.2 * x + base + np.where((ts.hour >= 16) & (ts.hour < 20), 1.5, 0.0))))
        y = np.where(rng.random(n) < p, "1", "0").astype(object)
        y[rng.random(n) < 0.05] = ""
        frame = pd.DataFrame({"ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "x": x,
                              "color": rng.choice(["red", "green", "blue", ""], size=n), "y": y})
        if shop is not None:
            frame.insert(1, "shop", shop)
        frames.append(frame)
    pd.concat(frames).sort_values("ts", kind="mergesort").to_csv(path, index=False)
    return path


@pytest.fixture(scope="module", params=[True, False], ids=["two-shops", "global-key"])
def usecase(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    entities = bool(request.param)
    root = tmp_path_factory.mktemp("initfs")
    mp = pytest.MonkeyPatch()
    mp.setenv("RETRAIN_HOME", str(root / "home"))
    mp.setenv("RETRAIN_USECASES_DIR", str(root / "usecases"))
    mp.delenv("RETRAIN_USECASE", raising=False)
    get_settings.cache_clear()
    data = hourly_file(root / "hourly.csv", entities=entities)
    result = init_usecase("shops", data, settings=base_settings(), time_col="ts", label_col="y",
                          entity_col="shop" if entities else None, label_delay_hours=DELAY_HOURS)
    spec = result.spec
    settings = settings_for(spec, base_settings())
    settings.ensure_dirs()
    raw = FS.raw_rows(spec)
    rows = FS.write_tables(spec, settings, raw)
    FS.apply(spec, settings)
    store = FS.open_store(settings)
    frame = FS.training_frame(spec, store, raw)
    yield spec, settings, raw, rows, store, frame, data
    mp.undo()
    get_settings.cache_clear()


def test_init_writes_the_feast_repository(usecase: tuple) -> None:
    spec, settings, *_ = usecase
    folder = spec.folder
    for name in ("usecase.yaml", "contract.yaml", "README.md", "feature_store.yaml",
                 "feature_store.production.yaml", "features.py"):
        assert (folder / name).is_file(), name
    assert "project: shops" in (folder / "feature_store.yaml").read_text()
    assert "project: shops" in (folder / "feature_store.production.yaml").read_text()
    assert spec.feast is not None and spec.feast.tables == "retrain.usecase.generic:tables"
    assert settings.feature_repo == folder
    stats = ["label_count_1d", "label_mean_1d", "label_count_7d", "label_mean_7d"]  # hourly data
    assert set(stats) <= set(spec.features.names)
    assert (FS.tables_dir(settings, spec) / "label_stats.parquet").is_file()


def test_training_frame_has_the_spec_features_in_raw_order(usecase: tuple) -> None:
    spec, _settings, raw, rows, _store, frame, data = usecase
    entities = spec.data.entity_col is not None
    assert len(frame) == len(raw) == len(pd.read_csv(data))
    assert list(frame.columns) == ["row_id", "ts", *spec.features.names, "y"]
    assert frame["row_id"].tolist() == [str(i) for i in raw.index]  # file positions, time order
    assert (pd.to_datetime(frame["ts"], utc=True).diff().dropna() >= pd.Timedelta(0)).all()
    # one snapshot an hour per key from the first prediction to one hour past the last label known
    hours = DAYS * 24 + DELAY_HOURS + 1
    assert rows == {"label_stats": hours * (2 if entities else 1)}
    ts = pd.to_datetime(frame["ts"], utc=True)
    if "ts_hour" in spec.features.names:
        assert (frame["ts_hour"].astype(int) == ts.dt.hour).all()
    assert np.allclose(frame["x"].astype(float), pd.to_numeric(raw["x"]).to_numpy())
    color = raw["color"].where(raw["color"].notna(), None)
    assert [None if pd.isna(v) else v for v in frame["color"]] == color.tolist()
    if entities:
        assert frame["shop"].tolist() == raw["shop"].tolist()


def _by_hand(csv: pd.DataFrame, key: str | None, at: pd.Timestamp, window: pd.Timedelta) -> tuple[float, float]:
    """Count and mean of the labels of `key` known in [at - window, at), straight from the CSV."""
    times = pd.to_datetime(csv["ts"], utc=True)
    known = times + pd.Timedelta(hours=DELAY_HOURS)
    pick = (known >= at - window) & (known < at) & csv["y"].notna()
    if key is not None:
        pick &= csv["shop"] == key
    labels = csv.loc[pick, "y"].astype(float)
    return float(len(labels)), float(labels.mean()) if len(labels) else float("nan")


def test_label_stats_equal_a_recount_from_the_csv_without_leakage(usecase: tuple) -> None:
    spec, _settings, _raw, _rows, _store, frame, data = usecase
    csv = pd.read_csv(data)
    entities = spec.data.entity_col is not None
    rng = np.random.default_rng(7)
    picks = sorted({0, 1, 5, 6, 7, 30, len(frame) - 1, *rng.integers(0, len(frame), 40).tolist()})
    leaky_differs = 0
    for i in picks:
        row = frame.iloc[i]
        pos = int(row["row_id"])
        at = pd.Timestamp(row["ts"]).floor("h")  # prediction time = ts (no offset), snapshot = its hour
        key = str(csv.loc[pos, "shop"]) if entities else None
        for suffix, window in (("1d", pd.Timedelta(days=1)), ("7d", pd.Timedelta(days=7))):
            count, mean = _by_hand(csv, key, at, window)
            assert row[f"label_count_{suffix}"] == count, (i, suffix)
            assert np.isclose(row[f"label_mean_{suffix}"], mean, equal_nan=True), (i, suffix)
        # what a leaky feature (labels of events before the prediction, known or not) would have said
        times = pd.to_datetime(csv["ts"], utc=True)
        leaky = (times < at) & (times >= at - pd.Timedelta(days=1)) & csv["y"].notna()
        if entities:
            leaky &= csv["shop"] == key
        leaky_differs += int(float(leaky.sum()) != row["label_count_1d"])
    assert leaky_differs > 0  # the recount above does tell known labels from merely past ones
    first = frame.iloc[0]  # nothing is known before the first label matures
    assert first["label_count_1d"] == 0 and np.isnan(first["label_mean_1d"])


def test_online_lookup_at_prediction_time_equals_the_training_row(usecase: tuple) -> None:
    spec, _settings, raw, _rows, store, frame, _data = usecase
    lay = generic.spec_layout(spec)
    offline = frame.set_index("row_id")
    picks = raw.iloc[[100, len(raw) // 3, len(raw) // 2 + 7, len(raw) - 5]]
    entities = load_callable(spec, spec.feast.entity_rows)(picks)
    service = store.get_feature_service(spec.features.service)
    start = raw["ts"].min() - pd.Timedelta(days=1)
    keys = [lay.join_key, *lay.request_fields]
    for i in range(len(entities)):
        row = entities.iloc[i]
        now = pd.Timestamp(row["event_timestamp"]).to_pydatetime()
        store.materialize(start_date=start.to_pydatetime(), end_date=now)
        start = pd.Timestamp(now)
        request = {k: (row[k].item() if hasattr(row[k], "item") else row[k]) for k in keys}
        got = store.get_online_features(features=service, entity_rows=[request]).to_dict()
        for name in spec.features.names:
            want, value = offline.loc[row["row_id"], name], got[name][0]
            if name in spec.features.categorical:
                assert (None if pd.isna(want) else str(want)) == value, (row["row_id"], name, value, want)
            else:
                value = np.nan if value is None else float(value)
                assert np.isclose(value, float(want), equal_nan=True), (row["row_id"], name, value, want)


def test_backtest_history_replays_through_the_feature_store(usecase: tuple) -> None:
    spec, settings, _raw, _rows, _store, frame, _data = usecase
    history = load_history(spec, settings)
    labelled = frame[frame["y"].notna()].reset_index(drop=True)
    assert len(history.frame) == len(labelled)
    for name in ("label_count_7d", "label_mean_7d", "x"):
        assert np.allclose(history.frame[name].to_numpy(dtype=float), labelled[name].to_numpy(dtype=float),
                           equal_nan=True), name


def test_bike_sharing_backtest_history_is_unchanged_through_its_feature_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bike_sharing has a feast section, so its backtest now reads its feature service: the history is
    the one its data module gives, cell for cell and dtype for dtype."""
    from retrain.usecase.catalog import load_usecase

    monkeypatch.setenv("RETRAIN_HOME", str(tmp_path))
    get_settings.cache_clear()
    spec = load_usecase(base_settings(), "bike_sharing")
    settings = settings_for(spec, base_settings())
    old = load_history(spec.model_copy(update={"feast": None}), settings)  # the data module's frame
    new = load_history(spec, settings, feature_home=tmp_path / "features")
    pd.testing.assert_frame_equal(old.frame, new.frame, check_exact=True)
    assert (old.feature_names, old.categorical, old.slice_columns, old.notes) == \
        (new.feature_names, new.categorical, new.slice_columns, new.notes)
    assert (tmp_path / "features" / "offline" / "usecases" / "bike_sharing" / "demand.parquet").is_file()
    get_settings.cache_clear()
