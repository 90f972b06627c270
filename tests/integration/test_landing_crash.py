"""A landing killed at any step (SIGKILL: nothing cleans up) leaves no row landed twice and no stray file.

Each test runs a landing in a child process that kills itself at one step (RETRAIN_CRASH_AT, see
`offline.crashpoint`): with its files staged and the transaction open (`staged`), after the commit
(`committed`), between publishing two parts (`publishing`), or once published (`published`; `:2` is the
second batch of the same call). Then, here, the start-up sweep repairs what the crash left and the same
landing runs again; the home must equal one where nothing crashed: every row landed once (ids unique in
the parts and in the outcomes table), parts on disk exactly the database's landed batches, counts that
reconcile, and feature tables / training rows without duplicates.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, select
from tests.support.ingest_home import Home, make_home, real_flights

from flight_delay import data, pipeline
from flight_delay import features as F
from flight_delay.data import FLIGHTS_TABLE
from flight_delay.ingest import ingest_file, ingest_frame, replay_until
from flight_delay.landed import landed_parts, sweep_now
from retrain.core import db
from retrain.core.config import REPO_ROOT, Settings, base_settings, get_settings
from retrain.features import offline
from retrain.models.registry import open_registry
from retrain.usecase import featurestore as FS
from retrain.usecase import landing
from retrain.usecase.catalog import load_callable, load_usecase, settings_for
from retrain.usecase.spec import UseCaseSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T1, T2 = "2013-01-01T14:00:00Z", "2013-01-02T03:00:00Z"  # replay steps: T2 lands a flights and an outcomes batch
BIKE_T1, BIKE_T2 = "2011-01-08", "2011-01-15"


def crash(point: str, *args: str | Path, env: dict[str, str] | None = None) -> None:
    """Run `tests.support.crash_landing ARGS` and require that it killed itself at `point`."""
    child_env = {**os.environ, **(env or {}), offline.CRASH_AT: point}
    proc = subprocess.run([sys.executable, "-m", "tests.support.crash_landing", *map(str, args)], cwd=REPO_ROOT,
                          env=child_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"the landing did not stop at {point}: {proc.stderr[-2000:]}"


def stray_files(*folders: Path) -> list[str]:
    """Staged, temp or set-aside files: what a crash may leave and the sweep must clear."""
    found = []
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and (path.name.startswith(".staged-") or path.name.endswith(".tmp")
                                   or offline.ORPHANED in path.parts):
                found.append(str(path))
    return found


# --------------------------------------------------------------------------- flights


def planted(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows with two planted errors (each quarantined once)."""
    out = rows.copy().astype(object).reset_index(drop=True)
    out.loc[3, "distance"] = -5
    out.loc[10, "carrier"] = "ZZ"
    return out


@dataclass(frozen=True)
class FlightState:
    """What a flights home holds, compared between a crashed-and-repaired home and a clean one."""

    flight_ids: frozenset[str]
    outcome_ids: frozenset[str]
    quarantined: int
    table_rows: dict[str, int]
    training_rows: int


