"""Ingestion against PostgreSQL: same migrations, same counts, same refusals as on SQLite.

Creates a fresh database `ingest_<random>` on the server of RETRAIN_TEST_PG_ADMIN and drops it afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, select
from tests.support.flights import flight_settings
from tests.support.ingest_home import Home, real_flights
from tests.support.pg import scratch_database

from flight_delay import data
from flight_delay.data import FLIGHTS_TABLE
from flight_delay.ingest import BatchRejected, ingest_file, ingest_frame, replay_until
from retrain.core import db
from retrain.core.status import summary
from retrain.features import offline

pytestmark = [pytest.mark.postgres, pytest.mark.integration]


@pytest.fixture()
def pg_home(tmp_path: Path) -> Iterator[Home]:
    with scratch_database("ingest") as url:
        engine = None
        try:
            settings = flight_settings(home=tmp_path / "home", database_url=url)
            settings.ensure_dirs()
            db.upgrade(settings.db_url)
            engine = db.make_engine(settings.db_url)
            yield Home(settings=settings, sessions=db.session_factory(engine))
        finally:
            if engine is not None:
                engine.dispose()


def test_ingest_replay_and_refusals_on_postgres(pg_home: Home, tmp_path: Path) -> None:
    s, f = pg_home.settings, pg_home.sessions
    rows = real_flights().iloc[:400].copy().astype(object)
    rows.loc[7, "origin"] = "XXX"
    rows.loc[8, "distance"] = -5
    rows.loc[9] = rows.loc[10]
    rows.loc[11, "carrier"] = "X" * 100  # its flight id would overflow the 64-char column
    rows.loc[12, "tailnum"] = "N1\x00"  # PostgreSQL text refuses NUL bytes
    result = ingest_frame(rows, settings=s, sessions=f, source="pg")
    assert (result.received, result.accepted, result.quarantined) == (400, 395, 5)
    assert ingest_frame(rows, settings=s, sessions=f).status == "duplicate"

    bad = tmp_path / "bad.csv"
    bad.write_text("not,a,flights\n1,2,3\n")
    with pytest.raises(BatchRejected, match="missing required columns"):
        ingest_file(bad, settings=s, sessions=f)

    # replay the rest of January 1st: new flights plus outcomes matured for flights landed blank
    clock = data.ReplayClock(data.enrich_flights(real_flights().iloc[:1500].copy()))
    first = replay_until(s, f, "2013-01-02T03:00:00Z", clock=clock)
    second = replay_until(s, f, "2013-01-02T14:00:00Z", clock=clock)
    assert first.accepted > 0 and second.outcome_batch is not None
    assert replay_until(s, f, "2013-01-02T14:00:00Z", clock=clock).batch_ids == []

    with f() as session:
        sql_outcomes = {o.entity_key: o for o in session.scalars(select(db.Outcome))}
        quarantined = session.scalar(select(func.count()).select_from(db.QuarantinedRow))
        statuses = [b.status for b in session.scalars(select(db.IngestionBatch).order_by(db.IngestionBatch.id))]
    parquet = offline.read_table(s, offline.OUTCOMES)
    assert parquet is not None and len(parquet) == len(sql_outcomes)
    sample = parquet.sample(50, random_state=1)
    for fid, sched, landed, delay, late in zip(*(sample[c].tolist() for c in (
            "flight_id", "sched_dep", "landed_at", "arr_delay", "late")), strict=True):
        o = sql_outcomes[fid]
        assert o.model_name == s.model_name
        assert (o.event_time, o.available_at) == (sched.to_pydatetime(), landed.to_pydatetime())
        assert (o.detail, o.label) == ({"arr_delay": delay}, float(late))
    assert quarantined == 5
    assert statuses[:3] == ["landed", "duplicate", "rejected"]
    landed = offline.read_table(s, FLIGHTS_TABLE)
    until = pd.Timestamp("2013-01-02T14:00:00Z").to_pydatetime()
    assert landed is not None and landed["flight_id"].is_unique
    # every released flight landed exactly once: the replay also delivers the real flights the
    # first batch did not (7, 8, 11, 12 quarantined, 9 overwritten by a copy of 10)
    released = set(clock.flights_between(None, until)["flight_id"])
    assert len(landed) == len(released) and set(landed["flight_id"]) == released
    assert set(data.flight_ids(real_flights().iloc[[7, 8, 9, 11, 12]])) <= set(landed["flight_id"])
    ing = summary(s, f)["ingestion"]
    assert ing["rows_landed"] == len(landed) and ing["rows_quarantined"] == 5
