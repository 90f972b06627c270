"""`retrain status`: a JSON-able summary of the system of record.

`summary()` returns one dict with a section per area; ingestion is filled here, later areas
(models, serving, monitoring) add their own section builders to `SECTIONS`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from retrain.core import clock
from retrain.core.config import Settings
from retrain.core.db import IngestionBatch, QuarantinedRow

Section = Callable[[Settings, sessionmaker[Session]], dict[str, Any]]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def ingestion_summary(settings: Settings, sessions: sessionmaker[Session]) -> dict[str, Any]:
    """Batches by status, rows landed/quarantined, outcomes recorded, the landed time range."""
    b = IngestionBatch
    with sessions() as session:
        by_status = {
            f"{kind}:{status}": int(n)
            for kind, status, n in session.execute(
                select(b.kind, b.status, func.count()).group_by(b.kind, b.status).order_by(b.kind, b.status)
            )
        }
        landed = (b.status == "landed")
        rows = session.execute(  # the rows batches (any use case's), not the outcome batches
            select(
                func.coalesce(func.sum(b.received), 0), func.coalesce(func.sum(b.accepted), 0),
                func.coalesce(func.sum(b.quarantined), 0), func.min(b.min_event_time), func.max(b.max_event_time),
            ).where(landed, b.kind != "outcomes")
        ).one()
        outcomes = session.scalar(select(func.coalesce(func.sum(b.outcomes), 0)).where(landed)) or 0
        quarantined_rows = session.scalar(select(func.count()).select_from(QuarantinedRow)) or 0
        last = session.scalars(select(b).order_by(b.id.desc()).limit(1)).first()
        top_reasons = [
            {"field": f, "rule": r, "rows": int(n)}
            for f, r, n in session.execute(
                select(QuarantinedRow.field, QuarantinedRow.rule, func.count())
                .group_by(QuarantinedRow.field, QuarantinedRow.rule)
                .order_by(func.count().desc())
                .limit(5)
            )
        ]
    return {
        "batches": sum(by_status.values()),
        "batches_by_status": by_status,
        "rows_received": int(rows[0]),
        "rows_landed": int(rows[1]),
        "rows_quarantined": int(quarantined_rows),
        "outcomes_recorded": int(outcomes),
        "earliest_event_time": _iso(rows[3]),
        "latest_event_time": _iso(rows[4]),
        "top_quarantine_reasons": top_reasons,
        "last_batch": None if last is None else {
            "batch_id": last.id, "kind": last.kind, "status": last.status, "source": last.source,
            "received": last.received, "accepted": last.accepted, "quarantined": last.quarantined,
            "outcomes": last.outcomes, "error": last.error, "created_at": _iso(last.created_at),
        },
    }


def clock_summary(settings: Settings) -> dict[str, Any]:
    """Which clock retrain runs on with these settings (`real` or `simulated at <time>`; a running
    service reports its own in `GET /model`), and a warning when a clock file is left behind while
    simulated time is off (it is ignored)."""
    return clock.state(settings).as_json()


SECTIONS: dict[str, Section] = {"ingestion": ingestion_summary}


def summary(settings: Settings, sessions: sessionmaker[Session]) -> dict[str, Any]:
    """Home, database (password hidden) and one entry per registered section."""
    out: dict[str, Any] = {
        "home": str(settings.home),
        "database": make_url(settings.db_url).render_as_string(hide_password=True),
        "profile": settings.profile,
        "clock": clock_summary(settings),
    }
    for name, build in SECTIONS.items():
        out[name] = build(settings, sessions)
    return out