def flight_state(home: Home) -> FlightState:
    """Check the home's invariants and return its state."""
    s = home.settings
    assert stray_files(s.offline_dir, s.quarantine_dir) == []
    for table in (FLIGHTS_TABLE, offline.OUTCOMES):  # the parts on disk are exactly the landed batches'
        assert offline.all_parts(s, table) == landed_parts(s, table, home.sessions)
    flights = offline.read_table(s, FLIGHTS_TABLE)
    outcomes = offline.read_table(s, offline.OUTCOMES)
    assert flights is not None and outcomes is not None
    assert flights["flight_id"].is_unique and outcomes["flight_id"].is_unique
    with home.sessions() as session:
        keys = list(session.scalars(select(db.Outcome.entity_key)))
        batches = list(session.scalars(select(db.IngestionBatch).where(db.IngestionBatch.status == "landed")))
        quarantined = session.scalar(select(func.count()).select_from(db.QuarantinedRow))
    assert len(keys) == len(set(keys)) and set(keys) == set(outcomes["flight_id"])
    for b in batches:  # every landed batch reconciles, and its counts are what its files hold
        assert b.received == b.accepted + b.quarantined, b.id
    assert sum(b.accepted for b in batches if b.kind == "flights") == len(flights)
    assert sum(b.outcomes for b in batches) == len(outcomes)
    assert sum(b.quarantined for b in batches) == quarantined
    tables = F.refresh_feature_tables(s)
    for name, key in (("carrier_stats", "carrier_day"), ("route_stats", "route_day")):
        assert pd.read_parquet(F.features_dir(s) / f"{name}.parquet")[key].is_unique, name
    rows, _ = F.labelled_flights(s, "2013-01-01", "2013-01-03")
    assert rows["flight_id"].is_unique and len(rows)
    return FlightState(frozenset(flights["flight_id"]), frozenset(outcomes["flight_id"]), int(quarantined or 0),
                       tables, len(rows))


