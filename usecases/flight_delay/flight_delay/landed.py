"""What has landed, as the system of record says, and the sweep that makes the offline store agree.

A flights batch owns `flights/part-<id>` (when it accepted rows), `outcomes/part-<id>` (when its flights
carried outcomes) and `quarantine/batch-<id>` (when rows were quarantined); an outcomes batch owns the
last two. Readers take the parts of the batches the database records as landed (published, or still
staged after a crash between commit and publish), never whatever parts lie on disk. Homes built
outside ingestion (backtests, benchmarks, tests) record their parts with `register_parts`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from flight_delay.data import FLIGHTS_TABLE
from retrain.core import db
from retrain.core.config import Settings
from retrain.core.db import IngestionBatch, transaction
from retrain.features import offline, repair
from retrain.features.repair import SweepReport

KINDS = ("flights", "outcomes")
QUARANTINE = "quarantine"
QUARANTINE_FILE = re.compile(r"batch-(\d+)\.parquet")


def landed_batch_ids(session: Session, table: str) -> list[int]:
    """Ids of the landed batches that own a part of `table` (flights, outcomes or quarantine), in order."""
    landed = IngestionBatch.status == "landed"
    if table == FLIGHTS_TABLE:
        where = [IngestionBatch.kind == "flights", IngestionBatch.landed_path.is_not(None)]
    elif table == offline.OUTCOMES:
        where = [IngestionBatch.kind.in_(KINDS), IngestionBatch.outcomes > 0]
    elif table == QUARANTINE:
        where = [IngestionBatch.kind.in_(KINDS), IngestionBatch.quarantined > 0]
    else:
        raise ValueError(f"not a landed flights table: {table!r}")
    return list(session.scalars(select(IngestionBatch.id).where(landed, *where).order_by(IngestionBatch.id)))


def landed_parts(settings: Settings, table: str, sessions: sessionmaker[Session] | None = None) -> list[Path]:
    """The parts of `table` the database records as landed, in batch order, where they are now
    (published, or staged until the sweep publishes them); a recorded part that is nowhere raises."""
    with (sessions or offline.sessions_for(settings))() as session:
        ids = landed_batch_ids(session, table)
    return offline.resolve([offline.part_path(settings, table, i) for i in ids])


def sweep(settings: Settings, sessions: sessionmaker[Session]) -> SweepReport:
    """Make the flights, outcomes and quarantine folders agree with the landed batches (`repair.sweep`).

    The caller holds `offline.ingest_lock`; `sweep_now` takes it.
    """
    with sessions() as session:
        ids = {t: set(landed_batch_ids(session, t)) for t in (FLIGHTS_TABLE, offline.OUTCOMES, QUARANTINE)}
    report = repair.sweep(offline.table_dir(settings, FLIGHTS_TABLE), ids[FLIGHTS_TABLE])
    report.add(repair.sweep(offline.table_dir(settings, offline.OUTCOMES), ids[offline.OUTCOMES]))
    # quarantine files are for people, read by no code: one deleted by hand is not worth an error
    report.add(repair.sweep(settings.quarantine_dir, ids[QUARANTINE], QUARANTINE_FILE, report_missing=False))
    return report.logged("flights")


def sweep_now(settings: Settings, sessions: sessionmaker[Session] | None = None) -> SweepReport:
    """`sweep` under the ingest lock (waits for a landing in flight): for start-up paths."""
    with offline.ingest_lock(settings):
        return sweep(settings, sessions or offline.sessions_for(settings))


def register_parts(
    settings: Settings, *, flights: pd.DataFrame | None = None, outcomes: pd.DataFrame | None = None,
    source: str = "prepared", sessions: sessionmaker[Session] | None = None,
) -> int:
    """Record already-built flights and/or outcome rows as one landed batch (stage -> commit -> publish),
    without validation and without outcome rows in SQL: for homes built outside ingestion (backtests,
    benchmarks, tests). Without `sessions` the home's database is migrated first. Returns the batch id.
    """
    if sessions is None:
        settings.ensure_dirs()
        db.upgrade(settings.db_url)
        sessions = offline.sessions_for(settings)
    outcomes = outcomes if outcomes is not None else pd.DataFrame()
    rows = flights if flights is not None else outcomes
    times = pd.to_datetime(rows["sched_dep"], utc=True) if "sched_dep" in rows.columns and len(rows) else None
    finals: list[Path] = []
    staged: list[Path] = []
    try:
        with transaction(sessions) as session:
            batch = IngestionBatch(
                kind="flights" if flights is not None else "outcomes", source=source[:1024], status="landed",
                received=len(rows), accepted=len(rows), quarantined=0, outcomes=len(outcomes),
                min_event_time=None if times is None else times.min().to_pydatetime(),
                max_event_time=None if times is None else times.max().to_pydatetime(),
            )
            session.add(batch)
            session.flush()
            if flights is not None and len(flights):
                finals.append(offline.part_path(settings, FLIGHTS_TABLE, batch.id))
                staged.append(offline.stage(flights.reset_index(drop=True), finals[-1]))
            if len(outcomes):
                finals.append(offline.part_path(settings, offline.OUTCOMES, batch.id))
                staged.append(offline.stage(outcomes.reset_index(drop=True), finals[-1]))
            owns = flights is None or len(flights) > 0  # a flights batch's landed_path is its flights part
            batch.landed_path = str(finals[0]) if finals and owns else None
            batch_id = int(batch.id)
    except BaseException:
        for path in staged:
            path.unlink(missing_ok=True)
        raise
    offline.publish(finals)
    return batch_id
