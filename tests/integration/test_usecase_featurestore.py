"""A use case's own Feast repository (bike sharing): tables, `feast apply`, point-in-time training
frames through its feature service equal to the history the backtest replays (train/serve parity of
the offline side), and the online store answering the same values after materialization."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from retrain.core.config import base_settings, get_settings
from retrain.usecase import featurestore as FS
from retrain.usecase.catalog import load_callable, load_usecase, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def bike(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    home = tmp_path_factory.mktemp("bikehome")
    mp = pytest.MonkeyPatch()
    mp.setenv("RETRAIN_HOME", str(home))
    mp.delenv("RETRAIN_USECASE", raising=False)
    get_settings.cache_clear()
    spec = load_usecase(base_settings(), "bike_sharing")
    settings = settings_for(spec, base_settings())
    settings.ensure_dirs()
    raw = FS.raw_rows(spec)
    rows = FS.write_tables(spec, settings, raw)
    FS.apply(spec, settings)
    store = FS.open_store(settings)
    yield spec, settings, raw, rows, store
    mp.undo()
    get_settings.cache_clear()


def test_settings_point_at_the_usecase_repository(bike: tuple) -> None:
    spec, settings, *_ = bike
    assert settings.feature_repo == spec.folder
    assert settings.feature_store_yaml == spec.folder / "feature_store.yaml"


def test_tables_are_written_under_the_usecase(bike: tuple) -> None:
    spec, settings, raw, rows, _ = bike
    assert rows == {"weather": len(raw), "demand": 17_544}  # one weather row per observed hour; every UTC hour
    assert (FS.tables_dir(settings, spec) / "weather.parquet").is_file()


def test_training_frame_through_feast_equals_the_backtest_history(bike: tuple) -> None:
    spec, _settings, raw, _rows, store = bike
    got = FS.training_frame(spec, store, raw)
    expected = load_callable(spec, spec.data.loader)()  # history_frame: pandas as-of joins, no Feast
    assert len(got) == len(expected) == len(raw)
    assert (pd.to_datetime(got["ts"], utc=True) == expected["ts"]).all()
    mismatches = {}
    for name in spec.features.names:
        a, b = got[name], expected[name]
        if name in spec.features.categorical:
            a = a.astype("string").fillna("<NA>")
            b = b.astype("string").fillna("<NA>")
            bad = int((a.to_numpy() != b.to_numpy()).sum())
        else:
            av, bv = a.astype("float64").to_numpy(), b.astype("float64").to_numpy()
            bad = int((~(np.isclose(av, bv, equal_nan=True))).sum())
        if bad:
            mismatches[name] = bad
    assert mismatches == {}, mismatches
    assert (got["cnt"].to_numpy() == expected["cnt"].to_numpy()).all()


def test_online_lookup_at_prediction_time_equals_the_training_row(bike: tuple) -> None:
    """Materialized only up to each prediction time (what a live deployment knows), the online store
    answers what the point-in-time join gave for that hour."""
    spec, _settings, raw, _rows, store = bike
    picks = raw[raw["ts"].isin(pd.to_datetime(["2011-06-01 15:00", "2012-03-10 08:00", "2012-10-02 18:00"],
                                               utc=True))]
    assert len(picks) == 3
    offline = FS.training_frame(spec, store, picks).set_index("row_id")
    entities = load_callable(spec, spec.feast.entity_rows)(picks)
    service = store.get_feature_service(spec.features.service)
    start = raw["ts"].min() - pd.Timedelta(days=1)
    for i in range(len(entities)):
        row = entities.iloc[i]
        now = pd.Timestamp(row["event_timestamp"]).to_pydatetime()
        store.materialize(start_date=start.to_pydatetime(), end_date=now)
        start = pd.Timestamp(now)
        request = {k: [row[k].item() if hasattr(row[k], "item") else row[k]]
                   for k in ("system", "target_epoch", "req_holiday", "req_workingday", "req_season")}
        online = store.get_online_features(features=service, entity_rows=[{k: v[0] for k, v in request.items()}])
        got = online.to_dict()
        for name in spec.features.names:
            want = offline.loc[row["row_id"], name]
            value = got[name][0]
            if name in spec.features.categorical:
                assert str(value) == str(want), (row["row_id"], name, value, want)
            else:
                assert np.isclose(float(value), float(want), equal_nan=True), (row["row_id"], name, value, want)


def test_stale_features_when_materialization_stops(bike: tuple) -> None:
    """The bike views are hourly: materialized to T, they are fresh an hour later and stale once
    materialization has not moved for more than `freshness_factor` hours; materializing again clears it.
    Runs after the online-lookup test (the module's store was materialized up to 2012-10-02 18:00)."""
    from retrain.features import freshness

    _spec, settings, _raw, _rows, store = bike
    t = pd.Timestamp("2012-10-05 00:00", tz="UTC")
    store.materialize_incremental(end_date=t.to_pydatetime())
    views = {v.view: v for v in freshness.check_freshness(store, settings, t + pd.Timedelta(hours=1))}
    assert set(views) == {"bike_weather", "bike_demand"}, views
    assert not any(v.stale for v in views.values()), views
    later = t + pd.Timedelta(hours=settings.freshness_factor + 2)
    stalled = {v.view: v for v in freshness.check_freshness(store, settings, later)}
    assert all(v.stale and v.cadence_hours == 1.0 for v in stalled.values()), stalled
    alerts = freshness.stale_alerts(list(stalled.values()), settings.model_name, later.to_pydatetime())
    assert {a["dedupe_key"] for a in alerts} == {f"bike_sharing:stale:{name}:2012-10-05" for name in stalled}
    store.materialize_incremental(end_date=later.to_pydatetime())
    assert not any(v.stale for v in freshness.check_freshness(store, settings, later + pd.Timedelta(minutes=30)))