@pytest.fixture(scope="module")
def flight_inputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(a batch CSV with planted errors, a small replay clock as parquet)."""
    root = tmp_path_factory.mktemp("inputs")
    csv = root / "batch.csv"
    planted(real_flights().iloc[100:400]).to_csv(csv, index=False)
    clock = root / "clock.parquet"
    data.enrich_flights(real_flights().iloc[:2000].copy()).to_parquet(clock, index=False)
    yield csv, clock


def first_batch(home: Home) -> None:
    """100 flights landed and the feature tables built from them."""
    ingest_frame(real_flights().iloc[:100], settings=home.settings, sessions=home.sessions, source="first")
    F.refresh_feature_tables(home.settings)


def ingest_command(home: Home, csv: Path) -> dict[str, object]:
    """`retrain ingest CSV` for the flights: land, then rebuild the feature tables when needed."""
    return pipeline.ingest(home.settings, home.sessions, path=csv, until=None, refresh=True, progress=lambda _m: None)


@pytest.fixture(scope="module")
def clean_file_state(flight_inputs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> FlightState:
    home = make_home(tmp_path_factory.mktemp("clean-file") / "home")
    first_batch(home)
    assert ingest_command(home, flight_inputs[0])["status"] == "landed"
    return flight_state(home)


# what the sweep does after each crash: the batch's three files (flights part, outcomes part, quarantine)
FILE_SWEEPS = {"staged": {"discarded": 3}, "committed": {"published": 3}, "publishing": {"published": 2},
               "published": {}}


@pytest.mark.parametrize("point", list(FILE_SWEEPS))
def test_a_file_ingest_killed_at_each_step_lands_once(
    point: str, tmp_path: Path, flight_inputs: tuple[Path, Path], clean_file_state: FlightState,
) -> None:
    csv, _ = flight_inputs
    home = make_home(tmp_path / "home")
    first_batch(home)
    crash(point, "flights-file", home.settings.home, csv)
    landed = {b.id for b in home.batches() if b.status == "landed"}
    assert landed == ({1} if point == "staged" else {1, 2})  # the commit is the line
    assert landed_parts(home.settings, FLIGHTS_TABLE, home.sessions)  # readers find committed parts, staged or not

    assert sweep_now(home.settings, home.sessions).counts() == FILE_SWEEPS[point]
    assert F.tables_behind(home.settings) == (point != "staged")  # the crashed ingest never rebuilt them
    again = ingest_command(home, csv)
    assert again["status"] == ("landed" if point == "staged" else "duplicate")
    assert again["received"] == again["accepted"] + again["quarantined"] + again["refused"] == 300
    assert "feature_tables" in again and not F.tables_behind(home.settings)  # rebuilt, a duplicate or not
    assert flight_state(home) == clean_file_state


@pytest.mark.postgres
@pytest.mark.parametrize("point", ["staged", "committed"])
def test_a_file_ingest_killed_on_postgres_lands_once(
    point: str, tmp_path: Path, flight_inputs: tuple[Path, Path], clean_file_state: FlightState,
) -> None:
    """PostgreSQL never reuses the id of a batch that did not commit: its staged files keep that id."""
    from tests.support.flights import flight_settings
    from tests.support.pg import scratch_database

    csv, _ = flight_inputs
    with scratch_database("crash") as url:
        settings = flight_settings(home=tmp_path / "home", database_url=url)
        settings.ensure_dirs()
        db.upgrade(url)
        engine = db.make_engine(url)
        try:
            home = Home(settings=settings, sessions=db.session_factory(engine))
            first_batch(home)
            crash(point, "flights-file", settings.home, csv, url)
            assert sweep_now(settings, home.sessions).counts() == FILE_SWEEPS[point]
            again = ingest_file(csv, settings=settings, sessions=home.sessions)
            assert again.status == ("landed" if point == "staged" else "duplicate")
            assert (again.batch_id, flight_state(home)) == (3, clean_file_state)
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def clean_replay_state(flight_inputs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> FlightState:
    home = make_home(tmp_path_factory.mktemp("clean-replay") / "home")
    clock = data.ReplayClock(pd.read_parquet(flight_inputs[1]))
    replay_until(home.settings, home.sessions, T1, clock=clock)
    second = replay_until(home.settings, home.sessions, T2, clock=clock)
    assert second.flights is not None and second.outcome_batch is not None  # T2 lands two batches
    return flight_state(home)


# the sweep after each crash: T2's flights batch has two files (flights and outcomes parts), its
# outcomes batch one; ":2" is the second batch of the call (the watermark is written after both)
REPLAY_SWEEPS = {"staged": {"discarded": 2}, "committed": {"published": 2}, "published": {},
                 "staged:2": {"discarded": 1}, "committed:2": {"published": 1}, "published:2": {}}


@pytest.mark.parametrize("point", list(REPLAY_SWEEPS))
def test_a_replay_killed_at_each_step_lands_once(
    point: str, tmp_path: Path, flight_inputs: tuple[Path, Path], clean_replay_state: FlightState,
) -> None:
    home = make_home(tmp_path / "home")
    clock = data.ReplayClock(pd.read_parquet(flight_inputs[1]))
    replay_until(home.settings, home.sessions, T1, clock=clock)
    crash(point, "flights-replay", home.settings.home, flight_inputs[1], T2)
    committed = {"staged": 1, "committed": 2, "published": 2, "staged:2": 2, "committed:2": 3, "published:2": 3}
    assert len([b for b in home.batches() if b.status == "landed"]) == committed[point]
    assert sweep_now(home.settings, home.sessions).counts() == REPLAY_SWEEPS[point]
    again = replay_until(home.settings, home.sessions, T2, clock=clock)
    assert again.swept == {}  # the sweep above left nothing to repair
    assert len(again.batch_ids) == 3 - committed[point]  # only what never committed lands now
    assert flight_state(home) == clean_replay_state


def test_the_sweep_sets_aside_a_part_no_batch_records_and_reports_a_missing_one(tmp_path: Path) -> None:
    """A part published by a crash between rename and commit (before stage -> commit -> publish) is read
    by nobody and set aside; a landed batch whose part vanished is reported, never silently skipped."""
    home = make_home(tmp_path / "home")
    first_batch(home)
    s = home.settings
    orphan = offline.part_path(s, FLIGHTS_TABLE, 7)
    orphan.write_bytes(offline.part_path(s, FLIGHTS_TABLE, 1).read_bytes())
    assert len(F.landed_flights(s, ["flight_id"])) == 100  # readers ignore it already
    report = sweep_now(s, home.sessions)
    assert report.counts() == {"orphaned": 1} and not orphan.exists()
    assert Path(report.orphaned[0]).parent.name == offline.ORPHANED
    offline.part_path(s, offline.OUTCOMES, 1).unlink()
    missing = sweep_now(s, home.sessions)
    assert missing.counts() == {"missing": 1} and "batch 1" in missing.missing[0]
    with pytest.raises(FileNotFoundError, match="missing 1 landed part"):
        F.landed_outcomes(s)


# --------------------------------------------------------------------------- a use case's own replay


@dataclass(frozen=True)
class Bike:
    spec: UseCaseSpec
    settings: Settings
    raw: pd.DataFrame


def bike_home(root: Path, mp: pytest.MonkeyPatch) -> Bike:
    """Bike sharing on a fresh RETRAIN_HOME under `root` (set in the environment the child inherits)."""
    mp.setenv("RETRAIN_HOME", str(root / "var"))
    mp.delenv("RETRAIN_USECASE", raising=False)
    mp.delenv("RETRAIN_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    spec = load_usecase(base_settings(), "bike_sharing")
    if spec.name not in _RAW:
        _RAW[spec.name] = FS.raw_rows(spec)
    return Bike(spec, settings_for(spec, base_settings()), _RAW[spec.name])


_RAW: dict[str, pd.DataFrame] = {}


@pytest.fixture
def bike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bike]:
    yield bike_home(tmp_path, monkeypatch)
    get_settings.cache_clear()


def bike_state(bike: Bike) -> tuple[int, dict[str, int]]:
    """Check the home's invariants; returns (rows landed, rows per feature table)."""
    spec, settings = bike.spec, bike.settings
    sessions = open_registry(settings)
    raw = landing.raw_dir(settings, spec)
    assert stray_files(raw) == []
    rows = landing.landed_rows(settings, spec, sessions)
    with sessions() as session:
        batches = list(session.scalars(select(db.IngestionBatch).where(db.IngestionBatch.kind == spec.name)))
        keys = list(session.scalars(select(db.Outcome.entity_key).where(db.Outcome.model_name == spec.name)))
    assert sorted(p.name for p in raw.glob("part-*.parquet")) == [
        landing.part_path(settings, spec, b.id).name for b in batches if b.accepted]
    assert all(b.status == "landed" and b.received == b.accepted + b.quarantined for b in batches)
    ids = load_callable(spec, spec.feast.entity_rows)(rows)[FS.ROW_ID] if spec.feast else None
    assert ids is not None and ids.is_unique and rows["ts"].is_unique
    assert len(keys) == len(set(keys)) == len(rows) == sum(b.accepted for b in batches)
    tables = {p.stem: len(pd.read_parquet(p)) for p in FS.tables_dir(settings, spec).glob("*.parquet")}
    return len(rows), tables


