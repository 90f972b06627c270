"""Fixtures shared across the suite's folders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from tests.support.pg import scratch_database

from retrain.core import db


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty system-of-record database: a SQLite file, then a scratch PostgreSQL database (dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'retrain.db'}"
    else:
        with scratch_database("retrain_db") as pg:
            yield pg


@pytest.fixture()
def db_engine(db_url: str) -> Iterator[Engine]:
    """An engine on `db_url`, disposed after the test."""
    eng = db.make_engine(db_url)
    try:
        yield eng
    finally:
        eng.dispose()
