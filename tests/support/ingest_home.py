"""A throwaway RETRAIN_HOME with a migrated SQLite system of record, for ingestion tests."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from tests.support.flights import flight_settings

from flight_delay import data
from retrain.core import db
from retrain.core.config import Settings


@dataclass(frozen=True)
class Home:
    settings: Settings
    sessions: sessionmaker[Session]

    def batches(self) -> list[db.IngestionBatch]:
        with self.sessions() as s:
            return list(s.scalars(select(db.IngestionBatch).order_by(db.IngestionBatch.id)))

    def quarantined(self, batch_id: int | None = None) -> list[db.QuarantinedRow]:
        with self.sessions() as s:
            q = select(db.QuarantinedRow).order_by(db.QuarantinedRow.id)
            if batch_id is not None:
                q = q.where(db.QuarantinedRow.batch_id == batch_id)
            return list(s.scalars(q))

    def files(self) -> list[Path]:
        """Every file under offline/ and quarantine/ (temp files included), relative to home."""
        found: list[Path] = []
        for root in (self.settings.offline_dir, self.settings.quarantine_dir):
            found += [p.relative_to(self.settings.home) for p in root.rglob("*") if p.is_file()]
        return sorted(p for p in found if p.name != ".ingest.lock")


_TEMPLATES: dict[str, Path] = {}


def make_home(root: Path, template_dir: Path | None = None) -> Home:
    """Settings on `root` plus sessions on a migrated SQLite database.

    With `template_dir`, the migrated database is built once there and copied (Alembic takes
    ~0.4 s per run; hypothesis examples need dozens of fresh homes).
    """
    settings = flight_settings(home=root, database_url=f"sqlite:///{root / 'retrain.db'}")
    settings.ensure_dirs()
    if template_dir is None:
        db.upgrade(settings.db_url)
    else:
        key = str(template_dir)
        if key not in _TEMPLATES:
            template_dir.mkdir(parents=True, exist_ok=True)
            path = template_dir / "template.db"
            db.upgrade(f"sqlite:///{path}")
            _TEMPLATES[key] = path
        shutil.copyfile(_TEMPLATES[key], root / "retrain.db")
    engine = db.make_engine(settings.db_url)
    return Home(settings=settings, sessions=db.session_factory(engine))


@lru_cache(maxsize=1)
def real_flights() -> pd.DataFrame:
    """The 336,776 real rows in the package layout (do not mutate: copy first)."""
    return data.load_flights_raw()


def base_row() -> dict[str, object]:
    """The first real flight: UA1545 EWR->IAH, 2013-01-01 05:15 New York time."""
    return {str(k): v for k, v in real_flights().iloc[0].to_dict().items()}


def frame_of(*rows: dict[str, object]) -> pd.DataFrame:
    """A batch of the given rows as an object-dtype frame (so any value can be planted)."""
    return pd.DataFrame(list(rows), columns=list(data.FLIGHT_COLUMNS), dtype=object)