@pytest.fixture(scope="module")
def clean_bike_state(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, int]]:
    with pytest.MonkeyPatch.context() as mp:
        bike = bike_home(tmp_path_factory.mktemp("clean-bike"), mp)
        sessions = open_registry(bike.settings)
        for until in (BIKE_T1, BIKE_T2):
            landing.replay_until(bike.spec, bike.settings, sessions, until, raw=bike.raw)
        state = bike_state(bike)
    get_settings.cache_clear()
    return state


BIKE_SWEEPS = {"staged": {"discarded": 1}, "committed": {"published": 1}, "published": {}}


@pytest.mark.parametrize("point", list(BIKE_SWEEPS))
def test_a_usecase_landing_killed_at_each_step_lands_once(
    point: str, bike: Bike, clean_bike_state: tuple[int, dict[str, int]],
) -> None:
    sessions = open_registry(bike.settings)
    landing.replay_until(bike.spec, bike.settings, sessions, BIKE_T1, raw=bike.raw)
    crash(point, "usecase", bike.settings.home, BIKE_T2)
    assert landing.sweep(bike.spec, bike.settings, sessions).counts() == BIKE_SWEEPS[point]
    again = landing.replay_until(bike.spec, bike.settings, sessions, BIKE_T2, raw=bike.raw)
    assert (again.landed > 0) == (point == "staged")  # a committed batch is never landed again
    assert again.total_landed == clean_bike_state[0]
    assert bike_state(bike) == clean_bike_state
